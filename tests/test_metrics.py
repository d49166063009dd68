"""The five metrics: agreement with DeepMind's reference, hand-computed cases, conventions, speed.

The reference (``surface-distance==0.1``, a test-only dependency) predates NumPy 2 and uses
``np.Inf``/``np.NaN``; the fixture restores those names before importing it. Tests that need it skip
when it is not installed; everything else stands on hand-derived numbers.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from MnetImSegmentLib.research import metrics as M
from MnetImSegmentLib.research.metrics import (BOTH_EMPTY, DEFAULT_TOLERANCE_MM, METRIC_DEFINITIONS, ONE_EMPTY, neighbour_code_areas, segmentation_metrics, squared_edt, surface_distances)

# The reference calls scipy.ndimage.filters/morphology, deprecated namespaces: not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance.*")

ANISO_3D = [(2.5, 0.9, 0.9), (1.0, 1.0, 1.0), (0.7, 1.3, 3.1)]
ANISO_2D = [(0.9, 0.9), (2.5, 0.9), (1.0, 1.0)]


@pytest.fixture(scope="module")
def ref():
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # the reference still spells these the NumPy 1 way
    if not hasattr(np, "NaN"):
        np.NaN = np.nan
    import types
    import warnings

    ndimage = pytest.importorskip("scipy.ndimage")  # the reference's own dependency
    # It also calls ndimage.filters/.morphology, namespaces SciPy 2 drops: point them at the functions.
    if not hasattr(ndimage, "filters"):
        ndimage.filters = types.SimpleNamespace(correlate=ndimage.correlate)
    if not hasattr(ndimage, "morphology"):
        ndimage.morphology = types.SimpleNamespace(distance_transform_edt=ndimage.distance_transform_edt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("surface_distance", exc_type=ImportError)


def blob(rng: np.random.Generator, shape, fill: float = 0.25) -> np.ndarray:
    """A random smooth blob: an ellipsoid (ellipse) with wavy boundary, somewhere inside ``shape``."""
    grid = np.indices(shape).astype(float)
    level = np.zeros(shape)
    wobble = np.zeros(shape)
    for axis, n in enumerate(shape):
        centre, radius = rng.uniform(0.35, 0.65) * n, rng.uniform(0.6, 1.4) * fill * n
        level += ((grid[axis] - centre) / radius) ** 2
        wobble += rng.normal(0, 0.12) * np.sin(rng.uniform(0.15, 0.6) * grid[axis] + rng.uniform(0, 2 * np.pi))
    return level + wobble < 1.0


def reference_metrics(ref, pred, truth, spacing, tolerance):
    s = ref.compute_surface_distances(truth, pred, spacing)  # the reference takes (gt, pred)
    asd = ref.compute_average_surface_distance(s)
    so = ref.compute_surface_overlap_at_tolerance(s, tolerance)
    return {
        "asd": (asd[0] + asd[1]) / 2, "asd_gt_to_pred": asd[0], "asd_pred_to_gt": asd[1],
        "hd95": ref.compute_robust_hausdorff(s, 95), "so": (so[0] + so[1]) / 2, "so_gt": so[0], "so_pred": so[1],
        "sd": ref.compute_surface_dice_at_tolerance(s, tolerance), "vd": ref.compute_dice_coefficient(truth, pred),
    }


def pair(rng, shape):
    """A truth blob and a plausible prediction: another blob overlapping most of it."""
    truth = blob(rng, shape)
    pred = blob(rng, shape) | (truth & (rng.random(shape) < 0.97))
    return pred, truth


# --------------------------------------------------------------------------- lookup tables
def _reference_code(ref, my_code: int, ndim: int) -> int:
    """The reference's neighbour code of the configuration that is ``my_code`` here."""
    kernel = (ref.lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL if ndim == 3
              else ref.lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL)
    return sum(int(kernel[c]) for c in M._corners(ndim) if my_code >> M._bit(c) & 1)


@pytest.mark.parametrize("spacing", ANISO_3D + [(3.0, 0.5, 1.7)])
def test_derived_3d_table_equals_reference_marching_cubes_areas(ref, spacing):
    mine = neighbour_code_areas(spacing)
    theirs = ref.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(mine, theirs[[_reference_code(ref, c, 3) for c in range(256)]], rtol=1e-12, atol=1e-12)


