"""``mnetim evaluate`` / ``compare``: pairing, grids, numbers, tables, figures and bad input."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from MnetImSegmentLib import cli
from MnetImSegmentLib.cli.evaluate import add_parser as add_commands
from MnetImSegmentLib.core.errors import DatasetError, OutputError
from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.engine.io import write_image, write_labelmap, write_segmentation
from MnetImSegmentLib.research.evaluation.report import REPORT_FILES
from MnetImSegmentLib.research.evaluation.scoring import compare_models, evaluate, summarize
from MnetImSegmentLib.research.metrics import METRICS, segmentation_metrics

GEOMETRY = Geometry(spacing=(0.9, 0.8, 2.5), origin=(-20.0, -31.5, 40.0))  # (x, y, z) as SimpleITK
SPACING_ZYX = (2.5, 0.8, 0.9)
SHAPE = (14, 40, 44)
PNG = b"\x89PNG\r\n\x1a\n"


def ellipsoid(centre_zyx, radii_mm, shape=SHAPE, spacing=SPACING_ZYX) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return sum(((g - c) * s / r) ** 2 for g, c, s, r in zip((z, y, x), centre_zyx, spacing, radii_mm)) < 1.0


def make_case(rng, i: int):
    """Truth labelmap (CTV 1 plus a 'bladder' 2) and a prediction off by a random shift."""
    truth = ellipsoid((7, rng.uniform(17, 23), rng.uniform(19, 25)), (11, 9, 10))
    labels = truth.astype(np.uint8)
    labels[:2, :4, :4] = 2
    shift = (int(rng.integers(0, 2)), int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
    return labels, np.roll(truth, shift, axis=(0, 1, 2))


@pytest.fixture
def dataset(tmp_path) -> dict[str, Path]:
    """Six cases: truths as .nii.gz labelmaps; predictions alternately .seg.nrrd and .nrrd labelmaps;
    CTs as .nii.gz, all on one anisotropic grid."""
    rng = np.random.default_rng(0)
    folders = {k: tmp_path / k for k in ("truth", "pred", "images")}
    for f in folders.values():
        f.mkdir()
    for i in range(6):
        labels, pred = make_case(rng, i)
        write_labelmap(Volume(labels, GEOMETRY), folders["truth"] / f"case{i:02d}.nii.gz")
        if i % 2:
            write_segmentation(Volume(pred.astype(np.uint8), GEOMETRY), folders["pred"] / f"case{i:02d}.seg.nrrd")
        else:
            write_labelmap(Volume(pred.astype(np.uint8), GEOMETRY), folders["pred"] / f"case{i:02d}.nrrd")
        ct = rng.normal(40, 25, SHAPE) + 30 * (labels == 1)
        write_image(Volume(ct.astype(np.int16), GEOMETRY), folders["images"] / f"case{i:02d}.nii.gz")
    folders["out"] = tmp_path / "results"
    return folders


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _arrays(folders, case, with_spacing=False):
    from MnetImSegmentLib.research.evaluation.cases import read_mask

    truth = read_mask(folders["truth"] / f"{case}.nii.gz")
    pred_path = next(folders["pred"].glob(f"{case}.*"))
    spacing = tuple(reversed(truth.geometry.spacing))  # NIfTI keeps float32 spacing: use what was stored
    assert spacing == pytest.approx(SPACING_ZYX, rel=1e-6)
    arrays = read_mask(pred_path).array, truth.array
    return arrays + (spacing,) if with_spacing else arrays


# --------------------------------------------------------------------------- the happy path
def test_evaluate_writes_tables_figures_and_the_right_numbers(dataset):
    result = evaluate(dataset["pred"], dataset["truth"], dataset["out"], images_dir=dataset["images"], name="Mnet_Im")
    assert sorted(p.name for p in dataset["out"].iterdir()) == sorted(
        ["per_case.csv", "summary.csv", "summary.md", "boxplots.png", "best_worst.png", "evaluation.json"])
    rows = read_csv(dataset["out"] / "per_case.csv")
    assert [r["case_id"] for r in rows] == [f"case{i:02d}" for i in range(6)] and {r["model"] for r in rows} == {"Mnet_Im"}
    for row in rows:
        pred, truth, spacing = _arrays(dataset, row["case_id"], with_spacing=True)
        # Spacing goes to the metrics in array order (z, y, x); a swap would change every distance.
        expected = segmentation_metrics(pred, truth, spacing, tolerance_mm=2.0)
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=1e-12), key
        assert float(row["truth_ml"]) == pytest.approx(truth.sum() * 0.9 * 0.8 * 2.5 / 1000)
        diff_ml = (pred.sum() - truth.sum()) * 0.9 * 0.8 * 2.5 / 1000
        assert float(row["vol_diff_ml"]) == pytest.approx(diff_ml, abs=1e-9)
        assert float(row["vol_diff_pct"]) == pytest.approx(100 * (pred.sum() - truth.sum()) / truth.sum())
    summary = read_csv(dataset["out"] / "summary.csv")
    for metric in METRICS:
        values = np.array([float(r[metric]) for r in rows])
        s = next(r for r in summary if r["metric"] == metric)
        assert float(s["mean"]) == pytest.approx(values.mean())
        assert float(s["variance"]) == pytest.approx(values.var(ddof=1))
        assert float(s["std"]) == pytest.approx(values.std(ddof=1))
        assert float(s["median"]) == pytest.approx(np.median(values))
        assert s["unit"] == ("mm" if metric in ("asd", "hd95") else "fraction") and float(s["tolerance"]) == 2.0
    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    for text in ("Mean ± SD", "Median", "| Mnet_Im | 6 |", "tau = 2 mm", "ASD (mm)", "HD95 (mm)", "| Dice |",
                 "Empty masks", "standard deviation", "vol_diff_ml", "Nikolov"):
        assert text in md, text
    for png in ("boxplots.png", "best_worst.png"):
        assert (dataset["out"] / png).read_bytes()[:8] == PNG
    info = json.loads((dataset["out"] / "evaluation.json").read_text())
    assert info["tolerance"] == 2.0 and info["units"] == "mm" and len(info["cases"]) == 6
    assert info["definitions"]["hd95"]["unit"] == "mm" and "files" in info
    assert result.summary["Mnet_Im"]["vd"]["n"] == 6 and result.cases == [f"case{i:02d}" for i in range(6)]


def test_distances_are_in_mm_along_the_right_axis(tmp_path):
    """A prediction one slice off: HD95 is one slice spacing (2.5 mm), not an in-plane voxel."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[4:9, 10:30, 12:32] = 1
    for name, array in (("truth", truth), ("pred", np.roll(truth, 1, axis=0))):
        (tmp_path / name).mkdir()
        write_labelmap(Volume(array, GEOMETRY), tmp_path / name / "a.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "truth", tmp_path / "mm")
    assert result.per_case[0]["hd95"] == 2.5 and result.per_case[0]["vd"] == pytest.approx(0.8)
    voxels = evaluate(tmp_path / "pred", tmp_path / "truth", tmp_path / "vox", units="voxel", tolerance_mm=1.0)
    assert voxels.per_case[0]["hd95"] == 1.0 and voxels.per_case[0]["so"] == 1.0
    assert "distances in voxel" in (tmp_path / "vox" / "summary.md").read_text(encoding="utf-8")


def test_per_slice_metrics(dataset):
    result = evaluate(dataset["pred"], dataset["truth"], dataset["out"], per_slice=True, tolerance_mm=1.5)
    rows = read_csv(dataset["out"] / "per_slice.csv")
    pred, truth, spacing = _arrays(dataset, "case03", with_spacing=True)
    slices = np.flatnonzero(pred.any(axis=(1, 2)) | truth.any(axis=(1, 2)))
    mine = [r for r in rows if r["case_id"] == "case03"]
    assert [int(r["slice"]) for r in mine] == list(slices)
    z = int(slices[len(slices) // 2])
    expected = segmentation_metrics(pred[z], truth[z], spacing[1:], tolerance_mm=1.5)
    row = next(r for r in mine if int(r["slice"]) == z)
    for key in METRICS:
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-12)
    assert len(result.per_slice) == len(rows)
    assert "Per-slice (2D)" in (dataset["out"] / "summary.md").read_text(encoding="utf-8")


def test_compare_models_one_table_one_boxplot(dataset, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for truth_file in sorted(dataset["truth"].iterdir()):  # a perfect model, for an obvious ranking
        write_labelmap(Volume((np.asarray(_arrays(dataset, truth_file.name[:-7])[1])).astype(np.uint8), GEOMETRY),
                       good / truth_file.name)
    result = compare_models({"Mnet_Im": dataset["pred"], "Perfect": good}, dataset["truth"], dataset["out"],
                            images_dir=dataset["images"], reference="Perfect")
    rows = read_csv(dataset["out"] / "per_case.csv")
    assert [r["model"] for r in rows].count("Perfect") == 6 and [r["model"] for r in rows].count("Mnet_Im") == 6
    assert all(float(r["vd"]) == 1.0 and float(r["hd95"]) == 0.0 for r in rows if r["model"] == "Perfect")
    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    assert "| Mnet_Im | 6 |" in md and "| Perfect | 6 | **0.0000" in md  # best value of a column in bold
    assert result.summary["Perfect"]["vd"]["mean"] == 1.0 and result.models == ["Mnet_Im", "Perfect"]
    assert (dataset["out"] / "boxplots.png").read_bytes()[:8] == PNG
    assert (dataset["out"] / "best_worst.png").read_bytes()[:8] == PNG
    with pytest.raises(DatasetError, match="reference model 'nope'"):
        compare_models({"A": dataset["pred"]}, dataset["truth"], tmp_path / "x", reference="nope")


def test_compare_scores_only_cases_every_model_has(dataset, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in sorted(dataset["pred"].iterdir())[:4]:
        (partial / p.name).write_bytes(p.read_bytes())
    result = compare_models({"full": dataset["pred"], "partial": partial}, dataset["truth"], dataset["out"])
    assert result.cases == ["case00", "case01", "case02", "case03"]
    assert result.missing["partial"]["no_prediction"] == ["case04", "case05"]
    assert "not scored: case04, case05" in (dataset["out"] / "summary.md").read_text(encoding="utf-8")


def test_phantom_ct_oblique_grid_segmentation_roundtrip(tmp_path):
    """A CT-like phantom on an oblique grid: .seg.nrrd prediction vs labelmap truth, overlay on the CT."""
    from MnetImSegmentLib.research.phantom import LABELS, make_phantom, rotation_matrix

    ph = make_phantom(5, matrix=128, slice_mm=2.5, z_extent_mm=60, direction=rotation_matrix(4, -3, 10))
    for name in ("truth", "pred", "images"):
        (tmp_path / name).mkdir()
    ctv = ph.labels.array == LABELS["CTV"]
    write_labelmap(ph.labels, tmp_path / "truth" / "p5.nii.gz")
    write_segmentation(ph.labels.with_array(np.roll(ctv, 1, axis=2).astype(np.uint8)), tmp_path / "pred" / "p5.seg.nrrd")
    write_image(ph.ct, tmp_path / "images" / "p5.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "truth", tmp_path / "out", images_dir=tmp_path / "images")
    spacing = tuple(reversed(ph.ct.geometry.spacing))
    expected = segmentation_metrics(np.roll(ctv, 1, axis=2), ctv, spacing)
    assert result.per_case[0]["asd"] == pytest.approx(expected["asd"], rel=1e-6)  # NIfTI stores float32 spacing
    assert result.per_case[0]["hd95"] == pytest.approx(spacing[2], rel=1e-6)


def test_slicer_cropped_segmentation_on_the_same_lattice_is_accepted(dataset, tmp_path):
    """Slicer stores a .seg.nrrd on the CT lattice but only over the segment's extent: paste it back."""
    pred, truth = _arrays(dataset, "case01")
    full = evaluate(dataset["pred"], dataset["truth"], tmp_path / "full").per_case[1]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(pred))
    start = [b.start for b in box]  # (k, j, i)
    origin = GEOMETRY.index_to_physical([start[2], start[1], start[0]])
    cropped = Volume(pred[box].astype(np.uint8), Geometry(GEOMETRY.spacing, origin, GEOMETRY.direction))
    target = dataset["pred"] / "case01.seg.nrrd"
    target.unlink()
    write_segmentation(cropped, target)
    again = evaluate(dataset["pred"], dataset["truth"], tmp_path / "cropped").per_case[1]
    assert again["case_id"] == "case01" and again["asd"] == full["asd"] and again["vd"] == full["vd"]


def test_empty_prediction_follows_the_convention_and_is_reported(dataset):
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), GEOMETRY), dataset["pred"] / "case00.nrrd", overwrite=True)
    result = evaluate(dataset["pred"], dataset["truth"], dataset["out"])
    row = result.per_case[0]
    assert row["empty_prediction"] and row["vd"] == 0 and math.isinf(row["hd95"]) and row["so"] == 0
    assert result.empty_predictions == {"pred": ["case00"]}
    assert result.summary["pred"]["hd95"]["n"] == 5 and result.summary["pred"]["hd95"]["n_infinite"] == 1
    assert result.summary["pred"]["vd"]["n"] == 6  # counted as 0, not left out
    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    assert "(1 inf)" in md and "empty prediction for 1 case(s): case00" in md
    assert read_csv(dataset["out"] / "per_case.csv")[0]["hd95"] == "inf"


def test_summarize():
    s = summarize([1.0, 2.0, 4.0, float("inf")])
    assert s["n"] == 3 and s["n_infinite"] == 1 and s["mean"] == pytest.approx(7 / 3)
    assert s["variance"] == pytest.approx(np.var([1, 2, 4], ddof=1)) and s["median"] == 2.0
    assert math.isnan(summarize([3.0])["variance"]) and math.isnan(summarize([float("inf")])["mean"])


# --------------------------------------------------------------------------- bad input
def test_grids_that_differ_are_refused_and_nothing_is_written(dataset):
    other = Geometry(spacing=(0.9, 0.8, 3.0), origin=GEOMETRY.origin)
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), other), dataset["pred"] / "case02.nrrd", overwrite=True)
    with pytest.raises(DatasetError, match=r"Case 'case02': the prediction of 'pred' grid .* differs from the truth grid"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])
    assert not dataset["out"].exists() or not any(dataset["out"].iterdir())
    shifted = Geometry(spacing=GEOMETRY.spacing, origin=(-20.0, -31.1, 40.0))  # half a voxel off: no exact paste
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), shifted), dataset["pred"] / "case02.nrrd", overwrite=True)
    with pytest.raises(DatasetError, match="differs from the truth grid"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])


