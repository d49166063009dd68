"""Rasterisation of RTSTRUCT contours and marching-squares export, on synthetic geometry (no files)."""

from __future__ import annotations

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import InputError
from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.dicomrt.polygons import fill_even_odd, mask_to_polygons, polygon_self_intersects
from MnetImSegmentLib.dicomrt.rasterize import grid_from_contours, rasterize_rois, rasterize_structure_set
from MnetImSegmentLib.dicomrt.structure_set import Contour, RoiContours, StructureSet, load_name_map, select_rois
from MnetImSegmentLib.research.phantom import rotation_matrix

from helpers.rt_fixtures import circle, dice, square


def _sq(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


# --------------------------------------------------------------------------- even-odd fill
def test_fill_samples_pixel_centres():
    m = fill_even_odd([_sq(1.5, 2.5, 4.5, 5.5)], (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[3:6, 2:5] = True  # rows 3..5 (y in 2.5..5.5), columns 2..4
    assert (m == expected).all()


def test_fill_holes_and_nested_islands_xor():
    outer, hole, island = _sq(0.5, 0.5, 9.5, 9.5), _sq(2.5, 2.5, 7.5, 7.5), _sq(4.5, 4.5, 5.5, 5.5)
    ring = fill_even_odd([outer, hole], (10, 10))
    assert ring.sum() == 81 - 25 and not ring[5, 5] and ring[1, 1]
    nested = fill_even_odd([outer, hole, island], (10, 10))
    assert nested[5, 5] and not nested[4, 4] and nested.sum() == 81 - 25 + 1
    # Two overlapping squares of one plane: the overlap is a hole (what planning systems show).
    xor = fill_even_odd([_sq(0.5, 0.5, 4.5, 4.5), _sq(2.5, 2.5, 6.5, 6.5)], (8, 8))
    assert not xor[3, 3] and xor[1, 1] and xor[5, 5]


def test_fill_self_intersecting_bowtie_and_star():
    bowtie = np.array([[0.5, 0.5], [8.5, 8.5], [8.5, 0.5], [0.5, 8.5]])
    m = fill_even_odd([bowtie], (10, 10))
    assert m[4, 2] and m[4, 7] and not m[1, 4] and not m[7, 4]
    assert polygon_self_intersects(bowtie)
    t = np.deg2rad(90 + 144 * np.arange(5))  # pentagram: the centre is crossed twice -> even -> outside
    star = np.column_stack([20 + 15 * np.cos(t), 20 + 15 * np.sin(t)])
    s = fill_even_odd([star], (40, 40))
    assert not s[20, 20] and s.sum() > 50
    assert polygon_self_intersects(star)
    assert not polygon_self_intersects(_sq(0, 0, 5, 5))
    assert not polygon_self_intersects(circle(0, 0, 10, 0)[:, :2])


def test_fill_matches_matplotlib_on_random_polygons():
    """Independent check of the vectorised fill against matplotlib's point-in-path test."""
    import matplotlib.path

    rng = np.random.default_rng(3)
    jj, ii = np.mgrid[0:40, 0:50]
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
    for _ in range(20):
        n = rng.integers(3, 30)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(3, 25, n)
        poly = np.column_stack([25 + r * np.cos(ang), 20 + r * np.sin(ang)]) + rng.uniform(-0.49, 0.49, (n, 2))
        ours = fill_even_odd([poly], (40, 50))
        ref = matplotlib.path.Path(poly).contains_points(centres).reshape(40, 50)
        assert (ours != ref).sum() <= 2  # only centres exactly on an edge may differ


def test_fill_clips_outside_the_grid():
    m = fill_even_odd([_sq(-10.5, -10.5, 2.5, 2.5)], (6, 6))
    assert m[:3, :3].all() and m.sum() == 9


# --------------------------------------------------------------------------- marching squares export
@pytest.mark.parametrize("seed", range(6))
def test_mask_to_polygons_round_trip_exact(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((30, 34)) < 0.45  # noisy: diagonal neighbours, holes, islands, border pixels
    if seed == 0:
        m[:] = False
        m[5:25, 5:25] = True
        m[10:15, 10:15] = False
        m[12, 12] = True
    polys = mask_to_polygons(m)
    assert (fill_even_odd(polys, m.shape) == m).all()


def test_holes_run_opposite_to_outer_boundaries():
    m = np.zeros((12, 12), bool)
    m[2:10, 2:10] = True
    m[4:8, 4:8] = False
    polys = mask_to_polygons(m)
    assert len(polys) == 2
    areas = sorted((0.5 * (np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))) for p in polys),
                   key=abs)
    assert np.sign(areas[0]) != np.sign(areas[1])
    assert abs(areas[1]) > abs(areas[0])
    assert all(len(p) <= 8 for p in polys)  # collinear points dropped


def test_empty_and_full_masks():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    full = np.ones((5, 5), bool)
    assert (fill_even_odd(mask_to_polygons(full), (5, 5)) == full).all()


# --------------------------------------------------------------------------- rasterising ROIs
AXIAL = Geometry((1.0, 1.0, 2.0), (-20.0, -20.0, 0.0))
SHAPE = (10, 41, 41)


def _roi(contours, name="CTV"):
    return RoiContours(1, name, contours=[Contour(np.asarray(p, float), t) for p, t in contours])


def test_mask_area_is_compared_with_the_polygon_area():
    """Pixel-centre inclusion is unbiased: the filled area matches the polygons' own (holes subtracted)."""
    roi = _roi([(circle(0.3, -0.2, 12.0, 2.0 * k), "CLOSED_PLANAR") for k in range(2, 6)]
               + [(square(0, 0, 4.0, 2.0 * k), "CLOSED_PLANAR") for k in range(2, 6)])  # a hole on every slice
    m, rep = rasterize_rois([roi], AXIAL, SHAPE)
    polygon = 24 * 12.0**2 * np.sin(2 * np.pi / 48) - 64.0  # the 48-gon minus the 8 x 8 mm hole
    assert rep.contour_area_mm2 == pytest.approx(4 * polygon, rel=1e-9)
    assert rep.mask_area_mm2 == pytest.approx(m.sum() * 1.0)
    assert 0.97 < rep.mask_to_contour_area < 1.03
    assert rep.to_dict()["mask_to_contour_area"] == pytest.approx(rep.mask_to_contour_area, abs=1e-4)


def test_contours_matched_to_slices_by_position_without_uids():
    roi = _roi([(square(0, 0, 5.5, 2.0 * k + 0.6), "CLOSED_PLANAR") for k in range(2, 6)])  # 0.6 mm above each slice
    m, rep = rasterize_rois([roi], AXIAL, SHAPE)
    assert m[2:6].reshape(4, -1).sum(1).tolist() == [121] * 4 and m[[0, 1, 6, 7, 8, 9]].sum() == 0
    assert rep.used == 4 and rep.slices == 4 and rep.max_off_slice_mm == pytest.approx(0.6, abs=1e-6)


def test_nearest_plane_wins_when_two_planes_share_a_slice():
    roi = _roi([(square(0, 0, 3.5, 4.3), "CLOSED_PLANAR"), (square(0, 0, 6.5, 3.4), "CLOSED_PLANAR")])  # both -> slice 2
    m, rep = rasterize_rois([roi], AXIAL, SHAPE)
    assert m[2].sum() == 49 and rep.planes_dropped == 1  # z 4.3 is 0.3 mm from slice 2, z 3.4 is 0.6 mm


def test_sparser_contours_fill_between_but_do_not_bridge_gaps():
    g = Geometry((1.0, 1.0, 1.0), (-20.0, -20.0, 0.0))
    zs = [2, 4, 6, 8, 16, 18]  # contours every 2 mm, and a real 8 mm gap
    roi = _roi([(square(0, 0, 4, z), "CLOSED_PLANAR") for z in zs])
    m, rep = rasterize_rois([roi], g, (20, 41, 41))
    filled = m.reshape(20, -1).any(1)
    # Each plane stands for half a plane spacing (1 mm) either side: 3, 5, 7, 9, 15 and 17 are filled,
    # the middle of the gap stays empty, and nothing is added beyond the first and last planes.
    assert filled[2:10].all() and filled[15:19].all() and not filled[10:15].any() and not filled[19]
    assert rep.filled_slices == 6
    assert any("nearest plane" in n for n in rep.notes)


def test_non_axial_contour_goes_to_mean_slice_and_is_reported():
    pts = circle(0, 0, 8, 0.0)
    pts[:, 2] = 9.0 + 0.15 * pts[:, 0]  # tilted: 2.4 mm spread, mean z 9 -> slice 4 (z = 8) is 1 mm away, 5 (z=10) too
    pts[:, 2] += 0.2  # mean 9.2 -> slice 5
    m, rep = rasterize_rois([_roi([(pts, "CLOSED_PLANAR")])], AXIAL, SHAPE)
    assert m[5].sum() > 150 and m.sum() == m[5].sum()
    assert rep.non_axial == 1 and rep.max_spread_mm == pytest.approx(2.4, abs=0.05)
    assert any("not on one slice" in n for n in rep.notes)
    steep = pts.copy()
    steep[:, 2] = 9.0 + 1.0 * steep[:, 0]  # 16 mm spread: not drawn on these slices
    m2, rep2 = rasterize_rois([_roi([(steep, "CLOSED_PLANAR")])], AXIAL, SHAPE)
    assert m2.sum() == 0 and rep2.skipped_too_oblique == 1


def test_open_point_outside_and_self_intersecting_are_reported():
    bowtie = np.array([[-8, -8, 4], [8, 8, 4], [8, -8, 4], [-8, 8, 4]], float)
    roi = _roi([
        (square(0, 0, 5.5, 6.0), "CLOSED_PLANAR"),
        (np.array([[0, 0, 0], [0, 0, 10], [1, 0, 30]], float), "OPEN_NONPLANAR"),  # applicator channel
        (np.array([[0, 0, 8], [2, 0, 8]], float), "OPEN_PLANAR"),
        (np.array([[0, 0, 8]], float), "POINT"),
        (square(0, 0, 5, 60.0), "CLOSED_PLANAR"),  # above the CT
        (square(18, 0, 6, 10.0), "CLOSED_PLANAR"),  # crosses the field-of-view edge
        (bowtie, "CLOSED_PLANAR"),
    ])
    m, rep = rasterize_rois([roi], AXIAL, SHAPE)
    assert (rep.skipped_open, rep.skipped_point, rep.outside, rep.clipped, rep.self_intersecting) == (2, 1, 1, 1, 1)
    text = " ".join(rep.notes)
    for word in ("open contour", "POINT", "outside", "field of view", "self-intersecting"):
        assert word in text
    assert m[3].sum() == 121 and m[2].sum() > 0 and m[5].sum() > 0


def test_oblique_grid_matches_physical_sphere():
    """Contours drawn on an oblique CT's slices, rasterised on that grid, match the analytic sphere."""
    d = rotation_matrix(12, -8, 30)
    g = Geometry((1.0, 1.0, 1.5), (0.0, 0.0, 0.0), tuple(d.ravel()))
    shape = (20, 40, 40)
    centre = g.index_to_physical((19.5, 19.5, 9.5))
    contours = []
    jj, ii = np.mgrid[0:40, 0:40]
    truth = np.zeros(shape, bool)
    for k in range(shape[0]):
        pts_ij = np.column_stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)])
        truth[k] = (np.linalg.norm(g.index_to_physical(pts_ij) - centre, axis=1) < 12).reshape(40, 40)
        # The planning system's contour: the circle where the sphere cuts this slice's plane.
        h = (k - 9.5) * 1.5
        if abs(h) < 12:
            r = np.sqrt(144 - h * h)
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            local = np.column_stack([19.5 + r * np.cos(t), 19.5 + r * np.sin(t), np.full(64, float(k))])
            contours.append((g.index_to_physical(local), "CLOSED_PLANAR"))
    m, rep = rasterize_rois([_roi(contours)], g, shape)
    assert rep.non_axial == 0 and rep.skipped_too_oblique == 0
    assert dice(m, truth) > 0.97
    # The same contours on an axial grid are tilted by the rotation: squashed to their mean slice and reported.
    g_ax = Geometry((1.0, 1.0, 1.5), tuple(np.asarray(centre) - 30), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    _, rep_ax = rasterize_rois([_roi(contours)], g_ax, (40, 60, 60))
    assert rep_ax.non_axial > 0


# --------------------------------------------------------------------------- choosing ROIs
def _ss(*names):
    return StructureSet(path=None, rois=[RoiContours(i, n) for i, n in enumerate(names, start=1)])


@pytest.mark.parametrize("name", ["CTV", "ctv", "HR-CTV", "hrctv", "CTV_HR", "ctv-hr", "HR CTV"])
def test_default_pattern_matches_real_ctv_names(name):
    assert [r.name for r in select_rois(_ss("BODY", name, "Bladder", "IR-CTV", "PTV"))] == [name]


def test_hr_ctv_preferred_over_plain_ctv_and_case_on_request():
    assert [r.name for r in select_rois(_ss("CTV", "HR CTV", "Bladder"))] == ["HR CTV"]
    with pytest.raises(InputError, match="Several ROIs match"):
        select_rois(_ss("HR-CTV", "ctv_hr", "CTV"))
    assert [r.name for r in select_rois(_ss("ctv", "CTV"), "(?-i:CTV)")] == ["CTV"]


def test_pattern_name_map_and_several_matches():
    ss = _ss("HR-CTV", "IR-CTV", "Rectum")
    with pytest.raises(InputError, match="Several ROIs match"):
        select_rois(ss, r".*ctv")
    assert len(select_rois(ss, r".*ctv", union=True)) == 2
    assert [r.name for r in select_rois(ss, "target", load_name_map('{"hr-ctv": "target"}'))] == ["HR-CTV"]
    assert [r.name for r in select_rois(ss, "target", load_name_map({"target": ["IR-CTV"]}))] == ["IR-CTV"]
    with pytest.raises(InputError, match="no ROI matching 'bladder'.*'Rectum'"):
        select_rois(ss, "bladder")
    with pytest.raises(InputError, match="not a valid regular expression"):
        select_rois(ss, "ctv(")
    with pytest.raises(InputError, match="name map"):
        load_name_map("{not json")


def test_empty_contour_sequence_is_a_clear_error():
    ss = StructureSet(path=None, rois=[RoiContours(1, "CTV", contours=[])])
    with pytest.raises(InputError, match="empty contour sequence"):
        rasterize_structure_set(ss, AXIAL, SHAPE)


# --------------------------------------------------------------------------- grid from contours
def test_grid_from_contours_aligns_to_tilted_planes():
    d = rotation_matrix(6, -3, 0)
    contours = []
    for k in range(5):
        local = np.column_stack([circle(0, 0, 10, 0)[:, :2], np.full(48, 2.0 * k)])
        contours.append((local @ d.T + [5.0, -7.0, -600.0], "CLOSED_PLANAR"))
    roi = _roi(contours)
    g, shape = grid_from_contours([roi], spacing_mm=1.0)
    assert shape[0] == 5 and g.spacing[2] == pytest.approx(2.0)
    assert abs(g.direction_matrix[:, 2] @ d[:, 2]) > 0.9999
    m, rep = rasterize_rois([roi], g, shape)
    assert rep.non_axial == 0 and rep.slices == 5
    assert m.sum() * 2.0 / 1000 == pytest.approx(5 * np.pi * 100 * 2.0 / 1000, rel=0.08)
    g_ax, _ = grid_from_contours([roi], align_to_contours=False)
    assert np.allclose(g_ax.direction_matrix, np.eye(3))
