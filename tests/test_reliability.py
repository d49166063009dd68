"""Fault injection (issue 13): full disk, signals, kill -9, concurrent writers, output = input,
malformed model cards, NaN weights, corrupt read-back, umask.

Every test asserts the three promises of docs/reliability.md: a failure is an exception / non-zero
exit with one sentence, nothing is left behind (no final file, no temporary file), and nothing that
existed before is changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.cli import assert_refused as _assert_cli_refused, run_cli
from MnetImSegmentLib.core.commit import (TEMP_PREFIX, OutputTransaction, batch_name_collisions, check_min_size,
                                     check_sha256, clean_stale_temps, is_temp_name, os_error_reason,
                                     output_error, refuse_output_equals_input, signal_cleanup)
from MnetImSegmentLib.core.errors import InputError, OutputError, WeightsError
from MnetImSegmentLib.engine.io import read_image, write_image, write_labelmap
from MnetImSegmentLib.core.validate import (check_finite_tensors, check_geometry, check_volume_geometry, hu_window,
                                       load_card_json, positive_int, probability, sanitize_header_text,
                                       validate_card)
from MnetImSegmentLib.core.volume import Geometry, Volume

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "MnetImSegment"
DEMO_CARD = Path(__file__).resolve().parents[1] / "model_weights" / "Mnet_Im_phantom_demo" / "model.json"

# Oblique, flipped, anisotropic: the read-back compares geometry too.
_C, _S = math.cos(0.3), math.sin(0.3)
OBLIQUE = Geometry(spacing=(0.7, 0.9, 2.5), origin=(-120.5, 80.25, -33.0),
                   direction=(_C, 0.0, _S, 0.0, -1.0, 0.0, _S, 0.0, -_C))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def _temps(folder: Path) -> list[str]:
    return [n for n in _names(folder) if n.startswith(TEMP_PREFIX)]


def _one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    assert message.rstrip().endswith("."), message


def _noisy_mask(shape=(40, 128, 128), seed=0) -> Volume:
    """A mask that compresses badly (~80 KB as .nii.gz): more than a 64 KB tmpfs holds."""
    rng = np.random.default_rng(seed)
    return Volume((rng.random(shape) > 0.5).astype(np.uint8), OBLIQUE)




@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, small_phantom):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_image(small_phantom.ct, path)
    return path


# --------------------------------------------------------------------------- full disk: tmpfs
@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KB tmpfs (root only); the variant is skipped where mounting is not permitted."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount here")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=20)


def _fill(folder: Path) -> Path:
    """Fill a file system to the last byte with one filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_full_disk_tmpfs_labelmap_refused_and_nothing_left(tiny_tmpfs, suffix):
    # ITK's NIfTI writer leaves a short file and reports success here: only the read-back sees it.
    with pytest.raises(OutputError) as info:
        write_labelmap(_noisy_mask(), tiny_tmpfs / f"ctv{suffix}")
    message = str(info.value)
    _one_sentence(message)
    assert f"ctv{suffix}" in message and "full" in message
    assert _names(tiny_tmpfs) == []


def test_full_disk_tmpfs_cli_exits_nonzero(tiny_tmpfs, ct_file, tiny_weights, capsys):
    filler = _fill(tiny_tmpfs)
    code, out, err = run_cli(["segment", ct_file, "-o", tiny_tmpfs / "ctv.nii.gz", "--weights", tiny_weights,
                              "--device", "cpu", "--threshold", "0.5", "--json"], capsys)
    _assert_cli_refused(code, err, "full")
    assert out == ""
    assert _names(tiny_tmpfs) == [filler.name]


def test_full_disk_on_the_probability_commits_neither_output(tiny_tmpfs, ct_file, tiny_weights, tmp_path, capsys):
    # The labelmap fits (another disk); the probability map does not: all or nothing.
    _fill(tiny_tmpfs)
    label = tmp_path / "ctv.nii.gz"
    code, _, err = run_cli(["segment", ct_file, "-o", label, "--probability", tiny_tmpfs / "prob.nii.gz",
                            "--weights", tiny_weights, "--device", "cpu", "--threshold", "0.5"], capsys)
    _assert_cli_refused(code, err, "prob.nii.gz")
    assert not label.exists() and _temps(tmp_path) == []
    assert _names(tiny_tmpfs) == ["filler"]


