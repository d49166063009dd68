"""The applicator localiser finds the intrauterine tandem, not any metal (issue 11, item 1), and
reports pelvis signals (issue 12). Every case is a phantom that carries a distractor."""

import functools
import time

import numpy as np
import pytest

from MnetImSegmentLib.engine import applicator as applicator_module
from MnetImSegmentLib.engine.applicator import ApplicatorFit, _symmetry, locate_applicator, pelvis_signals
from MnetImSegmentLib.research.distractors import KINDS, add_distractors, pelvis_phantom
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix
from MnetImSegmentLib.research.phantom_styles import make_phantom_style
from MnetImSegmentLib.engine.roi import RoiSpec, locate_roi
from MnetImSegmentLib.core.volume import Geometry, Volume

from MnetImSegmentLib.research.localiser_survey import AXIS_TOL_DEG, OS_TOL_MM, errors, on_tandem, truth


def _phantom(seed, applicator, kinds=()):
    """Matrix 192; 100 mm of scan around the CTV, or 160 mm down to the femoral heads for hips."""
    if any(k.startswith("hip") for k in kinds):
        ph = pelvis_phantom(seed, applicator, matrix=192, slice_mm=2.5)
    else:
        ph = make_phantom(seed, matrix=192, slice_mm=2.0, z_extent_mm=100, applicator=applicator)
    return add_distractors(ph, list(kinds), np.random.default_rng(1000 + seed)) if kinds else ph


def _angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _assert_on_tandem(fit: ApplicatorFit, params: dict):
    truth_os, truth_axis = np.asarray(params["applicator_os_lps"]), np.asarray(params["applicator_axis_lps"])
    assert fit.found and fit.confidence >= 0.5, fit.to_dict()
    assert fit.kind == ("metal" if params["applicator_metal"] else "plastic")
    err = np.linalg.norm(np.asarray(fit.os_lps) - truth_os)
    assert err <= OS_TOL_MM, (err, fit.to_dict(), truth_os)
    assert _angle(fit.axis_lps, truth_axis) <= AXIS_TOL_DEG, (fit.to_dict(), truth_axis)
    assert abs(np.linalg.norm(fit.axis_lps) - 1.0) < 1e-6 and fit.length_mm > 20


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("applicator", ["metal", "plastic"])
def test_distractor_does_not_move_the_tandem(kind, applicator):
    seed = 3 + KINDS.index(kind)  # a different patient for each distractor
    ph = _phantom(seed, applicator, [kind])
    _assert_on_tandem(locate_applicator(ph.ct), ph.params)


@pytest.mark.parametrize("seed,applicator", [(0, "metal"), (1, "plastic"), (2, "metal"), (4, "plastic")])
def test_all_distractors_at_once(seed, applicator):
    ph = _phantom(seed, applicator, KINDS)
    fit = locate_applicator(ph.ct)
    _assert_on_tandem(fit, ph.params)
    assert fit.reasons  # the prostheses, screws, ... were seen and turned down, with a reason
    assert any("midline" in r or "front or back" in r for r in fit.reasons)


@functools.lru_cache(maxsize=None)
def _v3(seed: int):
    """A v3 patient on a 160 px, 2.5 mm grid (generated once per test session)."""
    return make_phantom_style("v3", seed, matrix=160, slice_mm=2.5, z_extent_mm=140)


# v3 patients (the training styles' generator) whose applicator carries interstitial needles: long,
# thin tubes parallel to the tandem 15-30 mm from it, of the applicator's metal or another. Before
# session 14 a steel or titanium needle beside a plastic tandem was taken for the tandem (the metal
# search trusted it and the plastic search never ran).
NEEDLE_CASES = {510001: "plastic ovoids, 1 steel needle", 510006: "plastic ovoids, 4 titanium needles",
                510004: "titanium ring, 7 titanium needles", 510015: "titanium ovoids, 2 steel needles"}


@pytest.mark.parametrize("seed", list(NEEDLE_CASES))
def test_interstitial_needles_are_not_the_tandem(seed):
    ph = _v3(seed)
    p = ph.params
    assert p["needles"] >= 1 and p["needle_material"] != "plastic", NEEDLE_CASES[seed]  # the case is what it says
    fit = locate_applicator(ph.ct)
    _assert_on_tandem_v3(fit, p)
    assert fit.kind == ("metal" if p["applicator_metal"] else "plastic"), fit.to_dict()
    assert any("interstitial needle" in r for r in fit.reasons), fit.reasons  # seen and turned down


# Plastic tandems whose wall is about as dense as the uterus around it (v3 draws each plastic part's
# HU in 100-400): the bright-tube search loses them; their air-filled source channel does not.
CHANNEL_CASES = {510018: "plastic ovoids, no needles", 510009: "plastic ovoids beside 8 titanium needles"}


