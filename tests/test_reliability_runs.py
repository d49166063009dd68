"""Issue 13, whole runs: `mnetim` interrupted at each stage, DICOM faults, batch refusals, every
command's options, contour work bounds, the dataset import. See docs/reliability.md.

The building blocks (the output transaction, validators) are tested in test_reliability.py; these
tests drive the commands and assert exit status, one-sentence message, and what is left on disk.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.cli import assert_refused as _refused, run_cli as _run
from helpers.rt_fixtures import circle, ct_volume, write_ct, write_rs
from MnetImSegmentLib.core.commit import is_temp_name
from MnetImSegmentLib.core.errors import InputError, OutputError
from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.dicomrt.ct_series import scan_tree
from MnetImSegmentLib.dicomrt.polygons import polygon_self_intersects
from MnetImSegmentLib.engine.io import read_image, read_segmentation_mask, write_image, write_segmentation

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "MnetImSegment"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())




@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, small_phantom):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_image(small_phantom.ct, path)
    return path


# --------------------------------------------------------------------------- signals at each stage
_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    stage, marker, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    import MnetImSegmentLib.cli.segment as seg
    import MnetImSegmentLib.engine.io as eio
    from MnetImSegmentLib.engine.inference import Segmenter

    def pause():
        open(marker, "w").close()
        for _ in range(1200):  # short steps: a signal is handled between them
            time.sleep(0.05)

    if stage == "read":
        real_read = seg.read_image
        def read_image(*a, **k):
            pause()
            return real_read(*a, **k)
        seg.read_image = read_image
    elif stage == "network":
        real_predict = Segmenter.predict_roi
        def predict_roi(self, *a, **k):
            pause()
            return real_predict(self, *a, **k)
        Segmenter.predict_roi = predict_roi
    else:  # write: the labelmap and the probability map are both temporary files on disk now
        real_write, calls = eio._sitk_write, []
        def sitk_write(image, tmp, final):
            real_write(image, tmp, final)
            calls.append(final)
            if len(calls) == 2:
                pause()
        eio._sitk_write = sitk_write
    from MnetImSegmentLib.cli import main
    sys.exit(main(argv))
""")


_SLOW = pytest.mark.slow  # 15-20 s each on a shared CPU (a child process loads torch and runs the network)


@pytest.mark.parametrize("stage,sig", [
    ("read", "SIGINT"), ("read", "SIGKILL"),
    pytest.param("network", "SIGINT", marks=_SLOW), pytest.param("network", "SIGKILL", marks=_SLOW),
    pytest.param("write", "SIGINT", marks=_SLOW), pytest.param("write", "SIGKILL", marks=_SLOW),
])
def test_segment_signalled_at_each_stage_leaves_nothing_and_reruns_cleanly(tmp_path, ct_file, tiny_weights, capsys,
                                                                             stage, sig):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "at-stage"
    argv = ["segment", ct_file, "-o", out_dir / "ctv.nii.gz", "--probability", out_dir / "p.nii.gz",
            "--weights", tiny_weights]
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(PACKAGE_ROOT)), stage, str(marker)]
                             + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the child never reached the stage"
        time.sleep(0.05)
    if stage == "write":
        assert len([n for n in _names(out_dir) if is_temp_name(n)]) == 2  # the scenario is real
    child.send_signal(getattr(signal, sig))
    _, err = child.communicate(timeout=60)
    if sig == "SIGINT":
        assert child.returncode == 130 and "interrupted; nothing was written" in err, err
        assert _names(out_dir) == []  # not even a temporary file
    else:
        assert child.returncode == -signal.SIGKILL
        assert not [n for n in _names(out_dir) if not is_temp_name(n)]  # no result, only stale temporaries
    code, _, err = _run(argv, capsys)  # a clean rerun: the stale temporaries of the dead run are removed
    assert code == 0, err
    assert _names(out_dir) == ["ctv.nii.gz", "p.nii.gz"]


# --------------------------------------------------------------------------- DICOM input faults
def _ct_series(folder: Path, shape=(6, 64, 64)):
    return write_ct(folder, ct_volume(shape=shape), birth_date="")


