"""Fractions (issue 14): phantom series, propagation of the previous CTV, fusion, CLI refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MnetImSegmentLib.cli import main
from MnetImSegmentLib.core.errors import InputError
from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.engine import fractions as F
from MnetImSegmentLib.engine.io import read_segmentation_mask, write_image, write_labelmap
from MnetImSegmentLib.research.fractions_phantom import Anchors, make_fraction_series, transform_between
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix

GRID = dict(matrix=96, slice_mm=3.0, z_extent_mm=120)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def series():
    return make_fraction_series(4, 2, **GRID)


# --------------------------------------------------------------------------- phantom series
def test_series_deterministic_same_patient_and_truth(series):
    again = make_fraction_series(4, 2, **GRID)
    for a, b in zip(series, again):
        assert np.array_equal(a.phantom.ct.array, b.phantom.ct.array)
        assert np.array_equal(a.phantom.labels.array, b.phantom.labels.array)
    first, second = series
    assert np.array_equal(first.phantom.ct.array, make_phantom(4, **GRID).ct.array)  # fraction 1 = the phantom
    params = second.phantom.params
    assert params["fraction"] == 2 and 3 <= np.linalg.norm(params["applicator_shift_mm"]) <= 10
    assert 3 <= params["applicator_rotation_deg"] <= 10
    # The truth transform carries fraction 1's os/tip onto fraction 2's and its CTV close to fraction 2's.
    m = transform_between(first, second)
    assert np.allclose(m[:3, :3] @ first.anchors.os_lps + m[:3, 3], second.anchors.os_lps)
    carried = F._resample_mask(first.phantom.mask(), second.phantom.ct, np.linalg.inv(m), m,
                               F._mask_points(first.phantom.mask()))
    d = dice(carried, second.phantom.mask().array)
    assert 0.8 <= d < 0.99  # close, but deformed and cut differently by bladder/rectum: not a copy
    assert dice(first.phantom.mask().array, second.phantom.mask().array) < d  # it did move


# --------------------------------------------------------------------------- propagation: known transforms
def _rigid(rot_deg, shift, center) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(*rot_deg)
    m[:3, 3] = center + np.asarray(shift) - m[:3, :3] @ center
    return m


def _moved_ct(source: Volume, m: np.ndarray, geometry: Geometry, shape, interpolator) -> Volume:
    """``source`` seen after the rigid motion ``m`` (source physical -> target physical), on ``geometry``."""
    inv = np.linalg.inv(m)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tuple(inv[:3, :3].ravel()))
    aff.SetTranslation(tuple(inv[:3, 3]))
    ref = Volume(np.zeros(shape, np.int16), geometry).to_sitk()
    default = -1000.0 if interpolator == sitk.sitkLinear else 0.0
    out = sitk.Resample(source.to_sitk(), ref, aff, interpolator, default)
    return Volume.from_sitk(out)


def _target_grid(kind: str, source: Volume, center: np.ndarray):
    if kind == "oblique":
        d = rotation_matrix(12, -8, 25)
        spacing = (1.8, 1.8, 3.0)
    elif kind == "flipped":
        d = np.diag([-1.0, -1.0, 1.0]) @ rotation_matrix(0, 0, 90)
        spacing = (2.0, 2.0, 2.5)
    else:  # anisotropic
        d = np.eye(3)
        spacing = (1.3, 2.2, 4.0)
    size = np.array([110, 100, 40])
    origin = center - d @ (np.asarray(spacing) * (size - 1) / 2)
    return Geometry(spacing, origin, tuple(d.ravel())), tuple(size[::-1])


@pytest.mark.parametrize("kind", ["oblique", "flipped", "anisotropic"])
def test_known_rigid_transform_recovered(series, kind):
    first = series[0].phantom
    ctv = first.mask()
    center = F._mask_points(ctv).mean(0)
    m = _rigid((5, -4, 7), (6.0, -4.0, 5.0), np.asarray(series[0].anchors.os_lps))
    geometry, shape = _target_grid(kind, first.ct, center)
    target_ct = _moved_ct(first.ct, m, geometry, shape, sitk.sitkLinear)
    truth = _moved_ct(ctv, m, geometry, shape, sitk.sitkNearestNeighbor)
    moved = Anchors(m[:3, :3] @ series[0].anchors.os_lps + m[:3, 3], m[:3, :3] @ series[0].anchors.tip_lps + m[:3, 3])
    for prior_anchor, current_anchor in ((series[0].anchors, moved), (None, None)):
        prop = F.propagate_prior(first.ct, ctv, target_ct, prior_anchor, current_anchor)
        assert prop.mask.geometry.allclose(geometry) and prop.mask.shape == shape
        assert dice(prop.mask.array, truth.array) >= 0.9, (kind, prop.init)
        pts = F._mask_points(ctv)
        err = np.linalg.norm((pts @ prop.transform[:3, :3].T + prop.transform[:3, 3]) - (pts @ m[:3, :3].T + m[:3, 3]), axis=1)
        assert err.max() < 2.0, (kind, prop.init, err.max())
        if prior_anchor is not None:
            assert prop.residual_mm < 2.0 and prop.init == "applicator" and not prop.warnings


def test_phantom_pair_propagation(series):
    first, second = series
    prop = F.propagate_prior(first.phantom.ct, first.phantom.mask(), second.phantom.ct, first.anchors, second.anchors)
    assert dice(prop.mask.array, second.phantom.mask().array) >= 0.85
    assert prop.residual_mm < 5.0
    assert set(prop.to_dict()) >= {"transform", "residual_mm", "metric", "seconds"}


def test_residual_warns_then_refuses(series):
    first, second = series
    ct, ctv = first.phantom.ct, first.phantom.mask()
    off = lambda a, mm: Anchors(a.os_lps + [mm, 0, 0], a.tip_lps + [mm, 0, 0])  # noqa: E731 - a wrong localisation
    # Same CT on both sides: the registration finds identity, so the residual is the anchor error.
    warned = F.propagate_prior(ct, ctv, ct, first.anchors, off(first.anchors, 7.0))
    assert 5.0 < warned.residual_mm <= 10.0 and any("differ by" in w for w in warned.warnings)
    with pytest.raises(InputError, match="applicators differ by"):
        F.propagate_prior(ct, ctv, ct, first.anchors, off(first.anchors, 16.0))


def test_patient_identity_checks():
    with pytest.raises(InputError, match="another patient"):
        F.check_same_patient({"PatientID": "A"}, {"PatientID": "B"})
    warn = F.check_same_patient({"PatientID": "A", "FrameOfReferenceUID": "1.2"}, {"PatientID": "A", "FrameOfReferenceUID": "1.2"})
    assert len(warn) == 1 and "FrameOfReferenceUID" in warn[0]
    assert F.check_same_patient({"PatientID": "A"}, {}) == []


# --------------------------------------------------------------------------- fusion
def _ball(shape, center, radius):
    z, y, x = np.indices(shape)
    return np.sqrt((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2)


def test_fusion_beats_both_on_synthetic_maps():
    shape = (40, 60, 60)
    geometry = Geometry((1.0, 1.0, 1.0))
    truth = _ball(shape, (20, 30, 30), 10) <= 10
    prior = _ball(shape, (20, 30, 33), 10) <= 10  # 3 mm off
    r = _ball(shape, (20, 30, 30), 10)
    rng = np.random.default_rng(0)
    p = 1 / (1 + np.exp((r - 10) / 1.5)) + rng.normal(0, 0.25, shape)  # right place, noisy edge
    p[_ball(shape, (20, 8, 8), 4) <= 4] = 0.9  # a confident false positive far away
    p = np.clip(p, 0, 1).astype(np.float32)
    network = p >= 0.5
    fusion = F.fuse(Volume(p, geometry), Volume(prior.astype(np.uint8), geometry), 0.5)
    fused = fusion.mask.array > 0
    assert dice(fused, truth) > dice(network, truth) and dice(fused, truth) > dice(prior, truth)
    assert not fused[_ball(shape, (20, 8, 8), 4) <= 3].any()
    assert fusion.follows_prior + fusion.follows_network == pytest.approx(1.0)
    assert fusion.dice_prior_vs_network == pytest.approx(dice(prior, network))
    assert not fusion.warnings
    far = _ball(shape, (20, 30, 52), 6) <= 6  # a prior that disagrees: the fused contour warns
    low = F.fuse(Volume(p, geometry), Volume(far.astype(np.uint8), geometry), 0.5)
    assert low.dice_prior_vs_network < 0.5 and any("agree poorly" in w for w in low.warnings)


# --------------------------------------------------------------------------- CLI
def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pair_files(series, tmp_path_factory):
    root = tmp_path_factory.mktemp("fractions")
    write_image(series[0].phantom.ct, root / "prior.nii.gz")
    write_labelmap(series[0].phantom.labels, root / "prior_labels.nii.gz")  # label 1 = CTV
    write_image(series[1].phantom.ct, root / "ct.nii.gz")
    return root


def test_cli_segment_with_prior(pair_files, tiny_weights, tmp_path, capsys):
    out = tmp_path / "ctv.seg.nrrd"
    code, stdout, err = run(["segment", pair_files / "ct.nii.gz", "-o", out, "--weights", tiny_weights,
                             "--device", "cpu", "--prior-ct", pair_files / "prior.nii.gz",
                             "--prior-ctv", pair_files / "prior_labels.nii.gz", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    prior = report["prior"]
    assert np.asarray(prior["transform"]).shape == (4, 4)
    assert {"residual_mm", "dice_prior_vs_network", "follows"} <= set(prior) and "warnings" in report
    assert read_segmentation_mask(out).array.any()  # tiny random weights: the prior carries the contour


def _bad_prior(kind: str, series, root: Path) -> tuple[list, str]:
    first = series[0].phantom
    if kind == "empty":
        write_labelmap(first.labels.with_array(np.zeros_like(first.labels.array)), root / "ctv.nii.gz")
        return ["--prior-ct", root.parent / "prior.nii.gz", "--prior-ctv", root / "ctv.nii.gz"], "is empty"
    if kind == "grid":
        shifted = Volume(first.labels.array, Geometry(first.labels.geometry.spacing,
                                                      np.asarray(first.labels.geometry.origin) + 5.0,
                                                      first.labels.geometry.direction))
        write_labelmap(shifted, root / "ctv.nii.gz")
        return ["--prior-ct", root.parent / "prior.nii.gz", "--prior-ctv", root / "ctv.nii.gz"], "voxel grid"
    if kind == "outside":  # the current CT stops well below the CTV
        ct = series[1].phantom.ct
        write_image(Volume(ct.array[:3], ct.geometry), root / "ct_short.nii.gz")
        return ["--prior-ct", root.parent / "prior.nii.gz", "--prior-ctv", root.parent / "prior_labels.nii.gz",
                "--input-override", root / "ct_short.nii.gz"], "outside the current CT|within the current CT|registration"
    if kind == "half":
        return ["--prior-ct", root.parent / "prior.nii.gz"], "needs both"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "grid", "outside", "half"])
def test_cli_refuses_bad_prior(kind, series, pair_files, tiny_weights, tmp_path, capsys):
    root = pair_files / kind
    root.mkdir(exist_ok=True)
    extra, match = _bad_prior(kind, series, root)
    ct = pair_files / "ct.nii.gz"
    if "--input-override" in extra:
        ct = extra[extra.index("--input-override") + 1]
        extra = extra[:extra.index("--input-override")]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(["segment", ct, "-o", out_dir / "ctv.seg.nrrd", "--weights", tiny_weights,
                        "--device", "cpu"] + extra, capsys)
    assert code != 0 and "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("mnetim: error:"), err
    assert any(m.lower() in err.lower() for m in match.split("|")), err
    assert not list(out_dir.iterdir())


def test_cli_refuses_other_patient_dicom(series, tiny_weights, tmp_path, capsys):
    pytest.importorskip("pydicom")
    from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series

    write_ct_series(series[0].phantom.ct, tmp_path / "prior", patient_id="PATIENT_A")
    write_ct_series(series[1].phantom.ct, tmp_path / "current", patient_id="PATIENT_B")
    write_labelmap(series[0].phantom.labels, tmp_path / "prior_ctv.nii.gz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(["segment", tmp_path / "current", "-o", out_dir / "ctv.seg.nrrd", "--weights", tiny_weights,
                        "--prior-ct", tmp_path / "prior", "--prior-ctv", tmp_path / "prior_ctv.nii.gz"], capsys)
    assert code != 0 and "another patient" in err and "Traceback" not in err
    assert not list(out_dir.iterdir())


# --------------------------------------------------------------------------- measurement (docs/fractions.md)
@pytest.mark.slow
def test_twenty_phantom_pairs_prior_network_fused(demo_weights, tmp_path):
    """>= 20 pairs at matrix 256 (docs/fractions.md): prior >= 0.85; fused better than the network and not
    worse than the prior. The issue's "better than both" is NOT reached on these phantoms (the prior is
    already near the deformation ceiling and the demo network is weaker): see docs/fractions.md."""
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.research.fractions_eval import build_pair, score_pair

    segmenter = Segmenter(demo_weights, device="cpu")
    rows = [score_pair(build_pair(seed, 256, segmenter, tmp_path), F.FUSION_WEIGHT, F.FUSION_SIGMA_MM)
            for seed in range(1, 21)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("prior", "network", "fused")}
    assert mean["prior"] >= 0.85, mean
    assert mean["fused"] > mean["network"] and mean["fused"] >= mean["prior"] - 0.01, mean


def test_cli_rtstruct_prior_same_patient_dicom(series, tiny_weights, tmp_path, capsys):
    """DICOM in: the prior CTV as an RTSTRUCT on the prior series; same patient; a re-used FoR only warns."""
    pytest.importorskip("pydicom")
    from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
    from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom

    write_ct_series(series[0].phantom.ct, tmp_path / "prior", patient_id="PATIENT_A", frame_of_reference_uid="1.2.3.4")
    write_ct_series(series[1].phantom.ct, tmp_path / "current", patient_id="PATIENT_A", frame_of_reference_uid="1.2.3.4")
    rs = write_segmentation_dicom(series[0].phantom.mask(), tmp_path / "prior", tmp_path / "rs", "rtstruct")
    rs_file = rs if rs.is_file() else next(p for p in rs.rglob("*") if p.is_file())
    out = tmp_path / "ctv.seg.nrrd"
    code, stdout, err = run(["segment", tmp_path / "current", "-o", out, "--weights", tiny_weights, "--device", "cpu",
                             "--prior-ct", tmp_path / "prior", "--prior-ctv", rs_file, "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert "prior" in report and any("FrameOfReferenceUID" in w for w in report["warnings"])
    carried = read_segmentation_mask(out).array
    assert dice(carried, series[1].phantom.mask().array) >= 0.6  # the fused CTV follows the carried RTSTRUCT
