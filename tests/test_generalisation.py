"""research/generalisation.py: the issue-11 measurement (style rows + perturbation table)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MnetImSegmentLib.research import generalisation as gen

MATRIX, Z_MM, SEED = 48, 40.0, gen.SEED_BASE["v2"]


@pytest.fixture(scope="module")
def base():
    return gen.generate("v2", SEED, MATRIX, z_extent_mm=Z_MM)


def _perturbed(name, base):
    return gen.perturb(name, "v2", SEED, MATRIX, base, z_extent_mm=Z_MM)


def test_seeds_are_disjoint_from_the_training_recipes():
    # training: mnetim phantom --seed 1000 --count 100 (0.2.0), the default --seed 0, v3 seeds 1000-1039
    for base_seed in gen.SEED_BASE.values():
        assert base_seed > 10000


def test_intensity_and_mirror_perturbations_change_the_image_not_the_anatomy(base):
    ct, lab = base.ct.array.astype(np.int32), base.labels.array
    for name, sign in (("hu+40", 1), ("hu-40", -1)):
        p = _perturbed(name, base)
        inside = (ct > -984) & (ct < 3031)
        assert np.all(p.ct.array.astype(np.int32)[inside] - ct[inside] == sign * 40)
        assert np.array_equal(p.labels.array, lab)
    lo, hi = _perturbed("contrast x0.85", base).ct.array, _perturbed("contrast x1.15", base).ct.array
    body = (ct > -200) & (ct < 300)
    assert np.std(lo[body]) < np.std(ct[body]) < np.std(hi[body])
    blur = _perturbed("blur 1px", base).ct.array.astype(np.int32)
    assert np.abs(np.diff(blur, axis=2)).mean() < np.abs(np.diff(ct, axis=2)).mean()
    m = _perturbed("mirrored", base)
    assert np.array_equal(m.ct.array, base.ct.array[:, :, ::-1])
    assert np.array_equal(m.labels.array, lab[:, :, ::-1]) and not np.array_equal(m.labels.array, lab)
    assert m.ct.geometry == base.ct.geometry


def test_resampled_perturbations_change_the_grid_or_the_scanner(base):
    sp = base.ct.geometry.spacing
    for name, want in (("slices 1.25 mm", 1.25), ("slices 5 mm", 5.0)):
        p = _perturbed(name, base)
        assert p.ct.geometry.spacing[2] == want and p.ct.geometry.spacing[:2] == sp[:2]
        assert p.ct.shape[0] == round(Z_MM / want)
        assert (p.labels.array == 1).any()
    p = _perturbed("pixels 1.0 mm", base)
    assert p.ct.geometry.spacing[:2] == (1.0, 1.0)
    # same field of view: the CTV volume agrees within partial-volume error
    ml = lambda ph: (ph.labels.array == 1).sum() * np.prod(ph.ct.geometry.spacing)  # noqa: E731
    assert abs(ml(p) - ml(base)) / ml(base) < 0.2
    r = _perturbed("rotated 10 deg", base)
    d = np.asarray(r.ct.geometry.direction).reshape(3, 3)
    assert np.isclose(np.degrees(np.arctan2(d[1, 0], d[0, 0])), 10.0)
    assert not np.array_equal(r.labels.array, base.labels.array)
    n2 = _perturbed("noise x2", base)
    assert np.array_equal(n2.labels.array, base.labels.array) and not np.array_equal(n2.ct.array, base.ct.array)
    assert n2.params["noise_hu"] == pytest.approx(2 * base.params["noise_hu"])


def test_plastic_applicator_removes_the_metal():
    seed = next(s for s in range(SEED, SEED + 50) if gen.PhantomAnatomy(s).params["applicator_metal"])
    metal = gen.generate("v2", seed, MATRIX, z_extent_mm=Z_MM)
    plastic = gen.perturb("plastic applicator", "v2", seed, MATRIX, z_extent_mm=Z_MM)
    assert metal.ct.array.max() > 2000 and plastic.ct.array.max() < 2000
    assert plastic.params["applicator_metal"] is False and np.array_equal(plastic.labels.array, metal.labels.array)
    v3 = gen.PhantomV3(gen.SEED_BASE["v3"])
    gen._make_plastic(v3)
    assert not any(layer.metal for layer in v3.layers)


def test_table_structure_and_card(tiny_weights, tmp_path):
    results = gen.evaluate_generalisation(tiny_weights, n=1, matrix=MATRIX, z_extent_mm=Z_MM,
                                          perturbations=[p for p in gen.PERTURBATIONS if p != "pixels 0.5 mm"])
    rows = results["rows"]
    assert [r["row"] for r in rows] == (list(gen.STYLE_ROWS) + [gen.HELDOUT_NO_STREAKS]
                                        + [p for p in gen.PERTURBATIONS if p != "pixels 0.5 mm"])
    # the tiny card does not say what it was trained on: every training style counts as seen
    h = [r["row"] for r in rows].index("heldout")
    assert h == len(gen.STYLE_ROWS) - 1
    assert [r["group"] for r in rows[:h + 2]] == ["in-distribution"] * h + ["held-out"] * 2
    # the streak-free held-out row re-samples the held-out row's phantoms without their streaks
    plain = gen.heldout_variant(rows[h]["seeds"][0], MATRIX, False, None, z_extent_mm=Z_MM)
    assert rows[h + 1]["seeds"] == rows[h]["seeds"] and rows[h + 1]["ctv_ml"][0][1] == rows[h]["ctv_ml"][0][1]
    assert not np.array_equal(plain.ct.array, gen.generate("heldout", rows[h]["seeds"][0], MATRIX, z_extent_mm=Z_MM).ct.array)
    for r in rows:
        assert r["n"] == 1 and len(r["dice"]) == 1 and 0.0 <= r["min"] <= r["median"] <= 1.0
        assert len(r["ctv_ml"]) == 1 and r["ctv_ml"][0][1] > 5.0 and r["volume_r"] is None  # r needs >= 3
        assert r["mean"] == pytest.approx(r["dice"][0], abs=1e-4)
    # the no-network tube baseline sits next to every style row, and only there (a perturbation's base is a style row)
    for r in rows:
        if r["row"] in gen.STYLE_ROWS:
            assert len(r["tube_dice"]) == 1 and r["tube_mean"] == pytest.approx(r["tube_dice"][0]) and 0 <= r["tube_mean"] <= 1
        else:
            assert "tube_mean" not in r
    js, md = gen.write_results(results, tmp_path)
    assert json.loads(js.read_text())["rows"] == rows
    table = md.read_text().splitlines()
    assert table[0].endswith("| tube, no network |") and table[2].count("|") == table[0].count("|")
    assert not any("atlas_mean" in r for r in rows)  # weights without a CTV atlas: no atlas column
    assert len(table) == 2 + len(rows) and table[0].startswith("| row |")
    card = {"name": "x", "version": "0.0.0"}
    new = gen.add_to_card(card, results)
    assert "generalisation" not in card and set(new["generalisation"]["rows"]) == {r["row"] for r in rows}


def test_tube_baseline_finds_the_tandem_but_is_not_the_ctv():
    """The localiser alone places a tube that overlaps the CTV (the tandem runs through it), far from a contour."""
    ph = gen.generate("v2", SEED, 128, z_extent_mm=80.0)
    assert 0.2 < gen.tube_dice(ph) < 0.85
    empty = gen._with(ph, np.full(ph.ct.shape, -1000, np.int16))  # no applicator: no fit, no tube
    assert gen.tube_dice(empty) == 0.0


def test_atlas_baseline_and_column_for_weights_with_a_ctv_atlas(tmp_path):
    """Weights with the 'atlas' prior get a second no-network column: their own atlas, placed by the localiser."""
    from MnetImSegmentLib.engine.applicator import locate_applicator
    from MnetImSegmentLib.engine.applicator_prior import build_ctv_atlas

    from helpers.weights import make_weights

    ph = gen.generate("v2", SEED, 128, z_extent_mm=80.0)
    fit = locate_applicator(ph.ct)
    atlas = build_ctv_atlas([(ph.labels.array == 1, ph.ct.geometry, fit)])  # this patient's own CTV, mirrored
    assert gen.atlas_dice(ph, atlas) > max(0.6, gen.tube_dice(ph))
    assert gen.atlas_dice(gen._with(ph, np.full(ph.ct.shape, -1000, np.int16)), atlas) == 0.0
    weights = make_weights(tmp_path / "w", applicator_prior="atlas", atlas=atlas)
    results = gen.evaluate_generalisation(weights, n=1, matrix=MATRIX, z_extent_mm=Z_MM, styles=["v2"],
                                          perturbations=["hu+40"])
    style_row, perturbed = results["rows"]
    assert len(style_row["atlas_dice"]) == 1 and 0 <= style_row["atlas_mean"] <= 1 and "atlas_mean" not in perturbed
    table = gen.markdown_table(results).splitlines()
    assert table[0].endswith("| tube, no network | atlas, no network |")
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_heldout_ablation_switches_off_one_cause_at_a_time(tiny_weights):
    seed = next(s for s in range(gen.SEED_BASE["heldout"], gen.SEED_BASE["heldout"] + 20)
                if gen.PhantomHeldout(s).params["applicator_metal"])
    as_made = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM)
    assert np.array_equal(as_made.ct.array, gen.generate("heldout", seed, 96, z_extent_mm=Z_MM).ct.array)
    plain = gen.heldout_variant(seed, 96, False, None, z_extent_mm=Z_MM)
    visible = gen.heldout_variant(seed, 96, False, 50.0, z_extent_mm=Z_MM)
    ctv, lab = as_made.labels.array == 1, as_made.labels.array
    assert np.array_equal(plain.labels.array, lab) and np.array_equal(visible.labels.array, lab)
    streaks = np.abs(as_made.ct.array.astype(int) - plain.ct.array)
    assert streaks.max() > 50 and (streaks > 0).mean() > 0.05
    core = ctv & (np.abs(visible.ct.array.astype(int) - plain.ct.array) > 0)
    assert core.sum() > 0.5 * ctv.sum()  # the CTV, and only where it is, changed level
    assert not (np.abs(visible.ct.array.astype(int) - plain.ct.array) > 0)[lab == 0].mean() > 0.02
    smooth = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, texture=False)
    assert np.array_equal(smooth.labels.array, lab)
    texture = np.abs(as_made.ct.array.astype(int) - smooth.ct.array)  # the same noise: only the texture differs
    assert texture.max() <= gen.PhantomHeldout(seed).params["texture_hu"] + 1 and (texture > 0).mean() > 0.05
    swapped = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, template_ctv=True)
    new_ctv = swapped.labels.array == 1
    assert not np.array_equal(new_ctv, ctv)  # another shape...
    assert abs(new_ctv.sum() / ctv.sum() - 1) < 0.2  # ...of the same volume...
    centre = lambda m: np.argwhere(m).mean(0) * np.array(as_made.ct.geometry.spacing[::-1])  # noqa: E731
    assert np.linalg.norm(centre(new_ctv) - centre(ctv)) < 6.0  # ...in the same place (mm)
    assert np.array_equal(swapped.labels.array[~(ctv | new_ctv)], lab[~(ctv | new_ctv)])
    from scipy import ndimage

    shell = ndimage.binary_dilation(ctv, iterations=2) & ~ctv
    interior = ndimage.binary_erosion(ctv, iterations=2)
    fat_hu = -40
    for kind in gen.HELDOUT_FAT:
        fatty = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, fat=kind)
        assert np.array_equal(fatty.labels.array, lab)  # the same anatomy and labels...
        assert np.array_equal(fatty.ct.array[interior], as_made.ct.array[interior])  # ...the same CTV...
        assert (as_made.ct.array[shell] < fat_hu).mean() < 0.1  # ...now with fat around it
        assert (fatty.ct.array[shell] < fat_hu).mean() > 0.3, kind
    far = ndimage.distance_transform_edt(~ctv, sampling=as_made.ct.geometry.spacing[::-1]) > 25.0
    fixed = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, fat="fixed_region")
    around = gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, fat="around_ctv")
    gained = lambda ph: ((ph.ct.array < fat_hu) & ~(as_made.ct.array < fat_hu) & far).sum()  # noqa: E731
    assert gained(fixed) > 20 * max(gained(around), 1)  # the fixed region reaches where the CTV's shell does not
    with pytest.raises(ValueError, match="fat must be one of"):
        gen.heldout_variant(seed, 96, True, None, z_extent_mm=Z_MM, fat="everywhere")
    results = gen.heldout_ablation(tiny_weights, n=1, matrix=48, z_extent_mm=Z_MM)
    assert [r["row"] for r in results["rows"]] == list(gen.HELDOUT_ABLATIONS)
    assert all(r["n"] == 1 and 0.0 <= r["mean"] <= 1.0 for r in results["rows"])


def test_visible_ctv_shift_moves_the_ctv_and_nothing_else(tiny_weights):
    """The CTV's interior moves by the shift, its edge partly, the rest of the CT and the labels not at all."""
    from scipy import ndimage

    base = gen.generate("v4", gen.SEED_BASE["v4"], 96, z_extent_mm=Z_MM)
    ctv = base.labels.array == 1
    assert gen.with_ctv_shift(base, 0.0) is base
    for shift in (60.0, -60.0):
        p = gen.with_ctv_shift(base, shift)
        assert np.array_equal(p.labels.array, base.labels.array) and p.ct.geometry == base.ct.geometry
        diff = p.ct.array.astype(np.int32) - base.ct.array
        interior = ndimage.binary_erosion(ctv, np.ones((1, 5, 5), bool))
        assert interior.sum() > 20 and abs(np.median(diff[interior]) - shift) <= 2
        edge = ctv & ~interior
        assert 0.2 * abs(shift) < abs(np.median(diff[edge])) <= abs(shift) + 1
        near = ndimage.binary_dilation(ctv, np.ones((3, 7, 7), bool))
        assert not diff[~near].any()
        assert p.params["ctv_shift_hu"] == shift
    results = gen.visible_ctv_ablation(tiny_weights, n=1, matrix=MATRIX, styles=("v4",), z_extent_mm=Z_MM)
    assert [r["row"] for r in results["rows"]] == ["v4, CTV as made", "v4, CTV +60 HU", "v4, CTV -60 HU"]
    assert all(r["n"] == 1 and 0.0 <= r["mean"] <= 1.0 for r in results["rows"])
    assert len({r["seeds"][0] for r in results["rows"]}) == 1  # the same phantom in every row