@pytest.mark.parametrize("seed", list(CHANNEL_CASES))
def test_plastic_tandem_found_by_its_air_channel(seed, monkeypatch):
    ph = _v3(seed)
    assert ph.params["applicator_material"] == "plastic", CHANNEL_CASES[seed]
    fit = locate_applicator(ph.ct)
    _assert_on_tandem_v3(fit, ph.params)
    assert fit.kind == "plastic"
    # Without the channel search the same CT puts the os elsewhere: this case measures the channel.
    monkeypatch.setattr(applicator_module, "_channel_sets", lambda *args: [])
    blind = locate_applicator(ph.ct)
    assert not (blind.found and errors(blind, ph.params)[0] <= OS_TOL_MM)


@pytest.mark.parametrize("direction,slice_mm", [
    (rotation_matrix(7, -5, 20) @ np.diag([-1.0, 1.0, -1.0]), 3.0),  # oblique, x and z flipped
    (np.diag([1.0, -1.0, -1.0]), 2.0)])  # y and z flipped
def test_air_channel_gives_the_same_physical_answer_on_other_grids(direction, slice_mm):
    """The same patient sampled on an oblique or flipped grid with other slices: the channel search
    (physical points, in-plane openings on the slice axis) finds the same os and axis."""
    a = locate_applicator(_v3(510018).ct)
    ph = make_phantom_style("v3", 510018, matrix=160, slice_mm=slice_mm, z_extent_mm=140, direction=direction.ravel())
    assert not np.allclose(ph.ct.geometry.direction_matrix, np.eye(3))
    b = locate_applicator(ph.ct)
    _assert_on_tandem_v3(b, ph.params)
    # Another grid is another sampling (and noise) of the patient: within a slice and a half.
    assert np.linalg.norm(np.asarray(a.os_lps) - np.asarray(b.os_lps)) <= 1.5 * slice_mm, (a.to_dict(), b.to_dict())
    assert _angle(a.axis_lps, b.axis_lps) <= 5.0


def test_tandem_wins_a_tie_with_the_ovoid_stems_beside_it(monkeypatch):
    """A 1-pixel blur (a soft reconstruction kernel) of a plastic ring/ovoid applicator: the tandem
    and both ovoid stems, parallel to it 17-20 mm to each side, all pass every test (score 1.0).
    The ovoids are centred on the tandem only, so it must win the tie; the longest piece, the old
    tie-break, is a stem, with the os 75 mm too low (v2 phantom 500015 of the perturbation table)."""
    from MnetImSegmentLib.research import generalisation as gen
    from MnetImSegmentLib.research.localiser_survey import errors as fit_errors

    base = gen.generate("v2", 500015, 256)
    blurred = gen.perturb("blur 1px", "v2", 500015, 256, base)
    assert not base.params["applicator_metal"]
    fit = locate_applicator(blurred.ct)
    _assert_on_tandem(fit, blurred.params)
    assert sum(" score 1.00 " in r for r in fit.reasons) >= 1  # a rival tied with it: this case measures the tie
    monkeypatch.setattr(applicator_module, "_choose", lambda cands: max(cands, key=lambda c: (c.score, c.length), default=None))
    longest = locate_applicator(blurred.ct)
    assert longest.found and fit_errors(longest, blurred.params)[0] > 3 * OS_TOL_MM


# Soft reconstruction kernels (the perturbation table's "blur 1px"; session 18): a plastic tandem's
# thin wall keeps only +20-40 HU over the uterus and its air channel -80..-150 HU, so both
# fixed-threshold searches lose it. Each case was missed before the contrast-relative search
# (measured: 98/144 -> 104/144 blurred phantoms of v2-v7 on the tandem, none lost, blurred or not).
SOFT_KERNEL_CASES = {("v2", 500004): "plastic ring: nothing found before", ("v7", 570029): "plastic: nothing found before",
                     ("v6", 540013): "plastic: another object taken for it before"}


@functools.lru_cache(maxsize=None)
def _soft_kernel(style: str, seed: int):
    """(sharp, blurred) phantom of the perturbation table's evaluation grid."""
    from MnetImSegmentLib.research import generalisation as gen

    base = gen.generate(style, seed, 256)
    return base, gen.perturb("blur 1px", style, seed, 256, base)


def _without_relative_search(monkeypatch):
    plastic = applicator_module._plastic_candidates
    monkeypatch.setattr(applicator_module, "_plastic_candidates",
                        lambda *args, relative=False: ([], 0.0) if relative else plastic(*args))