def test_derived_triangles_equal_reference_triangles_so_areas_agree_at_any_spacing(ref):
    """Per configuration, the same area vectors up to sign (the reference stores them as 'normals'
    whose length is the area), once parallel ones are added up (the reference sometimes stores two
    coplanar triangles as one): then the areas agree at every spacing, not just those tried."""
    def by_direction(vectors):
        total = {}
        for v in np.abs(np.asarray(vectors, float)).reshape(-1, 3):
            if v.any():
                key = tuple(np.round(v / np.linalg.norm(v), 9))
                total[key] = total.get(key, 0.0) + np.linalg.norm(v)
        return {k: round(a, 9) for k, a in total.items()}

    mine = M._unit_triangles_3d()
    normals = ref.lookup_tables._NEIGHBOUR_CODE_TO_NORMALS
    for code in range(256):
        assert by_direction(mine[code]) == by_direction(normals[_reference_code(ref, code, 3)]), code


@pytest.mark.parametrize("spacing", ANISO_2D + [(0.3, 2.0)])
def test_derived_2d_table_equals_reference_contour_lengths(ref, spacing):
    mine = neighbour_code_areas(spacing)
    theirs = ref.lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
    np.testing.assert_allclose(mine, theirs[[_reference_code(ref, c, 2) for c in range(16)]], rtol=1e-12)


def test_tables_by_hand():
    s0, s1, s2 = 2.5, 0.9, 0.7
    areas = neighbour_code_areas((s0, s1, s2))
    assert areas[0] == 0 and areas[255] == 0
    np.testing.assert_allclose(areas, areas[::-1])  # a configuration and its complement: same surface
    corner = np.linalg.norm([s1 * s2, s0 * s2, s0 * s1]) / 8  # one voxel in: a corner cut at edge midpoints
    np.testing.assert_allclose(areas[1], corner)
    np.testing.assert_allclose(areas[0b00001111], s1 * s2)  # one whole face in: a flat square across axis 0
    np.testing.assert_allclose(areas[0b00000011], s2 * math.hypot(s0, s1) / 2)  # two voxels along axis 2
    np.testing.assert_allclose(areas[0b10000001], 2 * corner)  # opposite corners: two separate cuts
    lengths = neighbour_code_areas((2.5, 0.9))
    np.testing.assert_allclose(lengths[[0b0001, 0b0011, 0b0101, 0b0110]],
                               [math.hypot(2.5, 0.9) / 2, 0.9, 2.5, math.hypot(2.5, 0.9)])


# --------------------------------------------------------------------------- exact distance transform
def _brute_squared_edt(features, spacing):
    pts = np.argwhere(features) * np.asarray(spacing)
    grid = np.indices(features.shape).reshape(features.ndim, -1).T * np.asarray(spacing)
    d2 = ((grid[:, None, :] - pts[None, :, :]) ** 2).sum(-1).min(1)
    return d2.reshape(features.shape)


@pytest.mark.parametrize("seed", range(4))
def test_edt_is_exact_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    for shape, spacing in [((9, 13, 11), (2.5, 0.9, 0.9)), ((17, 23), (0.7, 3.1)), ((31,), (1.3,)), ((4, 1, 6), (1, 2, 3))]:
        features = rng.random(shape) < rng.uniform(0.02, 0.2)
        features.flat[rng.integers(features.size)] = True
        np.testing.assert_allclose(squared_edt(features, spacing), _brute_squared_edt(features, spacing), rtol=1e-13, atol=1e-12)
    assert np.isinf(squared_edt(np.zeros((3, 4), bool), (1, 1))).all()


def test_edt_agrees_with_simpleitk_maurer_on_a_larger_grid():
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    features = rng.random((24, 70, 61)) < 0.003
    spacing = (2.5, 0.9, 0.9)
    image = sitk.GetImageFromArray(features.astype(np.uint8))
    image.SetSpacing(spacing[::-1])
    maurer = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                                 useImageSpacing=True))
    maurer = np.where(features, 0.0, maurer)  # Maurer's inside values are distances to the contour
    np.testing.assert_allclose(np.sqrt(squared_edt(features, spacing)), maurer, rtol=1e-5, atol=1e-5)  # float32 there


# --------------------------------------------------------------------------- agreement with the reference
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spacing", ANISO_3D)
def test_3d_agrees_with_reference_on_random_shapes(ref, seed, spacing):
    rng = np.random.default_rng(1000 + seed)
    pred, truth = pair(rng, (18, 40, 36))
    tolerance = float(rng.choice([1.0, DEFAULT_TOLERANCE_MM, 3.3]))
    ours = segmentation_metrics(pred, truth, spacing, tolerance_mm=tolerance)
    theirs = reference_metrics(ref, pred, truth, spacing, tolerance)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-3, abs=1e-9), key


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", ANISO_2D)
def test_2d_agrees_with_reference_on_random_shapes(ref, seed, spacing):
    rng = np.random.default_rng(2000 + seed)
    pred, truth = pair(rng, (70, 64))
    tolerance = float(rng.choice([0.5, DEFAULT_TOLERANCE_MM, 4.0]))
    ours = segmentation_metrics(pred, truth, spacing, tolerance_mm=tolerance)
    theirs = reference_metrics(ref, pred, truth, spacing, tolerance)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-3, abs=1e-9), key