def test_rows_are_in_distribution_only_for_the_styles_the_weights_were_trained_on():
    v2_only = {"training": {"data": {"recipe": "mnetim phantom --count 100 --seed 1000 -o data/phantoms_v2"}}}
    mix = {"training": {"data": {"recipe": "mnetim phantom --count 150 --style v4:0.75,v2:0.25 --seed 2000 -o a; "
                                           "mnetim phantom --count 9 --style v5 -o b"}}}
    counted = {"training": {"data": {"styles": {"v5": 120, "v4": 113}, "recipe": "ignored --style v3"}}}
    assert gen.trained_styles(v2_only) == {"v2"}
    assert gen.trained_styles(mix) == {"v2", "v4", "v5"}
    assert gen.trained_styles(counted) == {"v4", "v5"}
    assert gen.trained_styles({}) is None and gen.trained_styles({"training": {"data": {"recipe": "my CTs"}}}) is None
    groups = {s: gen._style_group(s, gen.trained_styles(v2_only)) for s in gen.STYLE_ROWS}
    assert groups == {"v2": "in-distribution", "v3": "unseen style", "v4": "unseen style", "v5": "unseen style",
                      "v6": "unseen style", "v7": "unseen style", "heldout": "held-out"}
    assert gen._style_group("v3", None) == "in-distribution"


