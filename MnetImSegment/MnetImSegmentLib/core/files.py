"""File names, and the doors every writer uses onto the one commit path (:mod:`.commit`).

Every output goes to a temporary file (or folder) next to its destination, is flushed, read back and
verified, and only then created at its final name (never replacing an existing output unless
``overwrite`` is set), so a failed, interrupted or disk-full run never leaves a half-written file.
:func:`atomic_path`, :func:`atomic_dir`, :func:`write_text` and :func:`publish_files` are all built
on :class:`~.commit.OutputTransaction`; there is no second way to put an output on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from .commit import OutputTransaction, check_sha256, output_error


IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
SEGMENTATION_SUFFIX = ".seg.nrrd"
# Files a mask can be read from: a Slicer segmentation or any image.
MASK_SUFFIXES = (SEGMENTATION_SUFFIX,) + IMAGE_SUFFIXES


def suffix_of(path) -> str:
    """The file type suffix of ``path``, double suffixes (``.seg.nrrd``, ``.nii.gz``) included, lower case."""
    name = Path(path).name.lower()
    for s in (SEGMENTATION_SUFFIX, ".nii.gz") + IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


@contextmanager
def atomic_path(path, overwrite: bool = False, tx=None, check: Optional[Callable[[Path], object]] = None):
    """Yield a temporary path next to ``path``; it becomes ``path`` only when the output commits.

    A thin door onto :class:`~.commit.OutputTransaction`, the one commit path: with ``tx`` the file
    joins the caller's transaction (committed together with the run's other outputs), else it
    commits alone when the block ends. ``check(temp)`` is its read-back verification (see
    :meth:`~.commit.OutputTransaction.verify`); without one, an empty file is refused.
    """
    with transaction(tx, overwrite) as t:
        tmp = t.path_for(path)
        yield tmp
        if check is not None:
            t.verify(path, check)


@contextmanager
def atomic_dir(folder, overwrite: bool = False, tx=None, check: Optional[Callable[[Path], object]] = None):
    """Yield a new temporary folder next to ``folder``; it becomes ``folder`` when the output commits.

    As :func:`atomic_path`, for a folder of files (a DICOM series, a weights folder, a dataset tree).
    """
    with transaction(tx, overwrite) as t:
        tmp = t.dir_for(folder)
        yield tmp
        if check is not None:
            t.verify(folder, check)


@contextmanager
def transaction(tx=None, overwrite: bool = False):
    """The caller's transaction (it commits), or a new one that commits this output alone.

    Writers take an optional ``tx`` so several outputs of one run commit together::

        with transaction(tx, overwrite) as t:
            tmp = t.path_for(path)
            ...write tmp...
            t.verify(path, readback_check)
    """

    if tx is not None:
        yield tx
        return
    with OutputTransaction(overwrite=overwrite) as own:
        yield own


def write_text(path, text: str, overwrite: bool = False, tx=None) -> Path:
    """A text file (JSON, CSV, Markdown report) through the commit path, read back by checksum."""

    data = text.encode("utf-8")
    with atomic_path(path, overwrite, tx=tx, check=check_sha256(hashlib.sha256(data).hexdigest())) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def publish_files(out_dir: Path, render: Callable[[Path], list], previous: list[str], prefix: str = ".mnetim-") -> list[str]:
    """Render files into a scratch folder inside ``out_dir``, then commit them all together.

    For a folder of results that other files share: only the files ``render`` returns are replaced
    (one transaction: every file is read back by checksum and placed, or none), and the files of the
    ``previous`` run that this one does not write again are removed (they would be stale). A failure
    leaves the folder as it was (and removes it if this call created it).
    """

    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    except OSError as exc:
        raise output_error(out_dir, exc) from None
    try:
        written = render(scratch)
        with OutputTransaction(overwrite=True) as tx:
            for name in written:
                data = (scratch / name).read_bytes()
                tmp = tx.path_for(out_dir / name)
                with open(tmp, "wb") as f:
                    f.write(data)
                tx.verify(out_dir / name, check_sha256(hashlib.sha256(data).hexdigest()))
        for name in set(previous) - set(written):
            (out_dir / name).unlink(missing_ok=True)
        return written
    except OSError as exc:
        raise output_error(out_dir, exc) from None
    except BaseException:
        if created:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # the folder this run made, empty again: a failed run leaves nothing
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
