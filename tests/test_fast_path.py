"""The optimised inference path agrees with the naive reference path (issue 6)."""

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import MnetImError
from MnetImSegmentLib.engine.device import resolve_precision
from MnetImSegmentLib.engine.inference import Segmenter, reference_segment
from MnetImSegmentLib.engine.weights import load_weights
from MnetImSegmentLib.research.metrics import volumetric_dice as dice
from MnetImSegmentLib.research.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(20231, matrix=256, slice_mm=2.5, z_extent_mm=200)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_fast_path_matches_reference(phantom, demo_weights, precision):
    """Folded BN, channels-last, batch 16, ROI slices only (and bf16 where the CPU has it)."""
    fast = Segmenter(demo_weights, device="cpu", precision=precision).segment(phantom.ct).mask.array
    model, card = load_weights(demo_weights)
    ref = reference_segment(model, card, phantom.ct)
    assert ref.sum() > 1000
    limit = 0.9999 if precision == "fp32" else 0.999
    assert dice(fast, ref) >= limit


def test_precision_choice():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(MnetImError, match="Unknown precision"):
        resolve_precision("fp8", "cpu")
