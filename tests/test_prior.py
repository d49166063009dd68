"""The applicator prior input channel (issue 11): physical, optional, and zero-initialised when added."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MnetImSegmentLib.core.errors import WeightsError
from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.engine.applicator import ApplicatorFit
from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.engine.applicator_prior import (APPLICATOR_PRIORS, TANDEM_PRIOR_ABOVE_MM, TANDEM_PRIOR_BELOW_MM,
                                                      TANDEM_PRIOR_SIGMA_MM, CtvAtlas, applicator_prior_map,
                                                      build_ctv_atlas, tandem_frame, tandem_prior)
from MnetImSegmentLib.engine.weights import read_card
from MnetImSegmentLib.engine.windows import InputSpec, make_windows
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix
from MnetImSegmentLib.research.training.trainer import load_widened

from helpers.weights import make_weights

OS = np.array([10.0, -20.0, 35.0])
AXIS = np.array([0.0, 0.5, 1.0]) / np.sqrt(1.25)  # anteverted ~27 deg
FIT = ApplicatorFit(True, "metal", tuple(OS), tuple(OS + 70.0 * AXIS), tuple(AXIS), 70.0, 0.9)


def _reference(points: np.ndarray) -> np.ndarray:
    """Distance to the os-based segment by brute force over 2001 points along it."""
    t = np.linspace(-TANDEM_PRIOR_BELOW_MM, TANDEM_PRIOR_ABOVE_MM, 2001)
    seg = OS + t[:, None] * AXIS
    d = np.sqrt(((points[:, None, :] - seg[None]) ** 2).sum(-1)).min(1)
    return np.exp(-d**2 / (2 * TANDEM_PRIOR_SIGMA_MM**2))


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]),
                                       rotation_matrix(8, -6, 25) @ np.diag([1.0, -1.0, 1.0])],
                         ids=["axial", "flipped", "oblique_flipped"])
def test_tandem_prior_is_physical_on_any_grid(direction):
    """Each voxel gets the prior of its physical position, whatever the grid's direction and spacing."""
    spacing = np.array([1.3, 0.9, 3.0])
    size = np.array([40, 50, 24])  # (x, y, z)
    origin = OS - direction @ (spacing * (size - 1) / 2)
    geom = Geometry(tuple(spacing), tuple(origin), tuple(direction.ravel()))
    prior = tandem_prior(geom, tuple(size[::-1]), FIT)
    assert prior.shape == tuple(size[::-1]) and prior.dtype == np.float32
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(0, n, 300) for n in size], 1)  # (i, j, k)
    expected = _reference(geom.index_to_physical(idx.astype(float)))
    np.testing.assert_allclose(prior[idx[:, 2], idx[:, 1], idx[:, 0]], expected, atol=2e-3)
    assert prior.max() > 0.95 and prior.min() < 0.2


def test_untrusted_or_missing_fit_gives_no_prior():
    geom = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    untrusted = ApplicatorFit(False, "metal", tuple(OS), tuple(OS + AXIS), tuple(AXIS), 1.0, 0.3)
    for fit in (None, untrusted):
        assert not tandem_prior(geom, (4, 8, 8), fit).any()
    assert applicator_prior_map("none", geom, (4, 8, 8), FIT) is None
    with pytest.raises(ValueError, match="unknown input prior"):
        applicator_prior_map("ring", geom, (4, 8, 8), FIT)
    with pytest.raises(ValueError, match="needs the weights' CTV atlas"):
        applicator_prior_map("atlas", geom, (4, 8, 8), FIT)