@pytest.mark.parametrize("style,seed", list(SOFT_KERNEL_CASES))
def test_soft_kernel_plastic_tandem_is_found_by_its_contrast(style, seed, monkeypatch):
    sharp, blurred = _soft_kernel(style, seed)
    assert not blurred.params["applicator_metal"], SOFT_KERNEL_CASES[(style, seed)]
    fit = locate_applicator(blurred.ct)
    _assert_on_tandem_v3(fit, blurred.params)
    assert fit.kind == "plastic" and fit.contrast_relative
    # The sharp CT needs no relative search (it runs only when nothing else is trusted).
    crisp = locate_applicator(sharp.ct)
    _assert_on_tandem_v3(crisp, sharp.params)
    assert not crisp.contrast_relative
    # Without it the blurred CT's tandem is lost: this case measures the new search.
    _without_relative_search(monkeypatch)
    assert not on_tandem(locate_applicator(blurred.ct), blurred.params)


def test_soft_kernel_candidate_under_full_score_is_not_trusted(monkeypatch):
    """Blurred v5 530018: the contrast-relative search's best tube scores 0.8 (one test marginal).
    Such candidates were off the tandem 12 times of 19 (session 18), so it is not trusted; the same
    CT with the full-score rule relaxed would be."""
    _, blurred = _soft_kernel("v5", 530018)
    fit = locate_applicator(blurred.ct)
    assert not fit.found and fit.confidence <= 0.45, fit.to_dict()
    monkeypatch.setattr(applicator_module, "RELATIVE_MIN_SCORE", 0.5)
    relaxed = locate_applicator(blurred.ct)
    assert relaxed.found and relaxed.contrast_relative and relaxed.confidence < 0.95, relaxed.to_dict()


def test_soft_kernel_tandem_gives_the_same_physical_answer_on_an_oblique_anisotropic_grid():
    """The blurred v2 500004 (1.3 mm pixels, 2.5 mm slices) resampled onto an oblique, flipped grid
    with anisotropic pixels (1.1 x 1.5 mm, 2 mm slices): the in-plane top-hat and dark-dot radii are
    physical, so the same os. (Pixels of 1.9 mm lose it: the linear resampling blurs a soft-kernel CT
    further, and its ring falls under the contrast the search asks for, on a straight grid too.)"""
    _, ph = _soft_kernel("v2", 500004)
    a = locate_applicator(ph.ct)
    d = rotation_matrix(7, -5, 20) @ np.diag([-1.0, 1.0, -1.0])
    spacing, size = np.array([1.1, 1.5, 2.0]), np.array([284, 215, 90])
    origin = np.asarray(ph.params["applicator_os_lps"]) + np.array([0.0, 0.0, 15.0]) - d @ (spacing * (size - 1) / 2)
    b = locate_applicator(_resample(ph.ct, Geometry(spacing, origin, d.ravel()), size))
    assert a.contrast_relative and b.contrast_relative
    _assert_on_tandem_v3(b, ph.params)
    assert np.linalg.norm(np.asarray(a.os_lps) - np.asarray(b.os_lps)) <= 4.5, (a.to_dict(), b.to_dict())
    assert _angle(a.axis_lps, b.axis_lps) <= 5.0


# Small grids centred on the origin: identity, oblique + flipped + anisotropic, flipped + anisotropic.
SMALL_GRIDS = [(np.eye(3), (1.0, 1.0, 2.5)),
               (rotation_matrix(7, -5, 20) @ np.diag([-1.0, 1.0, -1.0]), (0.8, 1.3, 2.0)),
               (np.diag([1.0, -1.0, -1.0]), (1.4, 0.9, 3.0))]


def _centred_grid(direction, spacing, size_xyz):
    """The grid (``size_xyz`` voxels) centred on the origin, and the physical point of every voxel in numpy order."""
    spacing = np.asarray(spacing)
    origin = -np.asarray(direction) @ (spacing * (np.asarray(size_xyz) - 1) / 2)
    geom = Geometry(tuple(spacing), tuple(origin), tuple(np.asarray(direction).ravel()))
    k = np.stack(np.meshgrid(*[np.arange(n) for n in np.asarray(size_xyz)[::-1]], indexing="ij"), -1).reshape(-1, 3)
    return geom, geom.index_to_physical(k[:, ::-1].astype(float))


# A soft kernel thins a steel/titanium tandem's >= 2000 HU core to a needle's, so the needle test
# halved its score and an ovoid stem beside it won (os 22 and 58 mm off); at half its own peak it
# keeps its width (session 19: blurred 142 -> 152/192 on the tandem with the other two changes below).
SOFT_KERNEL_METAL_CASES = [("v2", 500003), ("v2", 500021)]