def test_short_or_mis_sized_pixel_data_is_refused_naming_the_slice(tmp_path, capsys):
    import pydicom

    series = _ct_series(tmp_path / "short")
    victim = series.files[2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # truncated: ITK would pad it with zeros
    ds.save_as(victim)
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        read_image(tmp_path / "short")
    assert victim.name in str(info.value) and "\n" not in str(info.value)

    series = _ct_series(tmp_path / "rows")
    victim = series.files[0]
    ds = pydicom.dcmread(victim)
    ds.Rows = ds.Rows - 2  # the data no longer matches Rows x Columns: sheared stripes if decoded
    ds.save_as(victim)
    code, _, err = _run(["segment", tmp_path / "rows", "-o", tmp_path / "ctv.nii.gz"], capsys)
    assert code != 0 and "mnetim: error:" in err and not (tmp_path / "ctv.nii.gz").exists()


def test_pipes_and_devices_in_a_series_folder_are_never_opened(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    folder = tmp_path / "series"
    series = _ct_series(folder)
    os.mkfifo(folder / "pipe.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    result = {}

    def scan():  # a FIFO would block forever, /dev/zero would never end: run it where we can time out
        result["tree"] = scan_tree(folder)
        result["volume"] = read_image(folder)

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "reading a series folder with a FIFO hung"
    unusable = {p.name: reason for p, reason in result["tree"].unreadable}
    assert "not a regular file" in unusable["pipe.dcm"] and "not a regular file" in unusable["zero.dcm"]
    assert result["volume"].shape == (len(series.files), 64, 64)
    with pytest.raises(InputError, match="not a regular file"):
        read_image(folder / "pipe.dcm")


def test_batch_skips_unreadable_cases_by_name_and_finishes_the_others(tmp_path, small_phantom, tiny_weights, capsys):
    import pydicom

    batch = tmp_path / "batch"
    batch.mkdir()
    write_image(small_phantom.ct, batch / "good.nii.gz")
    (batch / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))  # a gzip that is not an image
    bad = _ct_series(batch / "bad_series")
    ds = pydicom.dcmread(bad.files[1])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(bad.files[1])
    code, out, err = _run(["segment", batch, "-o", tmp_path / "out", "--weights", tiny_weights, "--json"], capsys)
    assert code == 0, err
    assert _names(tmp_path / "out") == ["good.seg.nrrd", "summary.csv"]  # the per-patient summary names the skipped cases too
    skipped = [ln for ln in err.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 2 and any("corrupt.nii.gz" in ln for ln in skipped) \
        and any("bad_series" in ln for ln in skipped), err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- batch refusals
def test_batch_output_folder_equal_to_input_is_refused_before_any_work(tmp_path, small_phantom, tiny_weights, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    write_image(small_phantom.ct, batch / "a.nii.gz")
    before = _names(batch)
    for out in (batch, batch / ".", batch / "results"):
        for extra in ([], ["--overwrite"]):
            code, _, err = _run(["segment", batch, "-o", out, "--batch", "--weights", tiny_weights] + extra, capsys)
            _refused(code, err, "input")
            assert _names(batch) == before
    (tmp_path / "link").symlink_to(batch)
    code, _, err = _run(["segment", batch, "-o", tmp_path / "link", "--batch", "--weights", tiny_weights], capsys)
    _refused(code, err, "is the input")


def test_batch_name_collisions_are_refused_before_any_work(tmp_path, small_phantom, tiny_weights, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    write_image(small_phantom.ct, batch / "patient.nii.gz")
    write_image(small_phantom.ct, batch / "Patient.nrrd")
    code, _, err = _run(["segment", batch, "-o", tmp_path / "out", "--weights", tiny_weights], capsys)
    _refused(code, err, "would write the same output")
    assert "patient.nii.gz" in err and "Patient.nrrd" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- options of every command
@pytest.mark.parametrize("argv,flag", [
    (["segment", "IN", "-o", "OUT.nii.gz", "--batch-size", "0"], "--batch-size"),
    (["segment", "IN", "-o", "OUT.nii.gz", "--batch-size", "-1"], "--batch-size"),
    (["segment", "IN", "-o", "OUT.nii.gz", "--threshold", "nan"], "--threshold"),
    (["segment", "IN", "-o", "OUT.nii.gz", "--threshold", "1"], "--threshold"),
    (["phantom", "-o", "OUT", "--count", "0"], "--count"),
    (["phantom", "-o", "OUT", "--workers", "-1"], "--workers"),
    (["phantom", "-o", "OUT", "--matrix", "4"], "--matrix"),
    (["phantom", "-o", "OUT", "--slice-mm", "nan"], "--slice-mm"),
    (["phantom", "-o", "OUT", "--slice-mm", "0"], "--slice-mm"),
    (["phantom", "-o", "OUT", "--seed", "-3"], "--seed"),
    (["train", "IN", "-o", "OUT", "--epochs", "0"], "--epochs"),
    (["train", "IN", "-o", "OUT", "--lr", "-0.1"], "--lr"),
    (["train", "IN", "-o", "OUT", "--lr", "inf"], "--lr"),
    (["train", "IN", "-o", "OUT", "--batch-size", "0"], "--batch-size"),
    (["train", "IN", "-o", "OUT", "--roi-spacing", "nan"], "--roi-spacing"),
    (["train", "IN", "-o", "OUT", "--lr-milestones", "10", "-5"], "--lr-milestones"),
    (["import-rt", "CT", "RS", "-o", "OUT.nii.gz", "--max-spread-mm", "nan"], "--max-spread-mm"),
    (["evaluate", "--pred", "P", "--truth", "T", "--out", "OUT", "--label", "0"], "--label"),
    (["crossval", "IN", "-o", "OUT", "--folds", "1"], "--folds"),
])
def test_every_command_refuses_out_of_range_options_before_any_work(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(argv, capsys)
    _refused(code, err, flag)
    assert _names(tmp_path) == []  # nothing read, nothing written


def test_the_engine_refuses_a_bad_batch_size_itself(tiny_weights):
    from MnetImSegmentLib.engine.inference import Segmenter

    for bad in (0, -1, 1.5, True, 10**9):
        with pytest.raises(InputError, match="batch size"):
            Segmenter(tiny_weights, device="cpu", batch_size=bad)


def test_os_errors_escaping_a_command_are_one_sentence(capsys, monkeypatch):
    import MnetImSegmentLib.cli.segment as seg

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/ct.nii.gz")

    monkeypatch.setattr(seg, "run", denied)
    from MnetImSegmentLib import cli

    parser_run = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_run(), denied))
    code, _, err = _run(["segment", "x.nii.gz", "-o", "y.nii.gz"], capsys)
    _refused(code, err, "cannot access '/data/ct.nii.gz': permission denied")


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_malformed_card_values_are_one_sentence_at_the_command(tmp_path, tiny_weights, ct_file, capsys):
    import json
    import shutil

    for field, value, match in (("threshold", "abc", "threshold"), ("name", "x\ndata file: /etc/passwd", "name"),
                                ("input", {"slices_per_window": 3, "hu_window": [400, -200]}, "hu_window")):
        folder = tmp_path / f"w_{field}"
        shutil.copytree(tiny_weights, folder)
        card = json.loads((folder / "model.json").read_text())
        if field == "input":
            card["input"]["hu_window"] = value["hu_window"]
        else:
            card[field] = value
        (folder / "model.json").write_text(json.dumps(card))
        code, _, err = _run(["segment", ct_file, "-o", tmp_path / "ctv.nii.gz", "--weights", folder], capsys)
        _refused(code, err, match)
        assert not (tmp_path / "ctv.nii.gz").exists()


# --------------------------------------------------------------------------- outputs of the other writers
def test_seg_nrrd_header_cannot_be_injected_and_is_read_back(tmp_path):
    mask = Volume(np.zeros((4, 16, 16), np.uint8), Geometry((0.8, 0.8, 2.0), (1.0, 2.0, 3.0),
                                                              (-1, 0, 0, 0, -1, 0, 0, 0, 1)))
    mask.array[1:3, 4:9, 5:11] = 1
    path = write_segmentation(mask, tmp_path / "ctv.seg.nrrd", model="Evil 1.0\ndata file: /etc/passwd\n")
    header = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    assert not any(line.startswith("data file") for line in header.splitlines())
    back = read_segmentation_mask(path)
    assert np.array_equal(back.array, mask.array) and back.geometry.allclose(mask.geometry)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_rtstruct_read_back_catches_a_corrupt_write_and_leaves_nothing(tmp_path, monkeypatch):
    from MnetImSegmentLib.dicomrt import rtstruct_writer
    from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom

    series = _ct_series(tmp_path / "ct")
    geometry, shape = series.grid()
    mask = Volume(np.zeros(shape, np.uint8), geometry)
    mask.array[2:4, 20:40, 20:40] = 1
    real = rtstruct_writer.save_dataset

    def corrupting(ds, path, tmp):
        check = real(ds, path, tmp)
        with open(tmp, "r+b") as f:  # what a failing disk or share may do after the write returned
            f.seek(400)
            f.write(b"\x00" * 16)
        return check

    monkeypatch.setattr(rtstruct_writer, "save_dataset", corrupting)
    with pytest.raises(OutputError, match="read back is wrong"):
        write_segmentation_dicom(mask, tmp_path / "ct", tmp_path / "rt", "rtstruct")
    assert not (tmp_path / "rt").exists()
    monkeypatch.setattr(rtstruct_writer, "save_dataset", real)
    out = write_segmentation_dicom(mask, tmp_path / "ct", tmp_path / "rt", "rtstruct")
    assert _names(tmp_path / "rt") == [out.name]


def test_dicom_ct_series_is_committed_whole(tmp_path, monkeypatch):
    from MnetImSegmentLib.dicomrt import ct_writer

    real, calls = ct_writer.encode_dataset, []

    def failing(ds):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(ds)

    monkeypatch.setattr(ct_writer, "encode_dataset", failing)
    with pytest.raises(OutputError, match="disk is full"):
        ct_writer.write_ct_series(ct_volume(), tmp_path / "ct")
    assert _names(tmp_path) == []  # no folder, no temporary folder


# --------------------------------------------------------------------------- contours
def _brute_force_self_intersects(p) -> bool:
    p = np.asarray(p, float)
    n = len(p)
    a, b = p, np.roll(p, -1, 0)

    def orient(p0, p1, q):
        return (p1[0] - p0[0]) * (q[1] - p0[1]) - (p1[1] - p0[1]) * (q[0] - p0[0])

    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            if orient(a[i], b[i], a[j]) * orient(a[i], b[i], b[j]) < 0 \
                    and orient(a[j], b[j], a[i]) * orient(a[j], b[j], b[i]) < 0:
                return True
    return False


def test_self_intersection_check_matches_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(4, 25))
        if trial % 2:
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            poly = np.c_[np.cos(angles), np.sin(angles)] * rng.uniform(5, 10, (n, 1))
        else:
            poly = rng.uniform(0, 10, (n, 2)).round(trial % 3)  # integer grids: collinear and shared points
        assert polygon_self_intersects(poly) == _brute_force_self_intersects(poly), poly


def test_an_80000_point_contour_takes_under_two_seconds():
    t = np.linspace(0, 2 * np.pi, 80_000, endpoint=False)
    outline = np.c_[256 + 120 * np.cos(t), 256 + 90 * np.sin(t)]
    figure_eight = np.c_[256 + 120 * np.sin(t + 1e-3), 256 + 60 * np.sin(2 * t + 2e-3)]
    start = time.perf_counter()
    assert not polygon_self_intersects(outline)
    assert polygon_self_intersects(figure_eight)
    assert time.perf_counter() - start < 2.0  # the quadratic check took 325 s on such a contour


# --------------------------------------------------------------------------- dataset import
def _tree(root: Path):
    series = write_ct(root / "p1" / "ct", ct_volume(shape=(8, 32, 32)), patient_id="P1", birth_date="")
    write_rs(root / "p1" / "rs.dcm", series, {"CTV": [(circle(0, 0, 8, z), "CLOSED_PLANAR") for z in (2.5, 5.0, 7.5)]},
             patient_id="P1")
    return series


def test_import_rt_dataset_with_a_relative_output_path(tmp_path, capsys, monkeypatch):
    _tree(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["import-rt", "--dataset", "tree", "-o", "dataset"], capsys)
    assert code == 0, err
    manifest = (tmp_path / "dataset" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 2 and manifest[1].startswith("images/")
    assert not [p for p in (tmp_path / "dataset").rglob("*") if is_temp_name(p.name)]


def test_import_rt_failure_after_the_mask_leaves_nothing(tmp_path, capsys, monkeypatch):
    import MnetImSegmentLib.engine.io as eio

    series = _tree(tmp_path / "tree")
    real, calls = eio._sitk_write, []

    def second_fails(image, tmp, final):
        calls.append(final)
        real(image, tmp, final)
        if len(calls) == 2:
            raise OutputError(f"Writing '{final}' failed (the disk is full); nothing was written.")

    monkeypatch.setattr(eio, "_sitk_write", second_fails)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _run(["import-rt", series.files[0].parent, tmp_path / "tree" / "p1" / "rs.dcm",
                         "-o", out / "mask.nii.gz", "--image", out / "ct.nii.gz"], capsys)
    _refused(code, err, "disk is full")
    assert _names(out) == []  # neither the image written first nor the mask
    monkeypatch.setattr(eio, "_sitk_write", real)
    code, _, err = _run(["import-rt", series.files[0].parent, tmp_path / "tree" / "p1" / "rs.dcm",
                         "-o", out / "mask.nii.gz", "--image", out / "ct.nii.gz"], capsys)
    assert code == 0 and _names(out) == ["ct.nii.gz", "mask.nii.gz"], err


def test_import_rt_refuses_an_output_that_is_its_input(tmp_path, capsys):
    series = _tree(tmp_path / "tree")
    rs = tmp_path / "tree" / "p1" / "rs.dcm"
    before = rs.read_bytes()
    code, _, err = _run(["import-rt", series.files[0].parent, rs, "-o", series.files[0].parent / "m.nii.gz",
                         "--overwrite"], capsys)
    _refused(code, err, "inside the input folder")
    assert rs.read_bytes() == before and not (series.files[0].parent / "m.nii.gz").exists()