def test_windows_carry_the_prior_middle_slice():
    stack = np.random.default_rng(1).random((7, 6, 5)).astype(np.float32)
    prior = np.random.default_rng(2).random((7, 6, 5)).astype(np.float32)
    w = make_windows(stack, [0, 3, 6], 5, prior)
    assert w.shape == (3, 6, 6, 5)
    np.testing.assert_array_equal(w[:, :5], make_windows(stack, [0, 3, 6], 5))
    np.testing.assert_array_equal(w[:, 5], prior[[0, 3, 6]])
    with pytest.raises(ValueError, match="prior's shape"):
        make_windows(stack, [0], 5, prior[:, :3])
    assert InputSpec().channels == 5 and InputSpec(applicator_prior="tandem").channels == 6
    assert "prior" not in InputSpec().to_dict()  # cards and run configs without a prior are unchanged
    assert InputSpec.from_dict(InputSpec(applicator_prior="tandem").to_dict()).applicator_prior == "tandem"


def test_widened_model_starts_as_its_parent():
    """Zero-initialised new channel: whatever the prior says, the child's output is the parent's."""
    from MnetImSegmentLib.models import build_model

    from helpers.weights import TINY_CONFIG

    torch.manual_seed(0)
    parent = build_model("Mnet_Im", **TINY_CONFIG).eval()
    child = build_model("Mnet_Im", in_channels=6, **TINY_CONFIG).eval()
    load_widened(child, parent.state_dict())
    x = torch.rand(2, 5, 64, 64)
    prior = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(child(torch.cat([x, prior], 1)), parent(x))
    widened = [k for k, v in child.state_dict().items() if v.shape != parent.state_dict()[k].shape]
    assert widened and all(not child.state_dict()[k][:, 5:].any() for k in widened)


def test_segmenter_feeds_the_prior(tmp_path):
    """The network gets 6 channels (main and mirrored pass), the 6th the prior around the located tandem."""
    weights = make_weights(tmp_path / "w", applicator_prior="tandem")
    card = read_card(weights)
    assert card.input_spec.applicator_prior == "tandem" and card.config["in_channels"] == 6
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=80).ct
    seg = Segmenter(weights, device="cpu", fold_bn=False, precision="fp32")
    calls = []
    forward = seg.model.forward
    seg.model.forward = lambda x: calls.append((x.shape[1], float(x[:, 5].max()), float(x[:, 5].min()))) or forward(x)
    result = seg.segment(ct, enforce_scope=False)
    assert result.mask.shape == ct.shape and calls and {c[0] for c in calls} == {6}
    assert max(c[1] for c in calls) > 0.9 and min(c[2] for c in calls) < 0.1  # peaks on the tandem, fades away


def test_card_refuses_a_prior_the_network_has_no_channel_for(tmp_path):
    weights = make_weights(tmp_path / "w", applicator_prior="tandem")
    card_file = weights / "model.json"
    raw = json.loads(card_file.read_text())
    raw["config"]["in_channels"] = 5
    card_file.write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="plus 1 for the 'tandem' prior"):
        read_card(weights)
    raw["config"]["in_channels"], raw["input"]["applicator_prior"] = 6, "ring"
    card_file.write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="prior"):
        read_card(weights)
    assert APPLICATOR_PRIORS == ("none", "tandem", "atlas")


# --------------------------------------------------------------------------- the CTV atlas prior
def _linear_atlas() -> CtvAtlas:
    """An atlas that is a known linear function of the frame coordinates, so trilinear sampling is exact."""
    a = np.arange(-60.0, 61.0, 2.0)
    t = np.arange(-50.0, 91.0, 2.0)
    e1, e2, e3 = np.meshgrid(a, a, t, indexing="ij")
    return CtvAtlas((0.5 + 0.003 * e1 - 0.002 * e2 + 0.002 * e3).astype(np.float32), (-60.0, -60.0, -50.0), 2.0, 1)


GRIDS = [np.eye(3), np.diag([-1.0, 1.0, -1.0]), rotation_matrix(8, -6, 25) @ np.diag([1.0, -1.0, 1.0])]


