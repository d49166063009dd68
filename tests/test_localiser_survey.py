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


def _record(seed, found=True, on=True, kind="metal", os_=(0.0, 0.0, 0.0)):
    return {"seed": seed, "found_kind": kind if found else "none", "confidence": 1.0 if found else 0.0,
            "found": found, "on_tandem": on and found, "os_error_mm": 1.0, "axis_error_deg": 1.0,
            "os_lps": list(os_) if found else None}


def _results(records, perturbation=None):
    return {"matrix": 256, "perturbation": perturbation, "rows": [{"style": "v2", "phantoms": records}]}


def test_compare_lists_every_changed_fit_and_counts_both():
    before = _results([_record(1), _record(2, on=False, kind="plastic", os_=(0, 0, 40)), _record(3, found=False),
                       _record(4), _record(5)])
    after = _results([_record(1), _record(2, os_=(0, 0, 2)), _record(3, found=False),
                      _record(4, os_=(0.3, 0.0, 0.0)), _record(5, os_=(0.0, 3.0, 0.0)), _record(6)])
    diff = ls.compare(before, after)
    assert diff["n"] == 5  # seed 6 is in one survey only
    assert diff["counts"]["before"] == {"on the tandem": 3, "elsewhere": 1, "refused": 1}
    assert diff["counts"]["after"] == {"on the tandem": 4, "elsewhere": 0, "refused": 1}
    # 2: elsewhere -> on the tandem (and plastic -> metal); 5: os moved 3 mm; 4 moved 0.3 mm, under the 0.5 mm limit.
    assert [c["seed"] for c in diff["changes"]] == [2, 5]
    table = ls.compare_table(diff)
    assert "| before | 3 | 1 | 1 |" in table and "| after | 4 | 0 | 1 |" in table
    assert "| v2 | 2 | elsewhere: plastic 1.0" in table and "no fit changed" not in table
    assert "no fit changed" in ls.compare_table(ls.compare(before, before))


def test_compare_refuses_surveys_of_other_phantoms_or_without_fits():
    import pytest

    with pytest.raises(ValueError, match="differ in perturbation"):
        ls.compare(_results([_record(1)]), _results([_record(1)], perturbation="blur 1px"))
    old = {"matrix": 256, "perturbation": None, "rows": [{"style": "v2", "seeds": [1], "misses": []}]}
    with pytest.raises(ValueError, match="no per-phantom fits"):
        ls.compare(old, _results([_record(1)]))


def test_survey_script_compares_with_an_earlier_survey(tmp_path, capsys):
    """The script end to end on one small phantom: a survey, the same survey compared with it (no fit
    changes), and three inputs it cannot compare with, each refused in one sentence before any work."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "localiser_survey.py"
    spec = importlib.util.spec_from_file_location("localiser_survey_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--styles", "v2", "--count", "1", "--matrix", "128"]
    assert script.main(["-o", str(tmp_path / "a")] + args) == 0
    first = tmp_path / "a" / "localiser_survey.json"
    assert json.loads(first.read_text())["rows"][0]["phantoms"][0]["seed"] == 500000
    assert script.main(["-o", str(tmp_path / "b"), "--compare", str(first)] + args) == 0
    assert "no fit changed" in (tmp_path / "b" / "localiser_compare.md").read_text()
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"matrix": 128, "perturbation": None, "rows": [{"style": "v2", "seeds": [500000]}]}))
    for other, why in ((tmp_path / "missing.json", "cannot compare with"), (old, "no per-phantom fits"),
                       (first, "differ in matrix")):
        capsys.readouterr()
        extra = ["--matrix", "96"] if why == "differ in matrix" else []
        assert script.main(["-o", str(tmp_path / "c"), "--compare", str(other)] + args + extra) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "c").exists()