@pytest.mark.parametrize("ndim", [2, 3])
def test_surfels_and_distances_match_reference_elementwise(ref, ndim):
    rng = np.random.default_rng(77 + ndim)
    shape, spacing = ((16, 30, 28), (2.5, 0.9, 0.9)) if ndim == 3 else ((50, 45), (2.5, 0.9))
    pred, truth = pair(rng, shape)
    ours = surface_distances(pred, truth, spacing)
    theirs = ref.compute_surface_distances(truth, pred, spacing)
    for direction, side in (("gt_to_pred", "gt"), ("pred_to_gt", "pred")):
        d, a = getattr(ours, f"distances_{direction}"), getattr(ours, f"surfel_areas_{side}")
        order = np.lexsort((a, d))
        np.testing.assert_allclose(d[order], theirs[f"distances_{direction}"], rtol=1e-12)
        np.testing.assert_allclose(a[order], theirs[f"surfel_areas_{side}"], rtol=1e-12)


def test_directed_pairs_follow_their_names(ref):
    """Prediction = truth + a far false positive: only the prediction->truth direction suffers."""
    truth = np.zeros((12, 40, 40), bool)
    truth[3:8, 5:15, 5:15] = True
    pred = truth.copy()
    pred[4:7, 30:35, 30:35] = True
    m = segmentation_metrics(pred, truth, (2.5, 0.9, 0.9))
    assert m["asd_gt_to_pred"] == 0 and m["hd95_gt_to_pred"] == 0 and m["so_gt"] == 1
    assert m["asd_pred_to_gt"] > 3 and m["so_pred"] < 0.9
    theirs = reference_metrics(ref, pred, truth, (2.5, 0.9, 0.9), DEFAULT_TOLERANCE_MM)
    for key in ("asd_gt_to_pred", "asd_pred_to_gt", "so_gt", "so_pred"):
        assert m[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12)
    swapped = segmentation_metrics(truth, pred, (2.5, 0.9, 0.9))
    assert swapped["asd_gt_to_pred"] == m["asd_pred_to_gt"] and swapped["so_pred"] == m["so_gt"]
    for key in ("asd", "hd95", "so", "sd", "vd"):
        assert swapped[key] == pytest.approx(m[key], rel=1e-12)


# --------------------------------------------------------------------------- hand-computed cases
def _squares(n=4, k=1):
    truth = np.zeros((n + 6, n + k + 6), bool)
    truth[3:3 + n, 3:3 + n] = True
    pred = np.zeros_like(truth)
    pred[3:3 + n, 3 + k:3 + n + k] = True
    return pred, truth


def test_two_squares_shifted_by_one_pixel_isotropic():
    """4x4 squares, one pixel apart. Truth contour: 12 unit segments and 4 corner cuts of length
    sqrt(2)/2; 6 unit segments (3 per vertical side) and 2 corner cuts are 1 px from the other
    contour, the rest lie on it. So ASD = (6 + sqrt2) / (12 + 2 sqrt2) = 1/2, every distance <= 1."""
    pred, truth = _squares()
    m = segmentation_metrics(pred, truth, (1.0, 1.0), tolerance_mm=0.5)
    assert m["asd"] == pytest.approx(0.5, abs=1e-12)
    assert m["asd_gt_to_pred"] == pytest.approx(0.5) and m["asd_pred_to_gt"] == pytest.approx(0.5)
    assert m["hd95"] == 1.0
    assert m["so"] == pytest.approx(0.5) and m["sd"] == pytest.approx(0.5)
    assert m["vd"] == 0.75  # 2 * 12 / (16 + 16)
    at_one = segmentation_metrics(pred, truth, (1.0, 1.0), tolerance_mm=1.0)
    assert at_one["so"] == 1.0 and at_one["sd"] == 1.0  # a distance exactly tau counts as within