@pytest.mark.parametrize("direction", GRIDS, ids=["axial", "flipped", "oblique_flipped"])
def test_atlas_prior_is_sampled_at_each_voxels_physical_position(direction):
    spacing, size = np.array([1.3, 0.9, 3.0]), np.array([40, 50, 24])
    geom = Geometry(tuple(spacing), tuple(OS - direction @ (spacing * (size - 1) / 2)), tuple(direction.ravel()))
    atlas = _linear_atlas()
    prior = applicator_prior_map("atlas", geom, tuple(size[::-1]), FIT, atlas=atlas)
    assert prior.shape == tuple(size[::-1]) and prior.dtype == np.float32
    os_, rows = tandem_frame(FIT)
    np.testing.assert_allclose(rows @ rows.T, np.eye(3), atol=1e-12)
    assert np.isclose(rows[2] @ AXIS, 1.0) and abs(rows[0][1:]).max() < 0.2  # e1 stays the patient's left-right
    idx = np.random.default_rng(0).integers(0, size, size=(300, 3))
    f = (geom.index_to_physical(idx.astype(float)) - os_) @ rows.T
    np.testing.assert_allclose(prior[idx[:, 2], idx[:, 1], idx[:, 0]], 0.5 + 0.003 * f[:, 0] - 0.002 * f[:, 1] + 0.002 * f[:, 2],
                               atol=1e-5)
    far = Geometry((1.0, 1.0, 1.0), tuple(OS + 500.0), tuple(np.eye(3).ravel()))  # outside the atlas: zero
    assert not applicator_prior_map("atlas", far, (3, 4, 5), FIT, atlas=atlas).any()
    untrusted = ApplicatorFit(False, "metal", tuple(OS), tuple(OS + AXIS), tuple(AXIS), 1.0, 0.3)
    assert not atlas.sample(geom, (4, 8, 8), untrusted).any() and not atlas.sample(geom, (4, 8, 8), None).any()


def _ball_scan(direction, spacing, centre_frame):
    """A CTV ball (radius 15 mm) at ``centre_frame`` (mm in the tandem frame) on a grid around the os."""
    spacing, size = np.asarray(spacing, float), np.array([70, 64, 40])
    geom = Geometry(tuple(spacing), tuple(OS - direction @ (spacing * (size - 1) / 2)), tuple(direction.ravel()))
    os_, rows = tandem_frame(FIT)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    phys = geom.index_to_physical(np.stack([i, j, k], -1).astype(float))
    return np.linalg.norm((phys - os_) @ rows.T - centre_frame, axis=-1) <= 15.0, geom


@pytest.mark.parametrize("direction", GRIDS, ids=["axial", "flipped", "oblique_flipped"])
def test_atlas_built_on_any_grid_puts_the_ctv_where_it_was_and_mirrors_it(direction):
    """One patient (a CTV ball 12 mm to the patient's left of the tandem, 20 mm above the os) on an anisotropic
    axial, flipped or oblique-flipped grid: the atlas holds it at the same frame position, and its mirror image."""
    centre = np.array([12.0, 0.0, 20.0])
    mask, geom = _ball_scan(direction, (2.0, 1.5, 2.5), centre)
    untrusted = ApplicatorFit(False, "metal", tuple(OS), tuple(OS + AXIS), tuple(AXIS), 1.0, 0.3)
    atlas = build_ctv_atlas([(mask, geom, FIT), (mask, geom, untrusted), (mask, geom, None)])
    assert atlas.scans == 1  # scans without a trusted fit have no frame and are left out
    p = atlas.probability
    at = lambda e: p[tuple(int(round((v - s) / 2.0)) for v, s in zip(e, atlas.start_mm))]  # noqa: E731
    assert at(centre) == pytest.approx(0.5) and at(centre * [-1, 1, 1]) == pytest.approx(0.5)  # mirrored, halved
    assert at([0.0, 0.0, -40.0]) == 0.0 and at([40.0, 0.0, 20.0]) == 0.0
    volume_ml = p.sum() * 8.0 / 1000.0  # both halves together hold the ball's volume once
    assert volume_ml == pytest.approx(4 / 3 * np.pi * 15.0**3 / 1000.0, rel=0.08)
    sampled = atlas.sample(geom, mask.shape, FIT)
    assert sampled[mask].mean() > 0.4 and sampled[~mask].mean() < 0.05
    assert build_ctv_atlas([(mask, geom, untrusted)]) is None


