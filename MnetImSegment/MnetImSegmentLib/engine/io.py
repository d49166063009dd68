"""Reading CTs and writing segmentations, always with the input's exact geometry.

Read: a DICOM series folder (through :mod:`..dicomrt.ct_series`: the CT series is chosen by modality; several CT
series are listed so the user can pick one with ``series_uid``; slices sorted by position along the
slice normal; irregular spacing and gantry tilt refused explicitly), or an image file (NIfTI, NRRD,
MHA/MHD).

Write: ``.seg.nrrd`` (a Slicer segmentation with one segment ``CTV``: name, colour, terminology and
tags naming the model, version and threshold; written with slicerio, Slicer's own helper), or a
labelmap (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``). Every write goes through the one commit path
(:mod:`..core.commit`): a temporary file in the destination folder, flushed, read back and compared
voxel by voxel, then created at its name without replacing anything unless ``overwrite`` is set; so
a failed, interrupted or disk-full run never leaves a half-written file. Writers take ``tx`` to
commit together with the run's other outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import InputError, OutputError
from ..core.commit import disk_full_hint, input_error, output_error
from ..core.files import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, suffix_of, transaction
from ..core.style import CTV_COLOR, CTV_NAME, CTV_TERMINOLOGY, segmentation_tags
from ..core.validate import check_geometry, sanitize_header_text
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
    if not path.is_file():  # a FIFO would block forever, a device (/dev/zero) never ends
        raise InputError(f"'{path}' is not a regular file (a pipe, device or socket); a CT image file is needed.")
    try:
        return _read_image_file(path)
    except OSError as exc:  # permission denied, I/O error...: one sentence, not a traceback
        raise input_error(path, exc) from None


def _read_image_file(path: Path) -> Volume:
    import SimpleITK as sitk

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
    # A NaN in a NIfTI sform reaches here as a NaN origin or direction: every voxel would be nowhere.
    check_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), f"'{path}'")
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
# Formats a single file holds completely (.mhd would put its voxels in a second .raw file that the
# output transaction does not know about).
IMAGE_WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _sitk_write(image, tmp: Path, final: Path) -> None:
    """``sitk.WriteImage`` with ITK's I/O exceptions turned into one sentence about ``final``."""
    import SimpleITK as sitk

    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as exc:  # SimpleITK reports I/O failures as RuntimeError
        text = str(exc).replace(str(tmp), str(final))
        reason = "the disk is full" if "No space left" in text else text.strip().splitlines()[-1][:160].strip()
        raise OutputError(f"Writing '{final}' failed ({reason}){disk_full_hint(Path(final).parent)}; "
                          "nothing was written.") from None