def test_volume_correlation_tells_a_size_reading_model_from_a_constant_one():
    row = gen.RowResult("v4", "in-distribution", "v4", [0, 1, 2, 3])
    for true_ml in (20.0, 45.0, 80.0, 120.0):
        row.add((0.9, true_ml * 1.05 + 2.0, true_ml))
    assert row.volume_r() == pytest.approx(1.0)
    constant = gen.RowResult("v3", "in-distribution", "v3", [0, 1, 2])
    for true_ml, pred in ((20.0, 61.0), (45.0, 58.0), (120.0, 60.0)):
        constant.add((0.5, pred, true_ml))
    assert abs(constant.volume_r()) < 0.5
    assert constant.summary()["ctv_ml"] == [[61.0, 20.0], [58.0, 45.0], [60.0, 120.0]]


@pytest.mark.slow
def test_every_row_three_phantoms(tiny_weights):
    results = gen.evaluate_generalisation(tiny_weights, n=3, matrix=96, z_extent_mm=80.0)
    assert len(results["rows"]) == len(gen.STYLE_ROWS) + len(gen.PERTURBATIONS)
    for r in results["rows"]:
        assert r["n"] == 3 and all(0.0 <= d <= 1.0 for d in r["dice"]) and r["min"] <= r["median"] <= max(r["dice"])


