"""Finding the cases of a folder (paired by case id) and reading their masks on a common grid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...core.commit import strip_suffix
from ...core.errors import DatasetError
from ...core.files import MASK_SUFFIXES
from ...core.style import CTV_NAME
from ...core.volume import Geometry, Volume
from ...engine.io import read_image, read_segmentation_mask


# --------------------------------------------------------------------------- case discovery and reading
def case_id_of(path: Path) -> Optional[str]:
    """The case id of a mask or image file (name without its image suffix), or None if not one."""
    return strip_suffix(path.name, MASK_SUFFIXES)


def find_cases(folder, what: str, allow_dirs: bool = False) -> dict[str, Path]:
    """Map case id -> file for every mask (or image) file directly in ``folder``.

    Args:
        folder: The folder to list.
        what: How messages name the folder ("prediction", "truth", "image").
        allow_dirs: Also accept sub-folders as cases (DICOM series folders for CT images).

    Raises:
        DatasetError: The folder does not exist, holds no usable file, or two files share a case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The {what} folder '{folder}' does not exist.")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        case = path.name if (allow_dirs and path.is_dir()) else (case_id_of(path) if path.is_file() else None)
        if case is None:
            continue
        if case in cases:
            raise DatasetError(f"The {what} folder '{folder}' holds two files for case '{case}': "
                               f"'{cases[case].name}' and '{path.name}'; keep one.")
        cases[case] = path
    if not cases:
        kind = "image files or DICOM folders" if allow_dirs else "mask files"
        raise DatasetError(f"The {what} folder '{folder}' holds no {kind} ({', '.join(MASK_SUFFIXES)}).")
    return cases


def read_mask(path: Path, label: int = 1, segment: str = CTV_NAME) -> Volume:
    """A boolean mask with its geometry: the named segment of a ``.seg.nrrd``, or ``labelmap == label``.

    Raises:
        DatasetError: The segment is missing, or the labelmap holds non-integer values (a probability
            map or a CT rather than a mask).
    """
    path = Path(path)
    if path.name.lower().endswith(".seg.nrrd"):
        import slicerio

        try:
            mask = read_segmentation_mask(path, segment_name=segment)
        except KeyError:
            names = [s.get("name", "?") for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]]
            raise DatasetError(f"'{path}' has no segment named '{segment}' (it has: {', '.join(names) or 'none'}); "
                               "choose one with --segment.") from None
        except Exception as exc:  # pynrrd/slicerio raise many types for a damaged file; the user needs one line
            raise DatasetError(f"'{path}' is not a readable Slicer segmentation ({type(exc).__name__}: {exc}).") from None
        return mask.with_array(mask.array.astype(bool))
    volume = read_image(path)
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise DatasetError(f"'{path}' holds non-integer values: it is not a labelmap (a probability map? "
                           "threshold it first).")
    return volume.with_array(array == label)


def describe_grid(shape, g: Geometry) -> str:
    sx, sy, sz = g.spacing
    return (f"{shape[2]}x{shape[1]}x{shape[0]} voxels of {sx:.4g}x{sy:.4g}x{sz:.4g} mm at origin "
            f"({', '.join(f'{v:.4g}' for v in g.origin)})")


def align_to(mask: Volume, reference: Volume, case: str, what: str) -> np.ndarray:
    """``mask`` as an array on ``reference``'s grid, or a clear error if the grids differ.

    A mask stored on the same voxel lattice but a smaller extent (Slicer crops ``.seg.nrrd`` files to
    the segments' extent) is pasted into place exactly; anything needing interpolation is refused:
    resampling a mask changes the very contours being measured.

    Raises:
        DatasetError: The lattices differ, or the mask has voxels outside the reference grid.
    """
    g, r = mask.geometry, reference.geometry
    same_lattice = (np.allclose(g.direction, r.direction, atol=1e-4)
                    and np.allclose(g.spacing, r.spacing, rtol=1e-4, atol=1e-6))
    offset = r.physical_to_index(g.origin) if same_lattice else None  # (i, j, k) of the mask's first voxel
    if offset is not None and np.allclose(offset, np.round(offset), atol=0.01):
        i, j, k = (int(v) for v in np.round(offset))
        if (k, j, i) == (0, 0, 0) and mask.shape == reference.shape:
            return mask.array
        out = np.zeros(reference.shape, bool)
        src = [slice(max(0, -o), min(n, N - o)) for o, n, N in zip((k, j, i), mask.shape, reference.shape)]
        dst = [slice(s.start + o, s.stop + o) for s, o in zip(src, (k, j, i))]
        if all(s.stop > s.start for s in src):
            out[tuple(dst)] = mask.array[tuple(src)]
        if int(out.sum()) == int(np.count_nonzero(mask.array)):
            return out
    raise DatasetError(f"Case '{case}': the {what} grid ({describe_grid(mask.shape, g)}) differs from the truth grid "
                       f"({describe_grid(reference.shape, r)}); masks must lie on the CT's voxel grid.")

