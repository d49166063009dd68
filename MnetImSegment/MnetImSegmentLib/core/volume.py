"""The engine's one volume representation: a numpy array in (z, y, x) order plus its geometry.

Geometry follows SimpleITK / ITK conventions exactly (physical space is LPS, millimetres):

* ``spacing`` and ``origin`` are given in (x, y, z) = (i, j, k) index order, as SimpleITK does;
* ``direction`` is the row-major 3x3 matrix whose COLUMNS are the physical directions of the
  i, j and k index axes.

A voxel at array index ``[k, j, i]`` therefore sits at ``origin + direction @ (spacing * (i, j, k))``.
Conversions to Slicer's RAS happen only in the MRML bridge (``mrml/geometry.py``); conversions from files
only in ``engine/io.py``. Keeping one convention everywhere is what keeps contours registered to the CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import InputError


def _as_tuple(values, n: int, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    if len(out) != n:
        raise InputError(f"{name} must have {n} values, got {len(out)}.")
    return out


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel grid lies in LPS physical space (SimpleITK conventions)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "spacing", _as_tuple(self.spacing, 3, "spacing"))
        object.__setattr__(self, "origin", _as_tuple(self.origin, 3, "origin"))
        object.__setattr__(self, "direction", _as_tuple(self.direction, 9, "direction"))
        if min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise InputError(f"Voxel spacing must be positive and finite, got {self.spacing}.")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS (x, y, z, 1)."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    def index_to_physical(self, ijk) -> np.ndarray:
        """Continuous (i, j, k) indices, shape (..., 3), to LPS points (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, points) -> np.ndarray:
        """LPS points (..., 3) to continuous (i, j, k) indices (..., 3)."""
        points = np.asarray(points, dtype=float) - np.asarray(self.origin)
        return (points @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def allclose(self, other: "Geometry", atol: float = 1e-4) -> bool:
        return (
            np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )


@dataclass
class Volume:
    """A 3D image: ``array`` in (z, y, x) order and its :class:`Geometry`."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise InputError(f"A volume must be 3D, got an array of shape {self.array.shape}.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, other voxels (a label map or probability map of this image)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return replace(self, array=array)

    # SimpleITK conversions live here (not in io) because SimpleITK is the engine's geometry
    # library: ROI resampling and connected components use it too.
    def to_sitk(self):
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.geometry.spacing)
        image.SetOrigin(self.geometry.origin)
        image.SetDirection(self.geometry.direction)
        return image

    @classmethod
    def from_sitk(cls, image) -> "Volume":
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError(f"Expected a 3D image, got {image.GetDimension()}D.")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"Expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel."
            )
        geometry = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return cls(sitk.GetArrayFromImage(image), geometry)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` onto unit vector ``b`` (Rodrigues; any half turn if opposite)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if c < -0.999999:  # opposite: any half turn about an axis normal to a
        n = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        n /= np.linalg.norm(n)
        return 2 * np.outer(n, n) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)