@pytest.mark.parametrize("style,seed", SOFT_KERNEL_METAL_CASES)
def test_soft_kernel_metal_tandem_keeps_its_width_at_half_peak(style, seed, monkeypatch):
    sharp, blurred = _soft_kernel(style, seed)
    assert blurred.params["applicator_metal"]
    fit = locate_applicator(blurred.ct)
    _assert_on_tandem_v3(fit, blurred.params)
    assert fit.kind == "metal" and fit.confidence >= 0.95, fit.to_dict()
    _assert_on_tandem_v3(locate_applicator(sharp.ct), sharp.params)
    # Measured by its >= 2000 HU core alone, the blurred tandem loses to a stem: this case measures it.
    monkeypatch.setattr(applicator_module, "_half_peak_area", lambda *args: 0.0)
    assert not on_tandem(locate_applicator(blurred.ct), blurred.params)


def test_soft_kernel_metal_tandem_gives_the_same_physical_answer_on_an_oblique_anisotropic_grid():
    """The blurred v2 500021 resampled onto an oblique, flipped grid with anisotropic pixels: the
    half-peak cross-section is read in physical mm around the fitted line, so the same os."""
    _, ph = _soft_kernel("v2", 500021)
    a = locate_applicator(ph.ct)
    d = rotation_matrix(-6, 8, -25) @ np.diag([1.0, -1.0, -1.0])
    spacing, size = np.array([0.9, 1.4, 2.0]), np.array([330, 215, 90])
    origin = np.asarray(ph.params["applicator_os_lps"]) + np.array([0.0, 0.0, 15.0]) - d @ (spacing * (size - 1) / 2)
    b = locate_applicator(_resample(ph.ct, Geometry(spacing, origin, d.ravel()), size))
    assert a.kind == b.kind == "metal" and b.confidence >= 0.95, b.to_dict()
    _assert_on_tandem_v3(b, ph.params)
    assert np.linalg.norm(np.asarray(a.os_lps) - np.asarray(b.os_lps)) <= 4.5, (a.to_dict(), b.to_dict())
    assert _angle(a.axis_lps, b.axis_lps) <= 5.0


@pytest.mark.parametrize("direction,spacing", SMALL_GRIDS)
def test_half_peak_area_of_a_blurred_tandem_and_a_needle(direction, spacing):
    """A 6 mm metal tube and a 1.6 mm needle, both with soft edges (a logistic edge 0.6 mm wide, about
    a 1 mm Gaussian blur), 25 deg from S: at half its own peak the tube measures its own
    cross-section (pi 3^2 = 28 mm^2) on every grid, the needle stays under the half-peak needle limit."""
    size = np.array([72, 72, 40])
    geom, p = _centred_grid(direction, spacing, size)
    axis = np.array([np.sin(np.radians(25.0)), 0.0, np.cos(np.radians(25.0))])
    fit = dict(c=np.zeros(3), e=axis, thin_bins=np.arange(-14.0, 14.0, 2.0) + 1.0)
    for radius, lo, hi in ((3.0, 0.8 * np.pi * 9, 1.2 * np.pi * 9), (0.8, 0.0, applicator_module.HALF_PEAK_AREA_MM2[0])):
        dist = np.linalg.norm(p - np.outer(p @ axis, axis), axis=1)
        hu = 40.0 + 2960.0 / (1.0 + np.exp((dist - radius) / 0.6))
        vol = Volume(hu.reshape(tuple(size[::-1])).astype(np.float32), geom)
        assert lo <= applicator_module._half_peak_area(vol, fit, 6.0) <= hi, radius


def test_steeply_anteverted_metal_tandem_is_fitted_along_its_uterine_part(monkeypatch):
    """v3 510013: a steel tandem anteverted 60 deg from S above a vertical vaginal part. Its top, read
    by the PCA of its points, leaned past the 75 deg start limit, and the vaginal part was fitted
    instead (os 13 mm, axis 58 deg off); through the per-level centroids it is fitted along its
    uterine part."""
    sharp, _ = _soft_kernel("v3", 510013)
    fit = locate_applicator(sharp.ct)
    _assert_on_tandem_v3(fit, sharp.params)
    assert fit.kind == "metal" and fit.confidence >= 0.9, fit.to_dict()
    monkeypatch.setattr(applicator_module, "_level_centroid_line", applicator_module._pca)
    assert not on_tandem(locate_applicator(sharp.ct), sharp.params)