def test_two_squares_shifted_along_x_with_anisotropic_pixels():
    """Same squares, pixels 2 mm tall and 1 mm wide, shift 1 px = 1 mm along x. Distances stay 1 mm
    (the nearest other-contour point is always one column away); lengths change: corner cuts
    sqrt(5)/2, horizontal steps 1, vertical steps 2. ASD = (2 sqrt5/2 + 6 * 2) / (6 + 12 + 4 sqrt5/2)."""
    pred, truth = _squares()
    m = segmentation_metrics(pred, truth, (2.0, 1.0), tolerance_mm=0.99)
    root5 = math.sqrt(5)
    assert m["asd"] == pytest.approx((root5 + 12) / (18 + 2 * root5), rel=1e-12)
    assert m["hd95"] == 1.0
    assert m["so"] == pytest.approx((6 + root5) / (18 + 2 * root5), rel=1e-12)
    assert m["vd"] == 0.75


def test_two_squares_shifted_by_k_pixels_hausdorff():
    for k in (2, 3):
        pred, truth = _squares(n=12, k=k)
        m = segmentation_metrics(pred, truth, (1.0, 0.5))
        assert m["hd95"] == pytest.approx(0.5 * k)  # the vertical sides are k columns (0.5 mm each) apart
        assert m["vd"] == pytest.approx(2 * 12 * (12 - k) / (2 * 144))


def test_box_surface_area_by_hand():
    """Surfel areas of an n0 x n1 x n2 box: faces, edges cut at 45 degrees, corners cut off."""
    s0, s1, s2 = 2.5, 0.9, 0.7
    n0, n1, n2 = 4, 7, 5
    box = np.zeros((n0 + 2, n1 + 2, n2 + 2), bool)
    box[1:-1, 1:-1, 1:-1] = True
    faces = 2 * ((n1 - 1) * (n2 - 1) * s1 * s2 + (n0 - 1) * (n2 - 1) * s0 * s2 + (n0 - 1) * (n1 - 1) * s0 * s1)
    edges = 4 * ((n0 - 1) * s0 * math.hypot(s1, s2) + (n1 - 1) * s1 * math.hypot(s0, s2)
                 + (n2 - 1) * s2 * math.hypot(s0, s1)) / 2
    corners = 8 * np.linalg.norm([s1 * s2, s0 * s2, s0 * s1]) / 8
    area = surface_distances(box, box, (s0, s1, s2)).surfel_areas_gt.sum()
    assert area == pytest.approx(faces + edges + corners, rel=1e-12)


def test_box_shifted_by_one_slice():
    """A box one 2.5 mm slice off: no surfel is farther than one slice, the whole bottom (top) face is
    exactly one slice away, so HD95 = 2.5 mm; with tau = 2.5 mm everything overlaps."""
    truth = np.zeros((10, 16, 16), bool)
    truth[2:6, 3:13, 3:13] = True
    pred = np.roll(truth, 1, axis=0)
    spacing = (2.5, 0.9, 0.9)
    m = segmentation_metrics(pred, truth, spacing, tolerance_mm=2.5)
    assert m["hd95"] == 2.5 and m["vd"] == 0.75
    assert m["so"] == 1.0 and m["sd"] == 1.0
    assert 0 < m["asd"] < 2.5
    assert m["asd_gt_to_pred"] == pytest.approx(m["asd_pred_to_gt"], rel=1e-12)  # mirror-symmetric
    assert segmentation_metrics(pred, truth, spacing, tolerance_mm=2.4)["so"] < 1.0


def test_identical_masks_are_perfect():
    rng = np.random.default_rng(5)
    mask = blob(rng, (12, 30, 30))
    m = segmentation_metrics(mask, mask, (2.5, 0.9, 0.9))
    assert m == {**m, "asd": 0.0, "hd95": 0.0, "so": 1.0, "sd": 1.0, "vd": 1.0}


# --------------------------------------------------------------------------- conventions and invariances
@pytest.mark.parametrize("shape", [(6, 9, 8), (9, 8)])
def test_empty_mask_conventions(shape):
    empty, some = np.zeros(shape, bool), np.zeros(shape, bool)
    some[(slice(2, 5),) * len(shape)] = True
    spacing = (1.0,) * len(shape)
    assert segmentation_metrics(empty, empty, spacing) == dict(BOTH_EMPTY)
    assert segmentation_metrics(empty, some, spacing) == dict(ONE_EMPTY)
    assert segmentation_metrics(some, empty, spacing) == dict(ONE_EMPTY)
    assert BOTH_EMPTY["vd"] == 1 and BOTH_EMPTY["asd"] == 0 and BOTH_EMPTY["sd"] == 1
    assert ONE_EMPTY["vd"] == 0 and math.isinf(ONE_EMPTY["hd95"]) and ONE_EMPTY["so"] == 0
    with pytest.raises(TypeError):
        BOTH_EMPTY["vd"] = 0.5  # the named conventions cannot be changed by accident
    assert set(BOTH_EMPTY) == set(ONE_EMPTY) == set(M.ALL_KEYS)