def _geometry_problem(spacing, origin, direction, geometry, nifti: bool) -> Optional[str]:
    if not (np.allclose(spacing, geometry.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(origin, geometry.origin, rtol=1e-6, atol=1e-3)):
        return "its spacing or origin differs from the one written"
    # NIfTI coerces a direction that is not orthonormal (DICOM cosines rounded) to the nearest
    # orthonormal one: accepted within the tolerance validate.check_geometry allows on input
    # (1e-3, 0.25 mm at 250 mm from the origin); beyond it the file would lie about the position.
    if not np.allclose(np.ravel(direction), np.ravel(geometry.direction), atol=1e-3):
        if nifti:
            return "its orientation differs: NIfTI cannot hold a sheared direction matrix, .nrrd can"
        return "its orientation differs from the one written"
    return None


def _voxel_problem(back: np.ndarray, array: np.ndarray) -> Optional[str]:
    if back.shape != array.shape:
        return f"its size {back.shape[::-1]} differs from the {array.shape[::-1]} written"
    if back.dtype != array.dtype:
        return f"its voxel type {back.dtype} differs from the {array.dtype} written"
    if not np.array_equal(back, array, equal_nan=np.issubdtype(array.dtype, np.floating)):
        return "its voxels differ from those written"
    return None


def image_readback_check(array: np.ndarray, geometry):
    """A commit check: the file reads back as exactly ``array`` on ``geometry``.

    ITK's NIfTI writer ignores a full disk and leaves a short file that even reads back without an
    error (with zeros); only comparing the voxels proves the result is the one computed.
    """
    def check(path: Path):
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            return "it cannot be read back as an image"
        back = sitk.GetArrayViewFromImage(image)  # no copy: compared, then dropped with image
        return _voxel_problem(back, array) or _geometry_problem(
            image.GetSpacing(), image.GetOrigin(), image.GetDirection(), geometry, ".nii" in Path(path).name.lower())
    return check


def segmentation_readback_check(array: np.ndarray, geometry, segment_name: str):
    """A commit check for a ``.seg.nrrd``: its segment reads back as exactly ``array`` on ``geometry``."""
    def check(path: Path):
        try:
            back = read_segmentation_mask(path, segment_name)
        except Exception:  # slicerio raises many kinds; any of them means the file is not what was written
            return "it cannot be read back as a Slicer segmentation"
        return _voxel_problem(back.array, array) or _geometry_problem(
            back.geometry.spacing, back.geometry.origin, back.geometry.direction, geometry, False)
    return check


def _write_volume(volume: Volume, path, overwrite: bool, tx) -> Path:
    if suffix_of(path) not in IMAGE_WRITE_SUFFIXES:
        raise OutputError(f"Cannot write an image to '{path}': use {', '.join(IMAGE_WRITE_SUFFIXES)}.")
    array = np.ascontiguousarray(volume.array)
    with transaction(tx, overwrite) as t:
        tmp = t.path_for(path)
        _sitk_write(volume.with_array(array).to_sitk(), tmp, Path(path))
        t.verify(path, image_readback_check(array, volume.geometry))
    return Path(path)


def write_labelmap(mask: Volume, path, overwrite: bool = False, tx=None) -> Path:
    """A uint8 labelmap (1 = CTV) with the mask's geometry.

    Written through the one commit path (:mod:`..core.commit`): read back and compared voxel by
    voxel, never replacing an existing file unless ``overwrite``. With ``tx`` the caller's
    transaction commits it together with the run's other outputs.
    """
    if suffix_of(path) not in LABELMAP_SUFFIXES:
        raise OutputError(f"Cannot write a labelmap to '{path}': use {', '.join(LABELMAP_SUFFIXES)} or {SEGMENTATION_SUFFIX}.")
    return _write_volume(mask.with_array(mask.array.astype(np.uint8)), path, overwrite, tx)


def write_image(volume: Volume, path, overwrite: bool = False, tx=None) -> Path:
    """Any volume (CT, probability map) as NIfTI / NRRD / MHA with its geometry (see :func:`write_labelmap`)."""
    return _write_volume(volume, path, overwrite, tx)


def write_segmentation(mask: Volume, path, model: str = "", threshold: Optional[float] = None,
                       overwrite: bool = False, segment_name: str = CTV_NAME, tx=None) -> Path:
    """A Slicer ``.seg.nrrd`` with one segment (label 1) on the mask's exact grid (see :func:`write_labelmap`).

    Every string reaching the NRRD header (segment name, model label, tags) is one printable line:
    a model card's name holding a newline and ``data file: ...`` cannot redirect a reader.
    """
    import slicerio

    if suffix_of(path) != SEGMENTATION_SUFFIX:
        raise OutputError(f"A Slicer segmentation must be written to a '{SEGMENTATION_SUFFIX}' file, not '{path}'.")
    g = mask.geometry
    ijk_to_lps = g.index_to_physical_matrix()
    name = sanitize_header_text(segment_name, 128) or CTV_NAME
    tags = {sanitize_header_text(k, 128): sanitize_header_text(v, 256)
            for k, v in segmentation_tags(model, threshold).items()}
    tags["TerminologyEntry"] = CTV_TERMINOLOGY
    array = np.ascontiguousarray(mask.array.astype(np.uint8))
    segmentation = {
        "voxels": np.ascontiguousarray(array.transpose(2, 1, 0)),  # slicerio wants (i, j, k)
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "segments": [{
            "id": "CTV", "labelValue": 1, "layer": 0, "name": name, "nameAutoGenerated": False,
            "color": list(CTV_COLOR), "colorAutoGenerated": False, "tags": tags,
        }],
    }
    with transaction(tx, overwrite) as t:
        tmp = t.path_for(path)
        try:
            slicerio.write_segmentation(str(tmp), segmentation)
        except OSError as exc:
            raise output_error(path, exc) from None
        t.verify(path, segmentation_readback_check((array == 1).astype(np.uint8), g, name))
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


def write_mask(mask: Volume, path, overwrite: bool = False, model: str = "", threshold: Optional[float] = None,
               tx=None) -> Path:
    """A mask as a Slicer segmentation or a labelmap, as the suffix of ``path`` says (:func:`mask_kind`)."""
    if mask_kind(path) == "segmentation":
        return write_segmentation(mask, path, model=model, threshold=threshold, overwrite=overwrite, tx=tx)
    return write_labelmap(mask, path, overwrite=overwrite, tx=tx)


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