# --------------------------------------------------------------------------- full disk: patched writers
def _patch_sitk_writer(monkeypatch, after_write):
    real = sitk.WriteImage

    def patched(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        after_write(Path(path))

    monkeypatch.setattr(sitk, "WriteImage", patched)


def _raise_enospc_after(n_bytes):
    def after(path: Path):
        with open(path, "r+b") as f:
            f.truncate(n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return after


def _silently_truncate(n_bytes):
    def after(path: Path):
        with open(path, "r+b") as f:
            f.truncate(n_bytes)
    return after


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("fault", ["enospc", "silent-truncation"])
def test_patched_full_disk_writer(monkeypatch, tmp_path, suffix, fault):
    after = _raise_enospc_after(1000) if fault == "enospc" else _silently_truncate(1000)
    _patch_sitk_writer(monkeypatch, after)
    with pytest.raises(OutputError) as info:
        write_labelmap(_noisy_mask((8, 32, 32)), tmp_path / f"ctv{suffix}")
    message = str(info.value)
    _one_sentence(message)
    assert f"ctv{suffix}" in message and "nothing was written" in message
    if fault == "enospc":
        assert "disk is full" in message
    else:
        assert "read back" in message
    assert _names(tmp_path) == []


def test_patched_itk_runtime_error_names_the_final_path(monkeypatch, tmp_path):
    def patched(image, path, *args, **kwargs):
        raise RuntimeError(f"Exception thrown in SimpleITK ImageFileWriter_Execute: itkImageIO\n"
                           f"ImageIO(0x55): File cannot be written: {path} Reason: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", patched)
    with pytest.raises(OutputError) as info:
        write_labelmap(_noisy_mask((8, 32, 32)), tmp_path / "ctv.mha")
    _one_sentence(str(info.value))
    assert "disk is full" in str(info.value) and TEMP_PREFIX not in str(info.value)
    assert _names(tmp_path) == []


def test_patched_full_disk_cli(monkeypatch, ct_file, tiny_weights, tmp_path, capsys):
    _patch_sitk_writer(monkeypatch, _silently_truncate(300))
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_cli(["segment", ct_file, "-o", out / "ctv.nii.gz", "--probability", out / "p.nii.gz",
                                 "--weights", tiny_weights, "--device", "cpu", "--threshold", "0.5", "--json"],
                                capsys)
    _assert_cli_refused(code, err, "read back")
    assert stdout == "" and _names(out) == []


class _FullDiskFile:
    """A file object that raises ENOSPC once ``limit`` bytes were written (a Python writer's view)."""

    def __init__(self, path, limit):
        self._f = open(path, "wb")
        self._left = limit

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_python_writer_enospc_through_a_transaction(tmp_path):
    with pytest.raises(OutputError) as info:
        with OutputTransaction() as tx:
            tmp = tx.path_for(tmp_path / "report.json")
            with _FullDiskFile(tmp, limit=10) as f:
                f.write(b'{"a": "' + b"x" * 100 + b'"}')
    message = str(info.value)
    _one_sentence(message)
    assert "report.json" in message and "disk is full" in message
    assert _names(tmp_path) == []


# --------------------------------------------------------------------------- corrupt read-back
@pytest.mark.parametrize("corruption", ["flip-voxel", "shift-origin", "empty"])
def test_corrupt_readback_is_caught_and_nothing_committed(monkeypatch, tmp_path, corruption):
    mask = _noisy_mask((6, 24, 20))

    def corrupt(path: Path):
        if corruption == "empty":
            path.write_bytes(b"")
            return
        image = sitk.ReadImage(str(path))
        if corruption == "flip-voxel":
            array = sitk.GetArrayFromImage(image)
            array[3, 10, 7] ^= 1
            other = sitk.GetImageFromArray(array)
            other.CopyInformation(image)
            image = other
        else:
            image.SetOrigin(tuple(o + 0.5 for o in image.GetOrigin()))
        writer = sitk.ImageFileWriter()  # not the patched sitk.WriteImage
        writer.SetFileName(str(path))
        writer.Execute(image)

    _patch_sitk_writer(monkeypatch, corrupt)
    with pytest.raises(OutputError) as info:
        write_labelmap(mask, tmp_path / "ctv.nii.gz")
    _one_sentence(str(info.value))
    assert "read back" in str(info.value)
    assert _names(tmp_path) == []


def test_good_write_reads_back_exactly_with_oblique_geometry(tmp_path):
    mask = _noisy_mask((6, 24, 20))
    write_labelmap(mask, tmp_path / "ctv.nii.gz")
    back = read_image(tmp_path / "ctv.nii.gz")
    assert np.array_equal(back.array, mask.array) and back.geometry.allclose(OBLIQUE, atol=1e-4)
    prob = Volume(np.random.default_rng(1).random((6, 24, 20)).astype(np.float32), OBLIQUE)
    write_image(prob, tmp_path / "p.nrrd")
    assert np.array_equal(read_image(tmp_path / "p.nrrd").array, prob.array)
    assert _temps(tmp_path) == []


def test_a_sheared_orientation_is_never_silently_straightened(tmp_path):
    direction = np.eye(3)
    direction[:, 1] = (0.01, math.sqrt(1 - 1e-4), 0.0)  # unit columns, 0.6 degrees of shear between i and j:
    # NIfTI would store the nearest rotation instead
    mask = Volume(np.ones((3, 4, 5), np.uint8), Geometry((0.7, 0.7, 3.0), (10.0, -20.0, 30.0), direction.ravel()))
    with pytest.raises(OutputError, match="NIfTI cannot hold a sheared direction"):
        write_labelmap(mask, tmp_path / "ctv.nii.gz")
    assert _names(tmp_path) == []
    write_labelmap(mask, tmp_path / "ctv.nrrd")  # NRRD keeps it exactly
    assert np.allclose(sitk.ReadImage(str(tmp_path / "ctv.nrrd")).GetDirection(), direction.ravel(), atol=1e-9)
    # ...and a sheared image is never taken as a CT: its voxels would be placed wrongly
    with pytest.raises(InputError, match="not orthonormal"):
        read_image(tmp_path / "ctv.nrrd")


def test_image_writer_refuses_two_file_formats(tmp_path):
    with pytest.raises(OutputError, match="use .nii"):
        write_image(_noisy_mask((2, 4, 4)), tmp_path / "p.mhd")
    assert _names(tmp_path) == []


# --------------------------------------------------------------------------- all or none
def test_second_output_taken_meanwhile_removes_the_first(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with pytest.raises(OutputError, match="already exists"):
        with OutputTransaction() as tx:
            tx.path_for(a).write_bytes(b"A" * 100)
            tx.path_for(b).write_bytes(b"B" * 100)
            b.write_bytes(b"someone else's")  # another run wins the race for b
    assert not a.exists() and b.read_bytes() == b"someone else's"
    assert _temps(tmp_path) == []


def test_overwrite_failure_restores_every_old_file(tmp_path, monkeypatch):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst, *args, **kwargs):
        calls.append(dst)
        if Path(dst) == b:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError) as info:
        with OutputTransaction(overwrite=True) as tx:
            tx.path_for(a).write_bytes(b"new a")
            tx.path_for(b).write_bytes(b"new b")
    monkeypatch.setattr(os, "replace", real_replace)
    _one_sentence(str(info.value))
    assert "input/output error" in str(info.value)
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert _names(tmp_path) == ["a.bin", "b.bin"]


def test_overwrite_replaces_all_and_leaves_no_backup(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"old")
    with OutputTransaction(overwrite=True) as tx:
        tx.path_for(a).write_bytes(b"new")
        d = tx.dir_for(tmp_path / "rt")
        (d / "RS.dcm").write_bytes(b"x")
    assert a.read_bytes() == b"new" and _names(tmp_path) == ["a.bin", "rt"]


def test_file_systems_without_hard_links_still_never_replace(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")  # what vfat answers to link()

    monkeypatch.setattr(os, "link", no_links)
    with OutputTransaction() as tx:
        tx.path_for(tmp_path / "a.bin").write_bytes(b"mine")
    assert (tmp_path / "a.bin").read_bytes() == b"mine" and _names(tmp_path) == ["a.bin"]
    with pytest.raises(OutputError, match="already exists"):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "b.bin").write_bytes(b"mine")
            (tmp_path / "b.bin").write_bytes(b"theirs")  # created meanwhile: the O_EXCL claim fails
    assert (tmp_path / "b.bin").read_bytes() == b"theirs" and _names(tmp_path) == ["a.bin", "b.bin"]
    with OutputTransaction(overwrite=True) as tx:  # no backup possible: replaced, nothing left over
        tx.path_for(tmp_path / "b.bin").write_bytes(b"new")
    assert (tmp_path / "b.bin").read_bytes() == b"new" and _names(tmp_path) == ["a.bin", "b.bin"]


def test_failed_check_commits_nothing(tmp_path):
    with pytest.raises(OutputError, match="checksum"):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.bin").write_bytes(b"abc")
            tx.verify(tmp_path / "a.bin", check_sha256(hashlib.sha256(b"abc").hexdigest()))
            tx.path_for(tmp_path / "b.bin").write_bytes(b"abd")
            tx.verify(tmp_path / "b.bin", check_sha256(hashlib.sha256(b"abc").hexdigest()))
    assert _names(tmp_path) == []


def test_exception_in_the_block_removes_everything(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.bin").write_bytes(b"abc")
            tx.dir_for(tmp_path / "dicom")
            1 / 0
    assert _names(tmp_path) == []


def test_directory_outputs_commit_without_replacing(tmp_path):
    final = tmp_path / "rtstruct"
    with OutputTransaction() as tx:
        d = tx.dir_for(final)
        (d / "sub").mkdir()
        (d / "sub" / "RS.dcm").write_bytes(b"dicom")
    assert (final / "sub" / "RS.dcm").read_bytes() == b"dicom"
    with pytest.raises(OutputError, match="already exists"):
        with OutputTransaction() as tx:
            tx.dir_for(final)
    # Created meanwhile by another run (after planning): refused at commit, the other's kept.
    other = tmp_path / "seg"
    with pytest.raises(OutputError, match="already exists"):
        with OutputTransaction() as tx:
            (tx.dir_for(other) / "SEG.dcm").write_bytes(b"mine")
            other.mkdir()
            (other / "theirs").write_bytes(b"theirs")
    assert _names(other) == ["theirs"] and _temps(tmp_path) == []


def test_empty_or_short_output_is_refused(tmp_path):
    with pytest.raises(OutputError, match="empty"):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.nii.gz")
    with pytest.raises(OutputError, match="3 bytes, expected at least 10"):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.nii.gz").write_bytes(b"abc")
            tx.verify(tmp_path / "a.nii.gz", check_min_size(10))
    assert _names(tmp_path) == []


def test_planning_refusals_are_one_sentence(tmp_path):
    (tmp_path / "exists.nii.gz").write_bytes(b"x")
    cases = [
        (tmp_path / "exists.nii.gz", "already exists"),
        (tmp_path / "nofolder" / "a.nii.gz", "does not exist"),
        (tmp_path / ("x" * 300 + ".nii.gz"), "too long"),
        (Path("/proc/ctv.nii.gz"), "/proc/ctv.nii.gz"),
    ]
    for path, match in cases:
        with pytest.raises(OutputError) as info:
            with OutputTransaction() as tx:
                tx.path_for(path)
        _one_sentence(str(info.value))
        assert match in str(info.value)
    with pytest.raises(OutputError, match="same file"):
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.nii")
            tx.path_for(tmp_path / "." / "a.nii")
    assert _names(tmp_path) == ["exists.nii.gz"]


@pytest.mark.parametrize("code,words", [
    (errno.ENOSPC, "disk is full"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only"),
    (errno.ENAMETOOLONG, "too long"), (errno.EDQUOT, "quota"), (errno.EIO, "input/output"),
])
def test_os_errors_become_one_sentence(code, words):
    error = output_error("/data/out/ctv.nii.gz", OSError(code, os.strerror(code)))
    _one_sentence(str(error))
    assert "'/data/out/ctv.nii.gz'" in str(error) and words in str(error)
    assert words in os_error_reason(OSError(code, "x"))


# --------------------------------------------------------------------------- umask
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_outputs_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_labelmap(_noisy_mask((2, 8, 8)), tmp_path / "ctv.nii.gz")
        with OutputTransaction() as tx:
            (tx.dir_for(tmp_path / "dicom") / "a.dcm").write_bytes(b"x")
            tx.path_for(tmp_path / "raw.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "ctv.nii.gz").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "raw.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "dicom").stat().st_mode & 0o777 == 0o777 & ~mask


# --------------------------------------------------------------------------- signals and kill -9
_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from MnetImSegmentLib.core.commit import OutputTransaction
    folder = Path({folder!r})
    try:
        with OutputTransaction() as tx:
            tx.path_for(folder / "a.nii.gz").write_bytes(b"x" * 100000)
            (tx.dir_for(folder / "dicom") / "RS.dcm").write_bytes(b"y" * 1000)
            tx.path_for(folder / "b.nii.gz").write_bytes(b"z" * 10)
            print("BARRIER", flush=True)
            # Short sleeps: a signal landing between print() and a long sleep() would wait for the
            # sleep to end before Python runs its handler (the interpreter checks between bytecodes).
            for _ in range(1200):
                time.sleep(0.05)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


def _start_child(folder: Path) -> subprocess.Popen:
    code = _CHILD.format(root=str(PACKAGE_ROOT), folder=str(folder))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line.strip() == "BARRIER", child.stderr.read()
    return child


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_during_a_write_leaves_nothing(tmp_path, sig):
    child = _start_child(tmp_path)
    assert len(_temps(tmp_path)) == 3  # the scenario is real: temporaries exist at the barrier
    child.send_signal(getattr(signal, sig))
    try:
        out, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"the child ignored {sig}: {err}")
    if sig == "SIGINT":
        assert child.returncode == 130 and "interrupted" in out, err  # KeyboardInterrupt, as before us
    else:
        assert child.returncode == -getattr(signal, sig), err  # died of the signal, as by default
    assert _names(tmp_path) == []


def test_sigkill_leaves_a_stale_temp_that_the_next_transaction_cleans(tmp_path):
    child = _start_child(tmp_path)
    child.kill()
    child.wait(timeout=30)
    stale = _temps(tmp_path)
    assert len(stale) == 3 and all(is_temp_name(n) for n in stale)
    # A temporary of a live process (same host tag) is left alone.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / stale[0].replace(f"-{child.pid}-", f"-{sleeper.pid}-", 1)
        live.write_bytes(b"busy")
        with OutputTransaction() as tx:
            tx.path_for(tmp_path / "a.nii.gz").write_bytes(b"fresh")
        assert _names(tmp_path) == sorted(["a.nii.gz", live.name])
        assert (tmp_path / "a.nii.gz").read_bytes() == b"fresh"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert clean_stale_temps(tmp_path) == [live] and _names(tmp_path) == ["a.nii.gz"]


def test_handlers_installed_only_while_open_and_ignored_signals_stay_ignored(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with OutputTransaction() as tx:
            assert signal.getsignal(signal.SIGINT) is not before
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            tx.path_for(tmp_path / "a.bin").write_bytes(b"a")
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


def test_sigint_cleans_transactions_of_worker_threads(tmp_path):
    import threading

    ready, go = threading.Event(), threading.Event()
    outcome = {}

    def worker():
        try:
            with OutputTransaction() as tx:
                tx.path_for(tmp_path / "case1.nii.gz").write_bytes(b"x" * 1000)
                ready.set()
                go.wait(10)
            outcome["result"] = "committed"
        except OutputError as exc:
            outcome["result"] = str(exc)

    with pytest.raises(KeyboardInterrupt):
        with signal_cleanup():  # a batch installs the handlers once, in the main thread
            thread = threading.Thread(target=worker)
            thread.start()
            assert ready.wait(10)
            assert len(_temps(tmp_path)) == 1
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs in the main thread and raises here
            finally:
                go.set()
                thread.join(10)
    assert "interrupted" in outcome["result"] and _names(tmp_path) == []


# --------------------------------------------------------------------------- concurrent writers
def _race_writer(final, index, barrier, results):
    payload = bytes([65 + index]) * (1 << 20)
    try:
        with OutputTransaction() as tx:
            tx.path_for(final).write_bytes(payload)
            tx.verify(final, check_sha256(hashlib.sha256(payload).hexdigest()))
            barrier.wait(30)  # everyone planned and wrote; now all commit at once
        results.put((index, "ok"))
    except OutputError as exc:
        results.put((index, str(exc)))


def _race_labelmap(final, index, barrier, results):
    mask = _noisy_mask((4, 32, 32), seed=index)
    try:
        with OutputTransaction() as tx:
            write_labelmap(mask, final, tx=tx)
            barrier.wait(30)
        results.put((index, "ok"))
    except OutputError as exc:
        results.put((index, str(exc)))


@pytest.mark.parametrize("writer,n", [(_race_writer, 4), (_race_labelmap, 2)])
def test_concurrent_writers_exactly_one_wins(tmp_path, writer, n):
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    final = tmp_path / "ctv.nii.gz"
    procs = [ctx.Process(target=writer, args=(final, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    winners = [i for i, r in outcome.items() if r == "ok"]
    assert len(winners) == 1, outcome
    for i, r in outcome.items():
        if i != winners[0]:
            assert "already exists" in r
            _one_sentence(r)
    if writer is _race_writer:
        assert final.read_bytes() == bytes([65 + winners[0]]) * (1 << 20)  # intact, not interleaved
    else:
        assert np.array_equal(read_image(final).array, _noisy_mask((4, 32, 32), seed=winners[0]).array)
    assert _names(tmp_path) == ["ctv.nii.gz"]


# --------------------------------------------------------------------------- output = input
@pytest.fixture
def patient(tmp_path, ct_file):
    folder = tmp_path / "patient"
    folder.mkdir()
    ct = folder / "ct.nii.gz"
    ct.write_bytes(ct_file.read_bytes())
    return ct


@pytest.mark.parametrize("how", ["direct", "symlink", "hardlink", "dotted"])
@pytest.mark.parametrize("option", ["-o", "--probability"])
def test_output_equal_to_input_is_refused_even_with_overwrite(patient, tiny_weights, capsys, how, option):
    target = {"direct": lambda: patient,
              "symlink": lambda: (patient.parent / "link.nii.gz").symlink_to(patient) or patient.parent / "link.nii.gz",
              "hardlink": lambda: os.link(patient, patient.parent / "hard.nii.gz") or patient.parent / "hard.nii.gz",
              "dotted": lambda: patient.parent / "." / ".." / patient.parent.name / patient.name}[how]()
    before = _digest(patient)
    names = _names(patient.parent)
    outputs = ["-o", target] if option == "-o" else ["-o", patient.parent / "ctv.nii.gz", "--probability", target]
    code, _, err = run_cli(["segment", patient, *outputs, "--overwrite", "--weights", tiny_weights,
                            "--device", "cpu"], capsys)
    _assert_cli_refused(code, err, "is the input")
    assert _digest(patient) == before and _names(patient.parent) == names


def test_refuse_output_equals_input_cases(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "CT1.dcm").write_bytes(b"dicom")
    os.link(series / "CT1.dcm", tmp_path / "alias.dcm")
    batch = tmp_path / "cts"
    batch.mkdir()
    refusals = [
        ([series / "rt"], [series], "inside the input folder"),          # an output inside a DICOM input
        ([series / "CT1.dcm"], [series], "inside the input folder"),
        ([tmp_path / "alias.dcm"], [series], "link to a file of the input folder"),
        ([batch], [batch], "is the input"),                              # batch output folder = input folder
        ([tmp_path], [series], "holds the input"),                       # replacing it would delete the input
    ]
    for outs, ins, match in refusals:
        with pytest.raises(OutputError) as info:
            refuse_output_equals_input(outs, ins)
        _one_sentence(str(info.value))
        assert match in str(info.value)
    refuse_output_equals_input([tmp_path / "out" / "ctv.seg.nrrd", None], [series, batch])  # fine


def test_batch_name_collisions(tmp_path):
    inputs = [tmp_path / n for n in ("patient.nii.gz", "patient.nrrd", "Other.mha", "other.nii", "solo.nii.gz",
                                     "series_a", "patient.seg.nrrd.d")]
    collisions = batch_name_collisions(inputs)
    assert set(collisions) == {"patient", "other"}
    assert collisions["patient"] == inputs[:2] and collisions["other"] == inputs[2:4]
    assert batch_name_collisions(inputs[4:6]) == {}


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv,match", [
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "0"], "--threshold"),
])
def test_bad_option_values_refused_before_any_work(ct_file, tiny_weights, tmp_path, capsys, argv, match):
    out = tmp_path / "ctv.nii.gz"
    code, _, err = run_cli(["segment", ct_file, "-o", out, "--weights", tiny_weights, *argv], capsys)
    _assert_cli_refused(code, err, match)
    assert _names(tmp_path) == []


def test_option_validators():
    assert positive_int(3, "--workers") == 3 and probability(0.5, "--threshold") == 0.5
    for bad in (0, -1, True, 2.5, "3", float("nan")):
        with pytest.raises(InputError, match="--workers"):
            positive_int(bad, "--workers")
    with pytest.raises(InputError, match="at most 8"):
        positive_int(9, "--workers", maximum=8)
    for bad in (0.0, 1.0, float("nan"), float("inf"), -0.1, None, "0.5"):
        with pytest.raises(InputError):
            probability(bad, "--threshold")
    assert hu_window(-200, 300) == (-200.0, 300.0)
    for lo, hi in ((300, -200), (0, 0), (float("nan"), 10), (0, float("inf"))):
        with pytest.raises(InputError) as info:
            hu_window(lo, hi, "--hu-window")
        _one_sentence(str(info.value))


# --------------------------------------------------------------------------- model cards and weights
@pytest.fixture(scope="module")
def demo_card() -> dict:
    return json.loads(DEMO_CARD.read_text())


def _mutated(card: dict, path: str, value) -> dict:
    card = json.loads(json.dumps(card))
    node, keys = card, path.split(".")
    for key in keys[:-1]:
        node = node[key]
    last = keys[-1]
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        node[name][int(index)] = value
    else:
        node[last] = value
    return card


def test_shipped_and_test_cards_pass(demo_card, tiny_weights):
    assert validate_card(load_card_json(DEMO_CARD.read_bytes(), DEMO_CARD), DEMO_CARD) is not None
    card = tiny_weights / "model.json"
    validate_card(load_card_json(card.read_bytes(), card), card)


@pytest.mark.parametrize("path,value,match", [
    ("threshold", 1e400, "finite"),
    ("threshold", 1.0, "below 1"),
    ("threshold", "0.5", "must be a number"),
    ("threshold", True, "must be a number"),
    ("input.roi.size_px[0]", -80, "at least 8"),
    ("input.roi.spacing_mm[1]", 0.0, "above 0"),
    ("input.roi.z_margin_mm", -5.0, "at least 0"),
    ("input.slices_per_window", 4, "odd"),
    ("input.hu_window", [300.0, -200.0], "low end"),
    ("input.hu_window", [-200.0], "must have 2"),
    ("config.features[0]", -8, "at least 1"),
    ("config.in_channels", 3, "differs from input.slices_per_window"),
    ("config.features", "big", "must be a list"),
    ("name", "Mnet\ndata file: /etc/passwd", "one line"),
    ("name", "x" * 65, "at most 64"),
    ("name", " padded", "one line"),
    ("version", "1.0\u202e", "one line"),
    ("intended_use", "ok\x1b[31mred", "control characters"),
    ("tensors_sha256", "abc", "expected form"),
    ("postprocessing.largest_component", "yes", "true or false"),
])
def test_malformed_card_values(demo_card, path, value, match):
    card = _mutated(demo_card, path, value)
    with pytest.raises(WeightsError) as info:
        validate_card(card, "w/model.json")
    _one_sentence(str(info.value))
    assert match in str(info.value) and "'w/model.json'" in str(info.value)


@pytest.mark.parametrize("text,match", [
    ('{"threshold": NaN}', "not a finite number"),
    ('{"threshold": -Infinity}', "not a finite number"),
    ('{"a": 1, "a": 2}', "appears twice"),
    ("[" * 100000 + "]" * 100000, "levels deep"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", "levels deep"),
    ('{"pad": "' + "x" * (2 << 20) + '"}', "bytes"),
    ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (b"\xff\xfe{}", "UTF-8"),
])
def test_malformed_card_files(text, match):
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_card_json(text, "w/model.json")
    assert time.perf_counter() - t0 < 2.0  # bounded work, no RecursionError
    _one_sentence(str(info.value))
    assert match in str(info.value)


def test_required_fields_and_deep_extra(demo_card):
    card = dict(demo_card)
    del card["threshold"]
    with pytest.raises(WeightsError, match="lacks the field"):
        validate_card(card)
    deep = {"x": 1}
    for _ in range(20):
        deep = {"x": deep}
    with pytest.raises(WeightsError, match="nested"):
        validate_card(dict(demo_card, training=deep))
    with pytest.raises(WeightsError, match="finite"):
        validate_card(dict(demo_card, validation={"dice": float("nan")}))


def test_nan_weights_with_matching_hash_are_refused(tmp_path, tiny_weights, ct_file, capsys):
    import torch

    from MnetImSegmentLib.engine.weights import load_weights, save_weights

    model, card = load_weights(tiny_weights)
    check_finite_tensors(model.state_dict(), "tiny")  # clean weights pass
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).view(-1)[3] = float("nan")
    raw = {k: v for k, v in card.raw.items() if k != "tensors_sha256"}
    with pytest.raises(WeightsError, match="NaN"):  # never saved...
        save_weights(model, tmp_path / "refused", raw)
    assert not (tmp_path / "refused").exists()
    # ...and never loaded, even with a card whose SHA-256 matches the NaN tensors (written by hand)
    from safetensors.torch import save_file

    folder = tmp_path / "nan"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    raw["tensors_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(WeightsError) as info:
        load_weights(folder)
    _one_sentence(str(info.value))
    assert "1 NaN or infinite value" in str(info.value)
    code, _, err = run_cli(["segment", ct_file, "-o", tmp_path / "x.nii.gz", "--weights", folder], capsys)
    _assert_cli_refused(code, err, "NaN")
    assert not (tmp_path / "x.nii.gz").exists()
    with pytest.raises(WeightsError, match="infinite"):
        check_finite_tensors({"w": np.array([1.0, np.inf], np.float32), "n": np.array([1, 2])})


# --------------------------------------------------------------------------- header strings
def test_sanitize_header_text():
    evil = "Mnet_Im\ndata file: /etc/passwd\r\n\x00\u2028\u202eend"
    clean = sanitize_header_text(evil)
    assert clean == "Mnet_Im data file: /etc/passwd end"
    assert all(c.isprintable() for c in clean)
    assert sanitize_header_text("a\\b", dicom=True) == "a/b"
    assert sanitize_header_text("x" * 100, max_len=64) == "x" * 64
    assert sanitize_header_text("Größe", ascii_only=True) == "Gr??e"
    assert sanitize_header_text("  spaced \t out  ") == "spaced out"


# --------------------------------------------------------------------------- geometry
def test_geometry_checks_accept_oblique_and_flipped():
    check_volume_geometry(OBLIQUE)
    check_geometry((0.5, 0.5, 3.0), (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # LPS <-> RAS flip
    check_geometry((1, 1, 1), (0, 0, 0), (0, 0, 1, 1, 0, 0, 0, 1, 0))  # permuted axes (sagittal)


@pytest.mark.parametrize("spacing,origin,direction,match", [
    ((1, 1, float("nan")), (0, 0, 0), np.eye(3).ravel(), "spacing"),
    ((1, 0, 1), (0, 0, 0), np.eye(3).ravel(), "spacing"),
    ((1, 1, 1), (0, float("inf"), 0), np.eye(3).ravel(), "origin"),
    ((1, 1, 1), (0, 0, 0), [1, 0, 0, 0, float("nan"), 0, 0, 0, 1], "NaN"),
    ((1, 1, 1), (0, 0, 0), [1, 0.2, 0, 0, 1, 0, 0, 0, 1], "not orthonormal"),
    ((1, 1, 1), (0, 0, 0), [2, 0, 0, 0, 1, 0, 0, 0, 1], "not orthonormal"),
    ((1, 1), (0, 0, 0), np.eye(3).ravel(), "no 3D geometry"),
])
def test_geometry_checks_refuse(spacing, origin, direction, match):
    with pytest.raises(InputError) as info:
        check_geometry(spacing, origin, direction, "'scan.nii'")
    _one_sentence(str(info.value))
    assert match in str(info.value)


def test_nan_in_a_nifti_sform_is_caught(tmp_path, capsys):
    import struct

    path = tmp_path / "scan.nii"
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))
    header = bytearray(path.read_bytes())
    struct.pack_into("<f", header, 280 + 12, float("nan"))  # srow_x[3]: the sform's x offset
    path.write_bytes(bytes(header))
    with pytest.raises(InputError, match="origin") as info:
        read_image(path)
    _one_sentence(str(info.value))
    code, _, err = run_cli(["segment", path, "-o", tmp_path / "x.nii.gz"], capsys)
    _assert_cli_refused(code, err, "must be finite")
    assert not (tmp_path / "x.nii.gz").exists()