def test_ct_on_another_grid_is_refused_for_the_overlay(dataset):
    ct = Volume(np.zeros((SHAPE[0] + 1,) + SHAPE[1:], np.int16), GEOMETRY)
    write_image(ct, dataset["images"] / "case00.nii.gz", overwrite=True)
    write_image(ct, dataset["images"] / "case05.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="CT grid .* misregistered"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"], images_dir=dataset["images"])
    assert not dataset["out"].exists()  # failed while drawing: the folder it had made is gone again


def test_empty_truth_is_refused(dataset):
    write_labelmap(Volume(np.full(SHAPE, 2, np.uint8), GEOMETRY), dataset["truth"] / "case03.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="Case 'case03': the truth mask .* is empty .*--label"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])


def test_missing_cases_are_reported(dataset):
    (dataset["pred"] / "case04.nrrd").unlink()
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), GEOMETRY), dataset["pred"] / "stray.nii.gz")
    result = evaluate(dataset["pred"], dataset["truth"], dataset["out"])
    assert "case04" not in result.cases and len(result.cases) == 5
    assert result.missing["pred"] == {"no_truth": ["stray"], "no_prediction": ["case04"]}
    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    assert "no prediction for 1 truth case(s), not scored: case04" in md and "without truth, not scored: stray" in md