def _row(name, seeds, dice):
    return {"row": name, "group": "in-distribution", "seeds": seeds, "dice": dice}


def _write(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generalisation.json").write_text(json.dumps({"rows": rows}))


def test_paired_comparison_of_two_candidates(tmp_path):
    # The candidate folder is evaluate_candidate.sh's layout: rows spread over sub-folders, merged.
    _write(tmp_path / "base", [_row("v4", [1, 2, 3], [0.6, 0.7, 0.5]), _row("heldout", [9, 8], [0.5, 0.5])])
    _write(tmp_path / "cand" / "styles", [_row("v4", [1, 2, 3], [0.7, 0.7, 0.4])])
    _write(tmp_path / "cand" / "ablation", [_row("heldout", [9, 8], [0.6, 0.8]), _row("only here", [5], [0.1])])
    rows = {r["row"]: r for r in gen.paired_comparison(gen.read_results(tmp_path / "base"),
                                                       gen.read_results(tmp_path / "cand"))}
    assert set(rows) == {"v4", "heldout"}  # a row only one side measured is not compared
    d = np.array([0.1, 0.0, -0.1])
    assert rows["v4"]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert rows["v4"]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert rows["v4"]["better"] == 1 and rows["heldout"]["better"] == 2
    assert rows["heldout"]["difference"] == pytest.approx(0.2) and rows["heldout"]["candidate"] == pytest.approx(0.7)
    table = gen.comparison_table(list(rows.values()), "0.3.0", "v9a")
    assert "| heldout | 2 | 0.500 | 0.700 | +0.200 (0.100) | 2/2 |" in table
    # A row re-measured on more seeds (16 against 8) is paired on the seeds both have, means included.
    _write(tmp_path / "more", [_row("v4", [1, 2, 3, 4], [0.7, 0.7, 0.4, 0.0])])
    (more,) = gen.paired_comparison(gen.read_results(tmp_path / "base"), gen.read_results(tmp_path / "more"))
    assert more["n"] == 3 and more["candidate"] == pytest.approx(0.6) and more["difference"] == pytest.approx(0.0, abs=1e-12)
    (back,) = gen.paired_comparison(gen.read_results(tmp_path / "more"), gen.read_results(tmp_path / "base"))
    assert back["n"] == 3 and back["base"] == pytest.approx(0.6) and back["candidate"] == pytest.approx(0.6)


def test_paired_comparison_refuses_unpaired_or_conflicting_rows(tmp_path):
    _write(tmp_path / "a", [_row("v4", [1, 2], [0.6, 0.7])])
    _write(tmp_path / "b", [_row("v4", [1, 3], [0.6, 0.7])])
    _write(tmp_path / "longer", [_row("v4", [2, 1, 3], [0.6, 0.7, 0.1])])  # more seeds, but not the same first ones
    for other in ("b", "longer"):
        with pytest.raises(ValueError, match="other seeds"):
            gen.paired_comparison(gen.read_results(tmp_path / "a"), gen.read_results(tmp_path / other))
    _write(tmp_path / "c" / "x", [_row("v4", [1, 2], [0.6, 0.7])])
    _write(tmp_path / "c" / "y", [_row("v4", [1, 2], [0.6, 0.9])])
    with pytest.raises(ValueError, match="measured twice"):
        gen.read_results(tmp_path / "c")
    # The same row on 4 seeds and again on its first 2 (the style rows and the held-out ablation): the longer is kept.
    _write(tmp_path / "d" / "styles", [_row("heldout", [1, 2, 3, 4], [0.6, 0.7, 0.2, 0.3])])
    _write(tmp_path / "d" / "ablation", [_row("heldout", [1, 2], [0.6, 0.7])])
    assert gen.read_results(tmp_path / "d")["rows"] == [_row("heldout", [1, 2, 3, 4], [0.6, 0.7, 0.2, 0.3])]
    _write(tmp_path / "e" / "styles", [_row("heldout", [1, 2, 3, 4], [0.6, 0.7, 0.2, 0.3])])
    _write(tmp_path / "e" / "ablation", [_row("heldout", [1, 2], [0.6, 0.75])])  # the same seeds scored otherwise
    with pytest.raises(ValueError, match="measured twice"):
        gen.read_results(tmp_path / "e")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No generalisation.json"):
        gen.read_results(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        gen.read_results(tmp_path / "missing")
    for bad in ({"rows": []}, {"rows": [{"row": "v4", "dice": [0.5]}]}, [1, 2]):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="is not a generalisation evaluation"):
            gen.read_results(tmp_path / "bad.json")


def test_compare_candidates_script(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("compare_candidates",
                                                  Path(__file__).parents[1] / "scripts" / "compare_candidates.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _write(tmp_path / "a", [_row("v4", [1, 2], [0.6, 0.7])])
    _write(tmp_path / "b", [_row("v2", [1, 2], [0.6, 0.7])])
    assert script.main([str(tmp_path / "a"), str(tmp_path / "a"), "--names", "x", "y"]) == 0
    assert "| v4 | 2 | 0.650 | 0.650 | +0.000" in capsys.readouterr().out
    assert script.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip() == "error: the two evaluations share no row."
    assert script.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: '{tmp_path / 'missing'}' does not exist."


def test_candidate_json_script_keeps_a_candidates_rows_card_and_log(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("candidate_json",
                                                  Path(__file__).parents[1] / "scripts" / "candidate_json.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run, results, docs = tmp_path / "run", tmp_path / "gen", tmp_path / "docs"
    (run / "weights").mkdir(parents=True)
    docs.mkdir()
    card = {"name": "m", "version": "9.9.9", "threshold": 0.5, "training": {"data": {"styles": {"v4": 3, "v2": 1}}}}
    (run / "weights" / "model.json").write_text(json.dumps(card))
    (run / "log.csv").write_text("epoch,val_dice\n1,0.5\n2,0.6\n")
    _write(results / "styles", [_row("v4", list(range(16)), [0.5] * 16)])
    (results / "styles" / "generalisation.json").write_text(json.dumps(
        {"n_per_row": 16, "matrix": 256, "rows": [_row("v4", list(range(16)), [0.5] * 16)]}))
    _write(results / "perturbations", [_row("hu+40", list(range(8)), [0.4] * 8)])
    assert script.main(["c1", str(run), str(results), "what it was", "--docs", str(docs)]) == 0
    doc = json.loads((docs / "generalisation_9.9.9_c1_candidate.json").read_text())
    assert doc["what"] == "what it was" and doc["weights"]["trained_styles"] == ["v2", "v4"]
    assert doc["n_per_row"] == [8, 16] and doc["matrix"] == 256  # rows of two sizes: each keeps its own n
    assert {r["row"] for r in doc["rows"]} == {"v4", "hu+40"} and doc["card_excerpt"]["threshold"] == 0.5
    assert doc["training_log"] == [{"epoch": "1", "val_dice": "0.5"}, {"epoch": "2", "val_dice": "0.6"}]
    with pytest.raises(SystemExit, match="cannot read the candidate's run or results"):
        script.main(["c2", str(tmp_path / "nothing"), str(results), "x", "--docs", str(docs)])
    (run / "weights" / "model.json").write_text(json.dumps({"name": "m", "version": "9.9.8"}))  # no training entry
    with pytest.raises(SystemExit, match="cannot read the candidate's run or results"):
        script.main(["c3", str(run), str(results), "x", "--docs", str(docs)])
    with pytest.raises(SystemExit, match="cannot read the candidate's run or results"):
        script.main(["c4", str(run), str(tmp_path / "no results"), "x", "--docs", str(docs)])
    assert sorted(p.name for p in docs.iterdir()) == ["generalisation_9.9.9_c1_candidate.json"]
