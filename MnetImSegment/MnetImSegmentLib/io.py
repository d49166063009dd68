"""Reading CTs and writing segmentations, always with the input's exact geometry.

Read: a DICOM series folder (through :mod:`.dicom`: the CT series is chosen by modality; several CT
series are listed so the user can pick one with ``series_uid``; slices sorted by position along the
slice normal; irregular spacing and gantry tilt refused explicitly), or an image file (NIfTI, NRRD,
MHA/MHD).

Write: ``.seg.nrrd`` (a Slicer segmentation with one segment ``CTV``: name, colour, terminology and
tags naming the model, version and threshold; written with slicerio, Slicer's own helper), or a
labelmap (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``). Every write goes to a temporary file in the
destination folder that is renamed into place only when complete, so a failed or interrupted run
never leaves a half-written file, and an existing file is replaced only if ``overwrite`` is set.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError, OutputError
from .volume import Volume

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
SEGMENTATION_SUFFIX = ".seg.nrrd"

# Slicer's colour and terminology for a clinical target volume (SCT 228793007 "Clinical target volume").
CTV_COLOR = (0.902, 0.376, 0.118)
CTV_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list"
                   "~SCT^91723000^Anatomical structure~SCT^228793007^Clinical target volume~^^~"
                   "Anatomic codes - DICOM master list~^^~^^")


def suffix_of(path) -> str:
    name = Path(path).name.lower()
    for s in (SEGMENTATION_SUFFIX, ".nii.gz") + IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


# --------------------------------------------------------------------------- reading
def read_image(path, series_uid: Optional[str] = None) -> Volume:
    """Read a CT from a DICOM series folder or an image file (see module docstring)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"'{path}' does not exist.")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        if dim == 2:
            raise InputError(f"'{path}' is a 2D image; a 3D CT volume is needed.")
        image = reader.Execute()
    except RuntimeError:
        # ITK's own message names C++ classes and addresses: no help to a clinical user.
        raise InputError(f"'{path}' is not a readable image volume (unknown format, truncated or corrupt).") from None
    _check_complete(path, image)
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"'{path}' is a {image.GetDimension()}D image; a 3D CT volume is needed.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"'{path}' has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector image); a scalar CT is needed.")
    return Volume.from_sitk(image)


def _check_complete(path: Path, image) -> None:
    """Refuse truncated files: ITK fills a short data block silently instead of failing."""
    import gzip
    import zlib

    expected = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                total = 0
                while chunk := f.read(1 << 22):
                    total += len(chunk)
        except (EOFError, OSError, zlib.error):
            total = -1
        if total < expected:
            raise InputError(f"'{path}' is truncated or corrupt (its compressed data ends early).")
        return
    head = path.read_bytes()[:4096] if path.stat().st_size else b""
    text = head.decode("latin-1").lower()
    compressed = ("encoding: gz" in text or "encoding: gzip" in text or "encoding: bz" in text
                  or "compresseddata = true" in text)
    if not compressed and name.endswith((".nii", ".nrrd", ".mha")) and path.stat().st_size < expected:
        raise InputError(f"'{path}' is truncated: it holds fewer bytes than its header announces.")


def read_dicom_series(folder, series_uid: Optional[str] = None) -> Volume:
    """Read one CT series from a folder tree.

    One reader serves segmentation, RT import and RT export (:mod:`.dicom`), so a series is accepted
    or refused by the same checks everywhere: the CT series chosen by modality (several are listed),
    slices sorted along the normal, duplicate or missing slices, gantry-tilt shear, mixed sizes and
    undecodable slices refused in one sentence.
    """
    from .dicom import find_ct_series

    return find_ct_series(folder, series_uid).read_volume()


# --------------------------------------------------------------------------- writing
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


def write_labelmap(mask: Volume, path, overwrite: bool = False) -> Path:
    """A uint8 labelmap (1 = CTV) with the mask's geometry."""
    import SimpleITK as sitk

    if suffix_of(path) not in LABELMAP_SUFFIXES:
        raise OutputError(f"Cannot write a labelmap to '{path}': use {', '.join(LABELMAP_SUFFIXES)} or {SEGMENTATION_SUFFIX}.")
    with atomic_path(path, overwrite) as tmp:
        sitk.WriteImage(mask.with_array(mask.array.astype(np.uint8)).to_sitk(), str(tmp), useCompression=True)
    return Path(path)


def write_image(volume: Volume, path, overwrite: bool = False) -> Path:
    """Any volume (CT, probability map) as NIfTI / NRRD / MHA with its geometry."""
    import SimpleITK as sitk

    with atomic_path(path, overwrite) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
    return Path(path)


def segmentation_tags(model: str = "", threshold: Optional[float] = None, extra: Optional[dict] = None) -> dict:
    tags = {"MnetImSegment.Model": model}
    if threshold is not None:
        tags["MnetImSegment.Threshold"] = f"{threshold:.4g}"
    tags.update(extra or {})
    return tags


def write_segmentation(mask: Volume, path, model: str = "", threshold: Optional[float] = None,
                       overwrite: bool = False, segment_name: str = "CTV") -> Path:
    """A Slicer ``.seg.nrrd`` with one segment (label 1) on the mask's exact grid."""
    import slicerio

    if suffix_of(path) != SEGMENTATION_SUFFIX:
        raise OutputError(f"A Slicer segmentation must be written to a '{SEGMENTATION_SUFFIX}' file, not '{path}'.")
    g = mask.geometry
    ijk_to_lps = g.index_to_physical_matrix()
    tags = segmentation_tags(model, threshold)
    tags["TerminologyEntry"] = CTV_TERMINOLOGY
    segmentation = {
        "voxels": np.ascontiguousarray(mask.array.astype(np.uint8).transpose(2, 1, 0)),  # slicerio wants (i, j, k)
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "segments": [{
            "id": "CTV", "labelValue": 1, "layer": 0, "name": segment_name, "nameAutoGenerated": False,
            "color": list(CTV_COLOR), "colorAutoGenerated": False, "tags": tags,
        }],
    }
    with atomic_path(path, overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return Path(path)


def read_segmentation_mask(path, segment_name: str = "CTV") -> Volume:
    """The named segment of a ``.seg.nrrd`` as a (z, y, x) uint8 mask with its geometry."""
    import slicerio

    from .volume import Geometry

    seg = slicerio.read_segmentation(str(path))
    segment = slicerio.segment_from_name(seg, segment_name)
    vox = np.asarray(seg["voxels"])
    if vox.ndim == 4:
        vox = vox[segment["layer"]]
    mask = (vox == segment["labelValue"]).astype(np.uint8).transpose(2, 1, 0)
    m = np.asarray(seg["ijkToLPS"], float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    return Volume(np.ascontiguousarray(mask), Geometry(spacing, m[:3, 3], (m[:3, :3] / spacing).ravel()))
