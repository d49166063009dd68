"""The localiser survey (research/localiser_survey.py) counts what it says it counts."""

import numpy as np

from MnetImSegmentLib.engine.applicator import ApplicatorFit
from MnetImSegmentLib.research import localiser_survey as ls


def _fit(os_, axis, conf=0.9):
    return ApplicatorFit(conf >= 0.5, "metal", tuple(os_), tuple(np.asarray(os_) + 50 * np.asarray(axis)), tuple(axis), 50.0, conf)


def test_errors_against_both_truth_conventions():
    axis = np.array([0.0, np.sin(np.radians(30)), np.cos(np.radians(30))])
    v3 = {"os_lps": [1.0, 2.0, 3.0], "tandem_axis_lps": list(axis)}
    v2 = {"applicator_os_lps": [1.0, 2.0, 3.0], "applicator_axis_lps": list(axis)}
    for params in (v3, v2):
        e_os, e_ax = ls.errors(_fit([4.0, 6.0, 3.0], [0.0, 0.0, 1.0]), params)
        assert abs(e_os - 5.0) < 1e-9 and abs(e_ax - 30.0) < 1e-6
    assert ls.errors(ApplicatorFit(False, "none", None, None, None, 0.0, 0.0), v3) == (float("inf"), float("inf"))


def test_survey_counts_hits_and_keeps_the_misses():
    results = ls.survey(["v2", "v3"], first=0, count=1, matrix=128)
    rows = {r["style"]: r for r in results["rows"]}
    assert rows["v2"]["seeds"] == [500000] and rows["v3"]["seeds"] == [510000]
    assert rows["v2"]["on_tandem"] == 1 and rows["v2"]["misses"] == []  # v2's metal tandem: the easy case
    for r in rows.values():
        assert r["on_tandem"] + len(r["misses"]) == r["n"] == 1
    table = ls.markdown_table(results)
    hits = sum(r["on_tandem"] for r in rows.values())
    assert f"| all | {hits}/2 |" in table
    # The trust table: every phantom once, as refused or as a trusted fit on the tandem or elsewhere.
    counts = ls.trust(results)
    trusted = {k: v for k, v in counts.items() if k != "refused"}
    assert counts["refused"] + sum(c["on_tandem"] + c["elsewhere"] for c in trusted.values()) == 2
    assert sum(c["on_tandem"] for c in trusted.values()) == hits
    kind, confidence, found = rows["v2"]["fits"][0]
    assert found and kind == "metal" and trusted[f"metal, {'>=' if confidence >= 0.95 else '<'} 0.95"]["on_tandem"] >= 1
    assert "| refused (no fit trusted) |" in table


def test_trust_counts_a_confident_fit_elsewhere_apart_from_a_refusal():
    row = {"seeds": [1, 2, 3, 4], "misses": [{"seed": 2}, {"seed": 3}],
           "fits": [("plastic", 1.0, True), ("plastic", 0.6, True), ("none", 0.0, False), ("metal", 0.7, True)]}
    assert ls.trust({"rows": [row]}) == {"refused": 1, "plastic, >= 0.95": {"on_tandem": 1, "elsewhere": 0},
                                         "plastic, < 0.95": {"on_tandem": 0, "elsewhere": 1},
                                         "metal, < 0.95": {"on_tandem": 1, "elsewhere": 0}}


def test_survey_of_perturbed_phantoms_locates_on_the_perturbed_ct(monkeypatch):
    """``perturbation`` runs the localiser on the perturbation table's CT of each seed, not the plain one."""
    import pytest

    from MnetImSegmentLib.research import generalisation as gen

    seen = []
    real = ls.locate_applicator

    def spy(ct):
        seen.append(ct.array.copy())
        return real(ct)

    monkeypatch.setattr(ls, "locate_applicator", spy)
    results = ls.survey(["v2"], first=1, count=1, matrix=128, perturbation="blur 1px")
    assert results["perturbation"] == "blur 1px" and results["rows"][0]["seeds"] == [500001]
    plain = gen.generate("v2", 500001, 128)
    blurred = gen.perturb("blur 1px", "v2", 500001, 128, plain)
    assert len(seen) == 1 and np.array_equal(seen[0], blurred.ct.array)
    assert not np.array_equal(seen[0], plain.ct.array)
    assert ls.survey(["v2"], count=0)["perturbation"] is None
    with pytest.raises(ValueError, match="unknown perturbation 'sharpen'"):
        ls.survey(["v2"], count=1, perturbation="sharpen")
