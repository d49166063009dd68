"""Where Slicer's RAS world meets the engine's LPS world: voxel grids and masks, both ways.

* volume node -> ``slicer.util.arrayFromVolume`` (already (k, j, i) = (z, y, x) order) plus the node's
  IJK-to-RAS matrix, turned into an engine :class:`~MnetImSegmentLib.core.volume.Geometry` by
  ``IJKToLPS = diag(-1, -1, 1, 1) @ IJKToRAS``;
* engine mask -> a ``vtkOrientedImageData`` carrying the *same* IJK-to-RAS matrix the voxels came
  with. The mask lives on the input's own voxel grid, so no resampling happens in either direction
  and any direction matrix (oblique, flipped, anisotropic) round-trips exactly.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
import slicer.util

from ..core.errors import InputError
from ..core.volume import Geometry

# RAS = diag(-1, -1, 1) LPS, and the matrix is its own inverse.
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometryFromIJKToRAS(ijkToRas) -> Geometry:
    """Engine geometry (LPS, SimpleITK conventions) of a voxel grid given by its IJK-to-RAS matrix.

    Args:
        ijkToRas: 4x4 numpy array or ``vtkMatrix4x4``.

    Returns:
        The :class:`Geometry` whose ``index_to_physical_matrix()`` is ``diag(-1, -1, 1, 1) @ ijkToRas``.
    """
    m = asArray(ijkToRas)
    ijkToLps = LPS_RAS @ m
    axes = ijkToLps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if not np.all(spacing > 0):
        raise InputError(f"The volume's IJK-to-RAS matrix has a zero-length axis (spacing {spacing.round(4).tolist()}).")
    return Geometry(spacing, ijkToLps[:3, 3], (axes / spacing).ravel())


def ijkToRASFromGeometry(geometry: Geometry) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of an engine geometry (inverse of :func:`geometryFromIJKToRAS`)."""
    return LPS_RAS @ geometry.index_to_physical_matrix()


def asArray(matrix) -> np.ndarray:
    """A 4x4 float numpy array from a ``vtkMatrix4x4`` or anything array-like."""
    if isinstance(matrix, vtk.vtkMatrix4x4):
        return slicer.util.arrayFromVTKMatrix(matrix).astype(float)
    return np.asarray(matrix, dtype=float).reshape(4, 4)


def vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A ``vtkMatrix4x4`` holding a 4x4 numpy array."""
    m = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(m, np.asarray(array, dtype=float))
    return m


def nodeIJKToRAS(volumeNode) -> np.ndarray:
    """The volume node's IJK-to-RAS matrix as a 4x4 numpy array (its own, without parent transforms)."""
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m).astype(float)


def orientedImage(mask: np.ndarray, ijkToRas: np.ndarray):
    """A uint8 ``vtkOrientedImageData`` holding a (z, y, x) mask on the grid ``ijkToRas`` describes.

    Carrying the geometry in the image itself is why no temporary labelmap node is needed. Only the
    mask's bounding box (plus one voxel, so surfaces close) is handed over, as a VTK extent on the
    same grid: the CTV fills ~0.2 % of a CT, and Slicer's copy and closed-surface conversion cost
    what the extent holds, not what the segment holds.
    """
    nz, ny, nx = mask.shape
    box = [(0, n - 1) for n in (nz, ny, nx)]
    if mask.any():
        box = []
        for axis, n in enumerate((nz, ny, nx)):
            hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            box.append((max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 1, n - 1)))
    (k0, k1), (j0, j1), (i0, i1) = box
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    # Share the (cropped) mask's memory: Slicer copies the voxels into the segment anyway.
    # numpy_to_vtk keeps a reference to the array for as long as VTK holds it.
    flat = np.ascontiguousarray(mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1], np.uint8).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=False, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(vtkMatrix(ijkToRas))
    return image
