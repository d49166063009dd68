"""Geometry is sacred: ROI location, crop and paste-back with oblique, flipped, anisotropic grids."""

import numpy as np
import pytest

from MnetImSegmentLib.core.volume import Geometry, Volume, rotation_between
from MnetImSegmentLib.engine.roi import RoiSpec, Roi, closest_axes, crop, locate_roi, paste, roi_geometry
from MnetImSegmentLib.engine.windows import InputSpec, make_windows, normalise, window_indices
from MnetImSegmentLib.research.phantom import PhantomAnatomy, rotation_matrix

FLIPS = {
    "axial": np.eye(3),
    "flip_x": np.diag([-1.0, 1.0, 1.0]),
    "flip_yz": np.diag([1.0, -1.0, -1.0]),
    "oblique": rotation_matrix(4, -3, 15),
    "oblique_flipped": rotation_matrix(0, 5, -12) @ np.diag([-1.0, 1.0, -1.0]),
}


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def anatomy():
    return PhantomAnatomy(11)


def _sample(anatomy, direction, spacing=(1.1, 0.9, 2.5), size=(160, 176, 44)):
    """Sample the same patient on a grid centred on its CTV with the given direction and spacing."""
    d = np.asarray(direction, float)
    center = anatomy.ctv_center + np.array([0, 0, 5.0])
    origin = center - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return anatomy.sample(Geometry(spacing, origin, d.ravel()), size[::-1])


def test_closest_axes_handles_permutations_and_flips():
    d = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, -1]], float)  # i -> -P? columns: i=(0,-1,0), j=(1,0,0), k=(0,0,-1)
    order, signs = closest_axes(d)
    assert order == [1, 0, 2] and signs == [1.0, -1.0, -1.0]
    order, signs = closest_axes(rotation_matrix(0, 0, 30))
    assert order == [0, 1, 2] and signs == [1.0, 1.0, 1.0]


def test_crop_and_paste_are_exact_on_native_grid():
    """With the model's spacing equal to the image's, crop is a copy and paste-back restores it."""
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(12, 40, 50)).astype(np.float32)
    geom = Geometry((1.0, 1.0, 2.0), (-20.0, 5.0, 30.0), np.eye(3).ravel())
    vol = Volume(arr, geom)
    spec = RoiSpec(size_px=(16, 16), spacing_mm=(1.0, 1.0))
    center = geom.index_to_physical([20.5, 18.5, 6])  # pixel-centred ROI: corners on voxel centres
    roi = Roi(tuple(center), 2, (2, 9), "test")
    cropped = crop(vol, roi, spec)
    assert cropped.shape == (8, 16, 16)
    np.testing.assert_allclose(cropped.array, arr[2:10, 11:27, 13:29], atol=1e-5)
    back = paste(cropped, geom, arr.shape)
    np.testing.assert_allclose(back[2:10, 11:27, 13:29], arr[2:10, 11:27, 13:29], atol=1e-5)
    outside = np.ones(arr.shape, bool)
    outside[2:10, 11:27, 13:29] = False
    assert np.all(back[outside] == 0)


@pytest.mark.parametrize("name", list(FLIPS))
def test_roi_crop_paste_round_trip_any_direction(anatomy, name):
    """Resampled to 1 mm and back, the CTV mask survives on any grid (Dice > 0.97)."""
    ph = _sample(anatomy, FLIPS[name])
    truth = ph.mask().array
    assert truth.sum() > 1000
    spec = RoiSpec()
    roi = locate_roi(ph.ct, spec)
    cropped = crop(ph.mask().with_array(truth.astype(np.float32)), roi, spec, default=0.0)
    # The network always sees the patient the same way round: ROI axes are closest to L, P, S.
    assert np.allclose(np.diag(cropped.geometry.direction_matrix), 1.0, atol=0.05)
    back = paste(cropped, ph.ct.geometry, ph.ct.shape) >= 0.5
    assert _dice(back, truth) > 0.97


def test_flips_see_the_same_roi_content(anatomy):
    """Flipped grids sampling the same points give the same ROI crop (same patient, same view)."""
    a = _sample(anatomy, FLIPS["axial"])
    b = _sample(anatomy, FLIPS["flip_x"])
    spec = RoiSpec()
    ra, rb = locate_roi(a.ct, spec), locate_roi(b.ct, spec)
    assert np.allclose(ra.center, rb.center, atol=1.0)
    roi = Roi(ra.center, 2, (0, a.ct.shape[0] - 1), "test")
    ca = crop(a.labels.with_array(a.labels.array.astype(np.float32)), roi, spec, default=0.0)
    cb = crop(b.labels.with_array(b.labels.array.astype(np.float32)), roi, spec, default=0.0)
    assert ca.geometry.allclose(cb.geometry)
    # The two grids sample the same physical points, so the (noise-free) label crops are identical.
    np.testing.assert_allclose(ca.array, cb.array, atol=1e-4)