def test_steeply_anteverted_metal_tandem_on_an_oblique_flipped_anisotropic_grid():
    """The same v3 510013 resampled onto an oblique, flipped grid with anisotropic pixels: the levels
    are levels of physical S, so the same os and axis."""
    sharp, _ = _soft_kernel("v3", 510013)
    a = locate_applicator(sharp.ct)
    d = rotation_matrix(-6, 8, -25) @ np.diag([1.0, -1.0, -1.0])
    spacing, size = np.array([0.9, 1.4, 2.0]), np.array([330, 215, 90])
    origin = np.asarray(truth(sharp.params)[0]) + np.array([0.0, 0.0, 15.0]) - d @ (spacing * (size - 1) / 2)
    b = locate_applicator(_resample(sharp.ct, Geometry(spacing, origin, d.ravel()), size))
    assert b.kind == "metal", b.to_dict()
    _assert_on_tandem_v3(b, sharp.params)
    assert np.linalg.norm(np.asarray(a.os_lps) - np.asarray(b.os_lps)) <= 4.5, (a.to_dict(), b.to_dict())
    assert _angle(a.axis_lps, b.axis_lps) <= 5.0


@pytest.mark.parametrize("direction,spacing", SMALL_GRIDS)
def test_level_centroid_line_of_a_tilted_tube_top(direction, spacing):
    """The top 16 mm (in S) of a tube 60 deg from S, 10 mm wide (a 6-7 mm steel tandem bloomed), as
    voxel centres of the grid: the line through the per-level centroids is the tube's axis; the PCA
    of the points leans towards the level."""
    size = np.array([96, 96, 40])
    geom, p = _centred_grid(direction, spacing, size)
    axis = np.array([0.0, np.sin(np.radians(60.0)), np.cos(np.radians(60.0))])
    t = p @ axis
    pts = p[(np.linalg.norm(p - np.outer(t, axis), axis=1) <= 5.0) & (p[:, 2] >= 0.0) & (p[:, 2] <= 16.0)]
    _, e = applicator_module._level_centroid_line(pts)
    assert _angle(e, axis) <= 3.0, e
    _, e_pca = applicator_module._pca(pts)
    assert _angle(e_pca, axis) > 5.0  # what the old start measured: the case for the centroids


# A plastic fit under full score (a tube with no ring/ovoids seen: 0.6) is trusted, and kept the
# contrast-relative search from running; on these blurred CTs it was a needle or a stem 46-70 mm off.
RELATIVE_AFTER_PLASTIC_CASES = [("v4", 520009), ("v6", 540012), ("v7", 570007)]


@pytest.mark.parametrize("style,seed", RELATIVE_AFTER_PLASTIC_CASES)
def test_soft_kernel_plastic_fit_under_full_score_gives_way_to_the_tandem(style, seed, monkeypatch):
    _, blurred = _soft_kernel(style, seed)
    fit = locate_applicator(blurred.ct)
    _assert_on_tandem_v3(fit, blurred.params)
    assert fit.kind == "plastic" and fit.contrast_relative and fit.confidence >= 0.95, fit.to_dict()
    # With the relative search run only when nothing is trusted, the weaker fit stands, off the tandem.
    monkeypatch.setattr(applicator_module, "_relative_search_needed",
                        lambda best: best is None or best.score < applicator_module.TRUST)
    old = locate_applicator(blurred.ct)
    assert old.found and old.confidence < 0.95 and not old.contrast_relative and not on_tandem(old, blurred.params)


def test_a_tube_the_relative_search_confirms_keeps_its_fixed_threshold_fit(monkeypatch):
    """Sharp v7 570037: a plastic tube with no ring seen (0.6) and the relative search's best (1.0)
    are the same tube; the fixed-threshold fit's os (1.4 mm off) is kept, not the relative one's
    (4.5 mm, axis 12 deg off): of such pairs the fixed one was the closer in 5 of 7 (session 19)."""
    sharp, _ = _soft_kernel("v7", 570037)
    calls = []
    plastic = applicator_module._plastic_candidates

    def spy(*args, relative=False):
        out = plastic(*args, relative=relative)
        calls.append((relative, out[0]))
        return out

    monkeypatch.setattr(applicator_module, "_plastic_candidates", spy)
    fit = locate_applicator(sharp.ct)
    assert [r for r, _ in calls] == [False, True]
    _assert_on_tandem_v3(fit, sharp.params)
    assert fit.kind == "plastic" and not fit.contrast_relative and fit.confidence < 0.95, fit.to_dict()
    rel = max(calls[1][1], key=lambda c: c.score)
    assert rel.score >= 0.95
    assert np.linalg.norm(rel.os - np.asarray(fit.os_lps)) > 2.0  # a different os was on offer, and turned down