def test_no_matching_names_missing_folders_and_duplicates(dataset, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), GEOMETRY), other / "patient9.nii.gz")
    with pytest.raises(DatasetError, match="No case names match .*patient9.*case00"):
        evaluate(other, dataset["truth"], dataset["out"])
    with pytest.raises(DatasetError, match=f"No case names match .*patient9 in '{other}'"):
        compare_models({"A": dataset["pred"], "B": other}, dataset["truth"], dataset["out"])
    with pytest.raises(DatasetError, match="prediction folder .* does not exist"):
        evaluate(tmp_path / "nope", dataset["truth"], dataset["out"])
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no mask files"):
        evaluate(dataset["pred"], tmp_path / "blank", dataset["out"])
    write_labelmap(Volume(np.zeros(SHAPE, np.uint8), GEOMETRY), dataset["pred"] / "case01.nii.gz")
    with pytest.raises(DatasetError, match="two files for case 'case01'"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])


def test_wrong_segment_and_probability_maps_are_refused(dataset):
    with pytest.raises(DatasetError, match="no segment named 'GTV' .*it has: CTV.*--segment"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"], segment="GTV")
    write_image(Volume(np.full(SHAPE, 0.3, np.float32), GEOMETRY), dataset["pred"] / "case00.nrrd", overwrite=True)
    with pytest.raises(DatasetError, match="not a labelmap"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])


