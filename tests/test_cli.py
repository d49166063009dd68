"""The ``mnetim`` command line: contract, bad inputs (one sentence, exit != 0, no file), batch."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MnetImSegmentLib.cli import main
from MnetImSegmentLib.engine.io import read_image, read_segmentation_mask, write_image


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, small_phantom):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_image(small_phantom.ct, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_failure(code, err, folder: Path, match: str):
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("mnetim: error:"), err
    assert any(m.lower() in err.lower() for m in match.split("|")), err
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.startswith("out")]
    assert not leftovers, leftovers


def test_segment_json_contract(ct_file, tiny_weights, tmp_path, capsys):
    before = _digest(ct_file)
    out = tmp_path / "ctv.seg.nrrd"
    code, stdout, err = run(["segment", ct_file, "-o", out, "--weights", tiny_weights, "--device", "cpu",
                             "--threshold", "0.5", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert {"output", "ctv_ml", "seconds", "device"} <= set(report) and report["device"] == "cpu"
    assert _digest(ct_file) == before  # the user's data is never modified
    seg = read_segmentation_mask(out)
    ct = read_image(ct_file)
    assert seg.shape == ct.shape and seg.geometry.allclose(ct.geometry, atol=1e-5)
    assert report["ctv_ml"] == pytest.approx(seg.array.sum() * np.prod(ct.geometry.spacing) / 1000, rel=1e-3)
    # A second run refuses to overwrite without --overwrite, and leaves the first result intact.
    digest = _digest(out)
    code, _, err = run(["segment", ct_file, "-o", out, "--weights", tiny_weights], capsys)
    assert code != 0 and "already exists" in err and _digest(out) == digest


def test_labelmap_outputs_keep_geometry(ct_file, tiny_weights, tmp_path, capsys):
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        out = tmp_path / f"ctv{suffix}"
        code, _, err = run(["segment", ct_file, "-o", out, "--weights", tiny_weights, "--device", "cpu",
                            "--threshold", "0.5"], capsys)
        assert code == 0, err
        lab = read_image(out)
        assert lab.array.dtype == np.uint8 and lab.geometry.allclose(read_image(ct_file).geometry, atol=1e-5)


def _write_2d(path):
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(path))


def _write_truncated(path, ct_file):
    path.write_bytes(ct_file.read_bytes()[:2000])


def _write_truncated_raw(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 32, 32), -1000, np.int16)), str(path), useCompression=False)
    path.write_bytes(path.read_bytes()[:-3000])


def _write_nan(path):
    arr = np.zeros((6, 32, 32), np.float32)
    arr[0, 0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def _write_mr_like(path):
    arr = np.random.default_rng(0).uniform(0, 1200, (6, 32, 32)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


@pytest.mark.parametrize("name,maker,match", [
    ("notes.nii.gz", lambda p, ct: p.write_text("not an image"), "not a readable image"),
    ("trunc.nii.gz", lambda p, ct: _write_truncated(p, ct), "truncated"),
    ("trunc.nrrd", lambda p, ct: _write_truncated_raw(p), "truncated"),  # either check may catch it
    ("flat.nrrd", lambda p, ct: _write_2d(p), "2D"),
    ("nan.nrrd", lambda p, ct: _write_nan(p), "NaN"),
    ("mr.nrrd", lambda p, ct: _write_mr_like(p), "does not look like CT"),
    ("missing.nii.gz", None, "does not exist"),
])
def test_bad_inputs(name, maker, match, ct_file, tiny_weights, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    path = src / name
    if maker:
        maker(path, ct_file)
    before = _digest(path) if path.exists() else None
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    code, _, err = run(["segment", path, "-o", out_dir / "out.seg.nrrd", "--weights", tiny_weights], capsys)
    _assert_clean_failure(code, err, out_dir, match)
    assert not list(out_dir.iterdir())
    if before:
        assert _digest(path) == before


def test_folder_without_dicom(tmp_path, tiny_weights, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    code, _, err = run(["segment", empty, "-o", tmp_path / "out.seg.nrrd", "--weights", tiny_weights], capsys)
    _assert_clean_failure(code, err, tmp_path, "No DICOM")


def test_folder_with_dicom_but_no_ct(tmp_path, small_phantom, tiny_weights, capsys):
    import pydicom

    from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series

    series = write_ct_series(small_phantom.ct, tmp_path / "mr")
    for f in series.files:  # the same slices, relabelled as an MR series
        ds = pydicom.dcmread(f)
        ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(f)
    code, _, err = run(["segment", tmp_path / "mr", "-o", tmp_path / "out.seg.nrrd", "--weights", tiny_weights], capsys)
    _assert_clean_failure(code, err, tmp_path, f"holds {len(series.files)} DICOM file(s) of other kinds (MR")


@pytest.mark.parametrize("problem", ["no_card", "sha", "architecture", "missing_folder"])
def test_bad_weights(problem, ct_file, tiny_weights, tmp_path, capsys):
    import shutil

    w = tmp_path / "w"
    if problem != "missing_folder":
        shutil.copytree(tiny_weights, w)
    if problem == "no_card":
        (w / "model.json").unlink()
    elif problem == "sha":
        (w / "model.safetensors").write_bytes((w / "model.safetensors").read_bytes()[:-8] + b"12345678")
    elif problem == "architecture":
        card = json.loads((w / "model.json").read_text())
        card["architecture"] = "M-Net"
        card["config"] = {}
        (w / "model.json").write_text(json.dumps(card))
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    code, _, err = run(["segment", ct_file, "-o", out_dir / "out.seg.nrrd", "--weights", w], capsys)
    match = {"no_card": "no model card", "sha": "SHA-256", "architecture": "do not match",
             "missing_folder": "does not exist"}[problem]
    _assert_clean_failure(code, err, out_dir, match)


@pytest.mark.parametrize("target,match", [
    ("nofolder/out.seg.nrrd", "does not exist"),
    ("out.png", "output format"),
    ("isfile/out.nii.gz", "does not exist"),
])
def test_unwritable_outputs(target, match, ct_file, tiny_weights, tmp_path, capsys):
    (tmp_path / "isfile").write_text("a file, not a folder")
    code, _, err = run(["segment", ct_file, "-o", tmp_path / target, "--weights", tiny_weights,
                        "--device", "cpu"], capsys)
    _assert_clean_failure(code, err, tmp_path, match)


def test_read_only_folder_fails_cleanly(ct_file, tiny_weights, capsys):
    # /proc is read-only even for root: the temporary file cannot be created.
    code, _, err = run(["segment", ct_file, "-o", "/proc/ctv.seg.nrrd", "--weights", tiny_weights,
                        "--device", "cpu"], capsys)
    assert code != 0 and "Traceback" not in err and "mnetim: error:" in err


def test_batch_mode_resumes(tmp_path, small_phantom, tiny_weights, capsys):
    src = tmp_path / "cts"
    src.mkdir()
    write_image(small_phantom.ct, src / "a.nii.gz")
    write_image(small_phantom.ct, src / "b.nrrd")
    (src / "c.nii.gz").write_text("broken")
    out = tmp_path / "segs"
    code, stdout, err = run(["segment", src, "-o", out, "--weights", tiny_weights, "--device", "cpu",
                             "--threshold", "0.5", "--json"], capsys)
    report = json.loads(stdout)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.nrrd", "b.seg.nrrd", "summary.csv"]
    assert len(report["failed"]) == 1 and "c.nii.gz" in report["failed"][0]["input"]
    stamp = (out / "a.seg.nrrd").stat().st_mtime_ns
    code, stdout, _ = run(["segment", src, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--json"], capsys)
    assert all(c.get("skipped") for c in json.loads(stdout)["cases"])
    assert (out / "a.seg.nrrd").stat().st_mtime_ns == stamp


def test_dicom_folders(tmp_path, small_phantom, tiny_weights, capsys):
    """A DICOM series folder segments; of several CT series the planning-CT rule picks one (full tie:
    the first found) and --series overrides it; a missing slice (irregular spacing) is refused."""
    from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series

    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    one = write_ct_series(small_phantom.ct, tmp_path / "one" / "ct")
    code, stdout, err = run(["segment", tmp_path / "one", "-o", tmp_path / "a.nii.gz", "--weights", tiny_weights,
                             "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    assert read_image(tmp_path / "a.nii.gz").geometry.allclose(small_phantom.ct.geometry, atol=1e-3)

    second = write_ct_series(small_phantom.ct, tmp_path / "two" / "s2")
    write_ct_series(small_phantom.ct, tmp_path / "two" / "s1", study_instance_uid=second.study_instance_uid)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    code, _, err = run(["segment", tmp_path / "two", "-o", out_dir / "auto.nii.gz", "--weights", tiny_weights,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert (out_dir / "auto.nii.gz").is_file()  # one study: one case, not a batch
    code, _, err = run(["segment", tmp_path / "two", "-o", out_dir / "out.nii.gz", "--weights", tiny_weights,
                        "--device", "cpu", "--series", second.series_instance_uid], capsys)
    assert code == 0, err

    one.files[3].unlink()  # a missing slice
    gap_dir = tmp_path / "gap"
    gap_dir.mkdir()
    code, _, err = run(["segment", tmp_path / "one", "-o", gap_dir / "out.nii.gz", "--weights", tiny_weights], capsys)
    _assert_clean_failure(code, err, gap_dir, "irregular slice spacing")