def test_atlas_weights_carry_their_atlas_and_refuse_a_broken_one(tmp_path):
    from safetensors.torch import load_file, save_file

    from MnetImSegmentLib.engine.weights import load_weights, sha256_file

    atlas = _linear_atlas()
    weights = make_weights(tmp_path / "w", applicator_prior="atlas", atlas=atlas)
    model, card = load_weights(weights)
    np.testing.assert_array_equal(card.atlas.probability, atlas.probability)
    assert card.raw["input"]["ctv_atlas"]["shape"] == [61, 61, 71] and card.config["in_channels"] == 6
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=80).ct
    seg = Segmenter(weights, device="cpu", fold_bn=False, precision="fp32")
    seen = []
    forward = seg.model.forward
    seg.model.forward = lambda x: seen.append(float(x[:, 5].max())) or forward(x)
    assert seg.segment(ct, enforce_scope=False).mask.shape == ct.shape and max(seen) > 0.3

    def rewrite(state, raw):
        save_file(state, str(weights / "model.safetensors"))
        raw["tensors_sha256"] = sha256_file(weights / "model.safetensors")
        (weights / "model.json").write_text(json.dumps(raw))

    raw, state = json.loads((weights / "model.json").read_text()), load_file(str(weights / "model.safetensors"))
    rewrite({k: v for k, v in state.items() if k != CtvAtlas.TENSOR}, dict(raw))
    with pytest.raises(WeightsError, match="lack its CTV atlas"):
        load_weights(weights)
    rewrite({**state, CtvAtlas.TENSOR: state[CtvAtlas.TENSOR][:, :, :10].contiguous()}, dict(raw))
    with pytest.raises(WeightsError, match="CTV atlas .* is unusable"):
        load_weights(weights)
    rewrite({**state, CtvAtlas.TENSOR: state[CtvAtlas.TENSOR] * 3.0}, dict(raw))  # not a frequency any more
    with pytest.raises(WeightsError, match="unusable"):
        load_weights(weights)
    plain = make_weights(tmp_path / "plain", applicator_prior="tandem")
    raw = json.loads((plain / "model.json").read_text())
    state = load_file(str(plain / "model.safetensors"))
    weights = plain
    rewrite({**state, CtvAtlas.TENSOR: torch.from_numpy(atlas.probability)}, raw)
    with pytest.raises(WeightsError, match="input tensors .* does not use"):
        load_weights(plain)


def test_atlas_run_without_any_located_applicator_is_refused_in_one_sentence():
    """A training split where the localiser trusts no applicator has no frame to build an atlas in."""
    from MnetImSegmentLib.core.errors import DatasetError
    from MnetImSegmentLib.research.training.data import PreparedScan, ctv_atlas_of

    geom = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    untrusted = ApplicatorFit(False, "metal", tuple(OS), tuple(OS + AXIS), tuple(AXIS), 1.0, 0.3)
    scans = [PreparedScan(f"s{i}", np.zeros((4, 8, 8), np.float16), np.ones((4, 8, 8), np.uint8), None, (1.0, 1.0, 2.0),
                          geometry=geom, fit=fit) for i, fit in enumerate((None, untrusted))]
    with pytest.raises(DatasetError, match="--applicator-prior tandem or none") as exc:
        ctv_atlas_of(scans)
    assert "\n" not in str(exc.value)
    scans[1].fit = FIT  # one located applicator is enough
    assert ctv_atlas_of(scans).scans == 1
