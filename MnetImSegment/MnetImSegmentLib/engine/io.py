"""Reading CTs and writing segmentations, always with the input's exact geometry.

Read: a DICOM series folder (through :mod:`..dicomrt.ct_series`: the CT series is chosen by modality; several CT
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

from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import InputError, OutputError
from ..core.files import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, atomic_path, suffix_of
from ..core.style import CTV_COLOR, CTV_NAME, CTV_TERMINOLOGY, segmentation_tags
from ..core.volume import Geometry, Volume
from ..dicomrt.ct_series import find_ct_series


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

    One reader serves segmentation, RT import and RT export (:mod:`..dicomrt.ct_series`), so a series is accepted
    or refused by the same checks everywhere: the CT series chosen by modality (several are listed),
    slices sorted along the normal, duplicate or missing slices, gantry-tilt shear, mixed sizes and
    undecodable slices refused in one sentence.
    """
    return find_ct_series(folder, series_uid).read_volume()


# --------------------------------------------------------------------------- writing
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


def write_segmentation(mask: Volume, path, model: str = "", threshold: Optional[float] = None,
                       overwrite: bool = False, segment_name: str = CTV_NAME) -> Path:
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


def mask_kind(path) -> str:
    """``"segmentation"`` (``.seg.nrrd``) or ``"labelmap"``: how a mask is written to ``path``.

    Raises:
        OutputError: The suffix is neither.
    """
    suffix = suffix_of(path)
    if suffix == SEGMENTATION_SUFFIX:
        return "segmentation"
    if suffix in LABELMAP_SUFFIXES:
        return "labelmap"
    raise OutputError(f"Cannot tell the output format from '{path}': use .seg.nrrd (Slicer segmentation), "
                      ".nii.gz, .nii, .nrrd or .mha (labelmap).")


def write_mask(mask: Volume, path, overwrite: bool = False, model: str = "", threshold: Optional[float] = None) -> Path:
    """A mask as a Slicer segmentation or a labelmap, as the suffix of ``path`` says (:func:`mask_kind`)."""
    if mask_kind(path) == "segmentation":
        return write_segmentation(mask, path, model=model, threshold=threshold, overwrite=overwrite)
    return write_labelmap(mask, path, overwrite=overwrite)


def read_segmentation_mask(path, segment_name: str = CTV_NAME) -> Volume:
    """The named segment of a ``.seg.nrrd`` as a (z, y, x) uint8 mask with its geometry."""
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    segment = slicerio.segment_from_name(seg, segment_name)
    vox = np.asarray(seg["voxels"])
    if vox.ndim == 4:
        vox = vox[segment["layer"]]
    mask = (vox == segment["labelValue"]).astype(np.uint8).transpose(2, 1, 0)
    m = np.asarray(seg["ijkToLPS"], float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    return Volume(np.ascontiguousarray(mask), Geometry(spacing, m[:3, 3], (m[:3, :3] / spacing).ravel()))
