"""File names and atomic writes: the one temp-then-rename helper every writer uses.

Every output goes to a temporary file (or folder) next to its destination and is renamed into place
only when complete, so a failed or interrupted run never leaves a half-written file, and an existing
output is replaced only when ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import OutputError

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
def atomic_path(path, overwrite: bool = False):
    """Yield a temporary path next to ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"'{path}' already exists; choose another output or allow overwriting.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"The output folder '{parent}' does not exist.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"The output folder '{parent}' is not writable.")
    suffix = suffix_of(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write in '{parent}' ({exc.strerror}).") from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Writing '{path}' failed ({exc.strerror or exc}); nothing was written.") from None
    except RuntimeError as exc:  # SimpleITK reports I/O failures as RuntimeError
        raise OutputError(f"Writing '{path}' failed ({str(exc).strip().splitlines()[-1][:160]}); nothing was written.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move a completed temporary folder into place, replacing an old one only once the new one is complete."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.rmdir(old)
        os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


@contextmanager
def atomic_dir(folder, prefix: str | None = None):
    """Yield a temporary folder next to ``folder``; it replaces ``folder`` only if the block succeeds.

    The caller checks whether ``folder`` may be replaced; a failed block leaves nothing behind.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_files(out_dir: Path, render: Callable[[Path], list], previous: list[str], prefix: str = ".mnetim-") -> list[str]:
    """Render files into a temporary folder inside ``out_dir``, then move each into place.

    For a folder of results that other files share: only the files ``render`` returns are replaced,
    and the files of the ``previous`` run that this one does not write again are removed (they would
    be stale). A failure leaves the folder as it was (and removes it if this call created it).
    """
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    except OSError as exc:
        raise OutputError(f"Cannot write in '{out_dir}' ({exc.strerror or exc}).") from None
    try:
        try:
            written = render(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # the folder this run made, empty again: a failed run leaves nothing
            raise
        for name in written:
            os.replace(tmp / name, out_dir / name)
        for name in set(previous) - set(written):
            (out_dir / name).unlink(missing_ok=True)
        return written
    except OSError as exc:
        raise OutputError(f"Writing the results to '{out_dir}' failed ({exc.strerror or exc}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