@pytest.mark.parametrize("direction,spacing", SMALL_GRIDS)
def test_dark_dot_contrast_sees_a_thin_dark_tube_and_not_a_fat_plane(direction, spacing):
    """Tissue at 60 HU holding a 3 mm dark tube (-100 HU, 30 deg from S: an air channel after a soft
    kernel) and a 3 mm dark sheet (a fat plane, -100 HU): the tube is a dark dot on every grid, the
    sheet, dark along its own line, is not."""
    size = np.array([64, 64, 24])
    geom, p = _centred_grid(direction, spacing, size)
    axis = np.array([np.sin(np.radians(30.0)), 0.0, np.cos(np.radians(30.0))])
    tube = np.linalg.norm(p - np.outer(p @ axis, axis), axis=1) <= 1.5
    sheet = np.abs(p[:, 0] - 20.0) <= 1.5  # a plane x = 20 mm, 3 mm thick
    hu = np.where(tube | sheet, -100.0, 60.0).reshape(tuple(size[::-1])).astype(np.float32)
    work = applicator_module._grid(Volume(hu, geom), 0.1)  # full resolution
    dot = applicator_module._dark_dot_contrast(hu, work).ravel()
    inner = np.abs(p[:, 2]) < 15.0  # away from the slab ends
    core_tube = inner & (np.linalg.norm(p - np.outer(p @ axis, axis), axis=1) <= 0.75 * max(spacing[:2]))
    core_sheet = inner & (np.abs(p[:, 0] - 20.0) <= 0.75 * max(spacing[:2])) & (np.linalg.norm(p - np.outer(p @ axis, axis), axis=1) > 8.0)
    assert core_tube.any() and core_sheet.any()
    assert np.median(dot[core_tube]) >= applicator_module.RELATIVE_CHANNEL_HU
    assert dot[core_sheet].max() < 0.5 * applicator_module.RELATIVE_CHANNEL_HU


@pytest.mark.parametrize("shift,tilt_deg,same", [((3.0, 0, 0), 0, True), ((2.0, -9.0, -18.0), 4, True),
                                                  ((18.0, 0, 0), 0, False), ((0, 0, 0), 30, False)])
def test_same_tube(shift, tilt_deg, same):
    """Two fits of one tube (its wall and its air channel, an os read higher or lower along it) against
    a parallel tube 18 mm aside (an ovoid stem) or a crossing one."""
    def cand(os_, axis):
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        return applicator_module._Candidate("plastic", 1.0, np.asarray(os_, float), np.asarray(os_, float) + 60 * axis,
                                            axis, 60.0, {"symmetry": 0.5, "ring_ovoids": 1.0}, "")
    t = np.radians(tilt_deg)
    a = cand((0, 0, 0), (0, 0.5, 1))
    b = cand(shift, (np.sin(t), 0.5 * np.cos(t), np.cos(t)))
    assert applicator_module._same_tube(a, b) is same


def test_ovoids_behind_the_tandem_count_as_its_ovoids():
    """The real structure set puts both ovoids ~16 mm behind the tandem: still the tandem's ovoids
    (full confidence), where balance around the line alone said no (0.6)."""
    ph = _v3(510011)
    assert ph.params["applicator"] == "ovoids" and ph.params["needles"] == 0
    fit = locate_applicator(ph.ct)
    _assert_on_tandem_v3(fit, ph.params)
    assert fit.confidence >= 0.99, fit.to_dict()


def _ring(n=200, r=16.0):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([r * np.cos(a), r * np.sin(a), np.zeros(n)])


def _ball(center, r=8.0, n=150, seed=0):
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return np.asarray(center, float) + r * p / np.linalg.norm(p, axis=1, keepdims=True) * np.random.default_rng(seed + 1).uniform(0, 1, (n, 1))


@pytest.mark.parametrize("material,expected", [
    ("ring", "high"), ("ovoids level", "high"), ("ovoids 16 mm behind", "high"),
    ("one ovoid", "low"), ("ring seen from a needle 22 mm away", "low"), ("ovoids 35 mm behind", "low")])
def test_symmetry_of_ring_and_ovoid_material(material, expected):
    radial = {"ring": _ring(),
              "ovoids level": np.concatenate([_ball([-16, 0, 0]), _ball([16, 0, 0], seed=3)]),
              "ovoids 16 mm behind": np.concatenate([_ball([-15, 16, 0]), _ball([15, 16, 0], seed=3)]),
              "one ovoid": _ball([12, 20, 0]),
              "ring seen from a needle 22 mm away": (r := _ring() + [22.0, 0.0, 0.0])[np.linalg.norm(r, axis=1) <= 35],
              "ovoids 35 mm behind": np.concatenate([_ball([-15, 35, 0]), _ball([15, 35, 0], seed=3)])}[material]
    s = _symmetry(radial - np.outer(radial @ [0, 0, 1.0], [0, 0, 1.0]))
    assert (s >= 0.7) if expected == "high" else (s < 0.3), s


def _assert_on_tandem_v3(fit: ApplicatorFit, params: dict):
    assert on_tandem(fit, params), (errors(fit, params), fit.to_dict())