def test_existing_results_are_refused_unless_overwrite_and_nothing_else_is_touched(dataset):
    evaluate(dataset["pred"], dataset["truth"], dataset["out"], per_slice=True)
    notes = dataset["out"] / "my_notes.txt"
    notes.write_text("keep me")
    before = (dataset["out"] / "per_case.csv").read_bytes()
    with pytest.raises(OutputError, match="already holds evaluation results .*--overwrite"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"])
    assert (dataset["out"] / "per_case.csv").read_bytes() == before
    evaluate(dataset["pred"], dataset["truth"], dataset["out"], overwrite=True, tolerance_mm=1.0)
    assert notes.read_text() == "keep me"
    assert not (dataset["out"] / "per_slice.csv").exists()  # the earlier run's own file, now stale
    assert json.loads((dataset["out"] / "evaluation.json").read_text())["tolerance"] == 1.0
    assert sorted(p.name for p in dataset["out"].iterdir()) == sorted(
        [f for f in REPORT_FILES if f != "per_slice.csv"] + ["my_notes.txt"])
    (dataset["out"] / "x").write_text("")  # a file where a folder is wanted
    with pytest.raises(OutputError, match="is a file"):
        evaluate(dataset["pred"], dataset["truth"], dataset["out"] / "x")


# --------------------------------------------------------------------------- command line
@pytest.fixture
def mnetim(monkeypatch, capsys):
    """``mnetim`` as users run it (cli.main's error handling)."""

    def run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_evaluate_json(dataset, mnetim):
    code, out, err = mnetim("evaluate", "--pred", dataset["pred"], "--truth", dataset["truth"], "--out", dataset["out"],
                            "--tolerance-mm", "1.5", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["cases"] == 6 and report["tolerance"] == 1.5 and set(report["summary"]["pred"]) == set(METRICS)
    assert all(Path(f).is_file() for f in report["files"])


def test_cli_compare(dataset, mnetim):
    code, out, err = mnetim("evaluate-models", "--model", f"A={dataset['pred']}", "--model", f"B={dataset['pred']}",
                            "--truth", dataset["truth"], "--out", dataset["out"])
    assert code == 0, err
    assert out.startswith("A: 6 case(s)") and "B: 6 case(s)" in out and "results ->" in out


@pytest.mark.parametrize("case", ["existing", "no-match", "grid", "tolerance"])
def test_cli_bad_input_is_one_clear_line(dataset, mnetim, tmp_path, case):
    args = ["evaluate", "--pred", dataset["pred"], "--truth", dataset["truth"], "--out", dataset["out"]]
    if case == "existing":
        dataset["out"].mkdir()
        (dataset["out"] / "summary.csv").write_text("old")
    elif case == "no-match":
        args[2] = dataset["images"].parent / "empty"
        args[2].mkdir()
        write_labelmap(Volume(np.zeros(SHAPE, np.uint8), GEOMETRY), args[2] / "zz.nii.gz")
    elif case == "grid":
        write_labelmap(Volume(np.zeros(SHAPE, np.uint8), Geometry((1.0, 1.0, 1.0))), dataset["pred"] / "case00.nrrd",
                       overwrite=True)
    else:
        args += ["--tolerance-mm", "-1"]
    if case == "tolerance":
        with pytest.raises(SystemExit) as exc:  # argparse's own usage error
            mnetim(*args)
        assert exc.value.code == 2
        return
    code, out, err = mnetim(*args)
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert code != 0 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("mnetim: error:"), err
    assert {"existing": "already holds", "no-match": "No case names match", "grid": "differs from the truth grid"}[case] in err
    if case == "existing":
        assert (dataset["out"] / "summary.csv").read_text() == "old"