def test_invariant_to_padding_translation_and_axis_order():
    rng = np.random.default_rng(11)
    pred, truth = pair(rng, (14, 30, 26))
    spacing = (2.5, 0.9, 0.8)
    base = segmentation_metrics(pred, truth, spacing)
    pad = ((3, 0), (7, 2), (0, 5))
    padded = segmentation_metrics(np.pad(pred, pad), np.pad(truth, pad), spacing)
    moved = segmentation_metrics(np.roll(np.pad(pred, 4), (1, -2, 3), (0, 1, 2)),
                                 np.roll(np.pad(truth, 4), (1, -2, 3), (0, 1, 2)), spacing)
    order = (2, 0, 1)
    permuted = segmentation_metrics(pred.transpose(order), truth.transpose(order), [spacing[i] for i in order])
    for other in (padded, moved, permuted):
        for key in base:
            assert other[key] == pytest.approx(base[key], rel=1e-12, abs=1e-12), key


def test_mask_touching_the_image_border_is_closed_by_the_background():
    truth = np.zeros((8, 10, 10), bool)
    truth[:4, :5, 2:7] = True  # touches three faces of the array
    pred = np.zeros_like(truth)
    pred[:5, :5, 2:8] = True
    spacing = (2.5, 0.9, 0.9)
    inside = segmentation_metrics(np.pad(pred, 2), np.pad(truth, 2), spacing)
    assert segmentation_metrics(pred, truth, spacing) == pytest.approx(inside)


def test_integer_masks_and_validation():
    a = np.zeros((5, 6, 7), np.uint8)
    a[1:3, 2:4, 2:5] = 1
    assert segmentation_metrics(a, a, (1, 1, 1))["vd"] == 1.0
    with pytest.raises(ValueError, match="boolean"):
        segmentation_metrics(a.astype(float), a, (1, 1, 1))
    with pytest.raises(ValueError, match="select one label"):
        segmentation_metrics(a * 2, a, (1, 1, 1))
    with pytest.raises(ValueError, match="same shape"):
        segmentation_metrics(a[1:], a, (1, 1, 1))
    with pytest.raises(ValueError, match="3 values"):
        segmentation_metrics(a, a, (1, 1))
    with pytest.raises(ValueError, match="positive"):
        segmentation_metrics(a, a, (1, 0, 1))
    with pytest.raises(ValueError, match="tolerance"):
        segmentation_metrics(a, a, (1, 1, 1), tolerance_mm=-1)
    with pytest.raises(ValueError, match="2D or 3D"):
        segmentation_metrics(a[0, 0], a[0, 0], (1,))


def test_definitions_name_units_and_direction():
    assert list(METRIC_DEFINITIONS) == ["asd", "hd95", "sd", "so", "vd"]
    for key, d in METRIC_DEFINITIONS.items():
        assert d["unit"] in ("mm", "fraction") and d["better"] in ("lower", "higher") and d["definition"]
    assert METRIC_DEFINITIONS["hd95"]["unit"] == "mm" and METRIC_DEFINITIONS["vd"]["better"] == "higher"
    assert DEFAULT_TOLERANCE_MM == 2.0
    assert "2.0 mm" in M.__doc__ and "tolerance" in segmentation_metrics.__doc__


# --------------------------------------------------------------------------- speed
def test_ct_sized_volume_with_small_ctv_is_fast():
    """512 x 512 x 120 CT, a ~60 ml CTV: the work is confined to the CTV's box."""
    spacing = (2.5, 0.9765625, 0.9765625)
    z, y, x = np.ogrid[-20:21, -40:41, -40:41]
    zz, yy, xx = z * spacing[0], y * spacing[1], x * spacing[2]
    truth_box = (zz / 26) ** 2 + (yy / 20) ** 2 + (xx / 28) ** 2 < 1
    pred_box = ((zz - 2) / 27) ** 2 + ((yy + 1.5) / 19) ** 2 + ((xx - 1) / 29) ** 2 < 1
    truth = np.zeros((120, 512, 512), bool)
    pred = np.zeros_like(truth)
    where = (slice(40, 81), slice(200, 281), slice(220, 301))
    truth[where], pred[where] = truth_box, pred_box
    assert 55 < truth.sum() * np.prod(spacing) / 1000 < 65  # ml
    segmentation_metrics(pred, truth, spacing)  # warm caches (lookup tables)
    t0 = time.perf_counter()
    m = segmentation_metrics(pred, truth, spacing)
    assert time.perf_counter() - t0 < 1.0
    assert 0.85 < m["vd"] < 1 and m["hd95"] < 5