@pytest.mark.parametrize("kinds", [(), ("hip_left",), ("hip_right",), ("hip_both",),
                                   ("hip_both", "spinal_screws", "clips", "fiducials", "calcifications",
                                    "contrast_bladder", "contrast_bowel", "table")])
def test_no_applicator_is_not_found(kinds):
    """A pelvis without applicator (with a hip prosthesis, spinal hardware, ...) is not trusted."""
    ph = _phantom(7, None, kinds)
    fit = locate_applicator(ph.ct)
    assert not fit.found and fit.confidence < 0.5, fit.to_dict()
    assert fit.reasons
    roi = locate_roi(ph.ct, RoiSpec())
    assert roi.method == "body" and roi.confidence is None


def test_hip_prosthesis_no_longer_moves_the_roi():
    """Today's "most metal" rule put the ROI at the prosthesis; the ROI is now at the os."""
    ph = _phantom(5, "metal", ["hip_both"])
    roi = locate_roi(ph.ct, RoiSpec())
    os_ = np.asarray(ph.params["applicator_os_lps"])
    assert roi.method == "applicator" and roi.confidence >= 0.5
    assert np.linalg.norm(np.asarray(roi.center) - os_) <= OS_TOL_MM
    k = ph.ct.geometry.physical_to_index(os_)[roi.slice_axis]
    assert roi.slice_range[0] <= k <= roi.slice_range[1]
    assert roi.to_dict()["confidence"] >= 0.5
    ctv = np.flatnonzero(ph.mask().array.any((1, 2)))
    assert roi.slice_range[0] <= ctv.min() and ctv.max() <= roi.slice_range[1]


def _resample(volume: Volume, geometry: Geometry, size_xyz) -> Volume:
    import SimpleITK as sitk

    out = sitk.Resample(volume.to_sitk(), [int(s) for s in size_xyz], sitk.Transform(), sitk.sitkLinear,
                        geometry.origin, geometry.spacing, geometry.direction, -1024.0, sitk.sitkInt16)
    return Volume.from_sitk(out)


@pytest.mark.parametrize("applicator", ["metal", "plastic"])
def test_same_physical_answer_on_oblique_flipped_anisotropic_grid(applicator):
    """The same phantom resampled onto an oblique, flipped, anisotropic grid: same os and axis."""
    ph = _phantom(6, applicator, ["hip_right", "calcifications"])
    a = locate_applicator(ph.ct)
    d = rotation_matrix(7, -5, 20) @ np.diag([-1.0, 1.0, -1.0])  # oblique, x and z flipped
    spacing = np.array([1.3, 1.9, 3.0])
    size = np.array([220, 180, 54])
    centre = np.asarray(ph.params["applicator_os_lps"]) + np.array([0.0, 0.0, 12.0])
    origin = centre - d @ (spacing * (size - 1) / 2)
    moved = _resample(ph.ct, Geometry(spacing, origin, d.ravel()), size)
    b = locate_applicator(moved)
    assert a.found and b.found and a.kind == b.kind == applicator
    assert np.linalg.norm(np.asarray(a.os_lps) - np.asarray(b.os_lps)) <= 3.0, (a.to_dict(), b.to_dict())
    assert _angle(a.axis_lps, b.axis_lps) <= 5.0
    _assert_on_tandem(b, ph.params)


def test_pelvis_signals_see_a_pelvis():
    ph = pelvis_phantom(0, None, matrix=192, slice_mm=2.5)
    sig = pelvis_signals(ph.ct)
    heads = sig["femoral_heads"]
    assert heads["pair"], heads
    for name, truth in zip(("right", "left"), ph.params["femoral_heads_lps"]):  # heads[0] is at -x: right
        assert np.linalg.norm(np.asarray(heads[name]["center_lps"]) - truth) < 15, (heads, truth)
        assert 15 <= heads[name]["radius_mm"] <= 30
    assert abs(sig["body_width_mm"] - ph.params["body_width_mm"]) < 0.15 * ph.params["body_width_mm"]
    assert 0.01 < sig["bone_fraction"] < 0.2 and sig["metal_ml"] == 0.0
    assert sig["air_hu"] < -900 and -150 < sig["fat_hu"] < -20 and 0 < sig["soft_tissue_hu"] < 100
    # A prosthetic head is still a head: the pelvis stays a pelvis, and its metal is counted.
    hips = pelvis_signals(add_distractors(ph, ["hip_both"], np.random.default_rng(0)).ct)
    assert hips["femoral_heads"]["pair"] and hips["metal_ml"] > 20


