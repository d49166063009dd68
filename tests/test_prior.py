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
                                           TANDEM_PRIOR_SIGMA_MM, applicator_prior_map, tandem_prior)
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