@pytest.mark.parametrize("name", ["axial", "oblique", "oblique_flipped"])
def test_locate_roi_centre_is_physical(anatomy, name):
    ph = _sample(anatomy, FLIPS[name])
    roi = locate_roi(ph.ct, RoiSpec())
    truth_center = ph.ct.geometry.index_to_physical(np.argwhere(ph.mask().array)[:, ::-1].mean(0))
    # The ROI is 128 mm wide; its centre must be close enough that the whole CTV fits.
    assert np.linalg.norm(np.asarray(roi.center)[:2] - truth_center[:2]) < 30


def test_roi_geometry_keeps_slices_on_image_slices():
    geom = Geometry((0.8, 0.8, 2.5), (10, -20, 30), FLIPS["flip_yz"].ravel())
    roi = Roi((0.0, 0.0, 20.0), 2, (3, 9), "test")
    g, size = roi_geometry(geom, roi, RoiSpec())
    assert size == (128, 128, 7)
    k = geom.physical_to_index(g.index_to_physical(np.array([[64, 64, s] for s in range(7)])))[:, 2]
    np.testing.assert_allclose(k, np.arange(9, 2, -1), atol=1e-6)  # flipped k: first ROI slice = last image slice


def test_locate_roi_without_body_is_an_input_error():
    from MnetImSegmentLib.core.errors import InputError

    with pytest.raises(InputError, match="No patient body"):
        locate_roi(Volume(np.full((6, 32, 32), -1000, np.int16)), RoiSpec())


def test_windows_replicate_edges_and_handle_short_volumes():
    idx = window_indices(3, [0, 1, 2])
    assert idx.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    stack = np.arange(2)[:, None, None] * np.ones((2, 4, 4))
    w = make_windows(stack)
    assert w.shape == (2, 5, 4, 4)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1]
    assert window_indices(10, [5]).tolist() == [[3, 4, 5, 6, 7]]
    with pytest.raises(ValueError):
        window_indices(5, [0], slices_per_window=4)


def test_normalise_clips_to_window():
    out = normalise(np.array([-1000, -200, 50, 300, 3000], np.int16), InputSpec())
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])


@pytest.mark.parametrize("seed,slice_mm,flip_z", [(s, mm, f) for s, mm, f in
                         [(3, 1.0, False), (5, 2.5, True), (8, 3.0, False), (12, 2.0, True), (21, 2.5, False),
                          (27, 1.25, False), (34, 3.0, True), (40, 2.5, False)]])
def test_slice_restriction_never_loses_a_ctv_slice(seed, slice_mm, flip_z):
    """The network only runs on the ROI's slices: every CTV slice must be among them."""
    anatomy = PhantomAnatomy(seed)
    d = np.diag([1.0, 1.0, -1.0 if flip_z else 1.0])
    geometry, shape = anatomy.default_grid(matrix=96, slice_mm=slice_mm, z_extent_mm=260, direction=d)
    ph = anatomy.sample(geometry, shape)
    roi = locate_roi(ph.ct, RoiSpec())
    ctv_slices = np.flatnonzero(ph.mask().array.any((1, 2)))
    first, last = roi.slice_range
    assert ctv_slices.min() >= first and ctv_slices.max() <= last, (roi, ctv_slices.min(), ctv_slices.max())
    if roi.method == "applicator":  # and it is a real restriction, not the whole scan
        assert last - first + 1 < ph.ct.shape[0]


@pytest.mark.parametrize("a, b", [([0, 0, 1], [0, 0, 1]), ([0, 0, 1], [0, 0, -1]), ([1, 0, 0], [-1, 0, 0]),
                                  ([0, 0, 1], [0.3, -0.5, 0.8]), ([0.2, 0.9, -0.1], [-0.7, 0.1, 0.4])])
def test_rotation_between_is_a_rotation_taking_a_onto_b(a, b):
    """Used by the phantoms' templates and the fraction-to-fraction transfer; opposite vectors included."""
    r = rotation_between(np.array(a, float), np.array(b, float))
    unit = lambda v: np.asarray(v, float) / np.linalg.norm(v)  # noqa: E731
    assert np.allclose(r @ unit(a), unit(b), atol=1e-9)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(r), 1.0)