def _synthetic(kind: str) -> Volume:
    """Not a pelvis: a water cylinder, or a chest-like slab (lungs, a vertebra on the midline, ribs)."""
    nz, n, sp = 40, 128, 3.0
    zz, yy, xx = np.meshgrid(np.arange(nz), (np.arange(n) - n / 2) * sp, (np.arange(n) - n / 2) * sp, indexing="ij")
    body = (xx / 160) ** 2 + (yy / 110) ** 2 <= 1
    arr = np.where(body, 0.0, -1000.0)
    if kind == "chest":
        arr = np.where(body, -60.0, -1000.0)
        for sx in (-1, 1):
            arr[((xx - sx * 70) / 55) ** 2 + (yy / 75) ** 2 <= 1] = -850.0  # lungs
        arr[(xx / 20) ** 2 + ((yy - 60) / 18) ** 2 <= 1] = 300.0  # vertebral body, midline
        ring = np.abs(np.sqrt((xx / 150) ** 2 + (yy / 100) ** 2) - 1.0) < 0.04
        arr[ring & (zz % 8 < 3)] = 700.0  # ribs
    return Volume(arr.astype(np.int16), Geometry((sp, sp, 5.0), (-n / 2 * sp, -n / 2 * sp, 0.0)))


@pytest.mark.parametrize("kind", ["water", "chest"])
def test_pelvis_signals_see_no_pelvis(kind):
    sig = pelvis_signals(_synthetic(kind))
    assert not sig["femoral_heads"]["pair"], sig
    assert sig["metal_ml"] == 0.0
    if kind == "water":
        assert sig["bone_fraction"] == 0.0 and abs(sig["soft_tissue_hu"]) < 1
    fit = locate_applicator(_synthetic(kind))
    assert not fit.found


def test_empty_image_is_not_found():
    fit = locate_applicator(Volume(np.full((8, 32, 32), -1000, np.int16)))
    assert not fit.found and fit.kind == "none" and fit.os_lps is None and "no body" in fit.reasons[0]
    d = fit.to_dict()
    assert d["found"] is False and d["os_lps_mm"] is None and isinstance(d["reasons"], list)


@pytest.mark.parametrize("applicator", ["metal", "plastic"])
def test_runtime_on_a_clinical_size_ct(applicator):
    """512 x 512 x 120 (0.9 x 0.9 x 2.5 mm; a 192-matrix phantom resampled): target < 0.3 s on a core."""
    ph = make_phantom(20231, matrix=192, slice_mm=2.5, z_extent_mm=300, applicator=applicator)
    g = ph.ct.geometry
    spacing = np.array([g.spacing[0] * 191 / 511, g.spacing[1] * 191 / 511, g.spacing[2]])
    ct = _resample(ph.ct, Geometry(spacing, g.origin, g.direction), (512, 512, ph.ct.shape[0]))
    assert ct.shape == (120, 512, 512)
    locate_applicator(ct)  # warm-up (imports, first allocations)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fit = locate_applicator(ct)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pelvis_signals(ct)
    t_sig = time.perf_counter() - t0
    print(f"\nlocate_applicator on 512x512x120 ({applicator}): best {min(times):.3f} s, "
          f"median {np.median(times):.3f} s; pelvis_signals {t_sig:.3f} s")
    _assert_on_tandem(fit, ph.params)
    assert min(times) < 1.5  # generous: shared CI cores; measured 0.12-0.29 s on an idle core


@pytest.mark.slow
def test_hip_prosthesis_table():
    """20 seeds x {left, right, both} x {metal, plastic}: % of cases where the localiser (and the ROI)
    is on the tandem. Target 100 %."""
    rows = []
    for side in ("hip_left", "hip_right", "hip_both"):
        for applicator in ("metal", "plastic"):
            on = roi_on = 0
            for seed in range(20):
                ph = add_distractors(pelvis_phantom(seed, applicator), [side], np.random.default_rng(seed))
                os_ = np.asarray(ph.params["applicator_os_lps"])
                fit = locate_applicator(ph.ct)
                on += on_tandem(fit, ph.params)
                roi = locate_roi(ph.ct, RoiSpec())
                k = ph.ct.geometry.physical_to_index(os_)[roi.slice_axis]
                roi_on += bool(np.linalg.norm(np.asarray(roi.center[:2]) - os_[:2]) <= 15
                               and roi.slice_range[0] <= k <= roi.slice_range[1])
            rows.append((side, applicator, on, roi_on))
    print("\nhip prosthesis | applicator | localiser on tandem | ROI on tandem")
    for side, applicator, on, roi_on in rows:
        print(f"{side:14s} | {applicator:10s} | {100 * on / 20:5.1f} % | {100 * roi_on / 20:5.1f} %")
    total = sum(r[2] for r in rows) / (20 * len(rows))
    print(f"all: {100 * total:.1f} %")
    assert total == 1.0
