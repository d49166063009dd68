"""Slow checks, deselected by default: run with ``pytest -m slow`` (``make test-slow``)."""

import numpy as np
import pytest

from MnetImSegmentLib.inference import Segmenter
from MnetImSegmentLib.phantom import make_phantom
from MnetImSegmentLib.training.trainer import dice

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", range(30000, 30010))
def test_demo_weights_on_unseen_clinical_size_phantoms(seed, demo_weights):
    """Ten clinical-size phantoms the weights never saw: the contour overlaps the truth.

    The bound is deliberately loose (the demo weights' held-out minimum was 0.59): it catches a
    broken pipeline or misregistration, not a small accuracy change.
    """
    ph = make_phantom(seed, matrix=512, slice_mm=2.5)
    result = Segmenter(demo_weights, device="cpu").segment(ph.ct)
    assert dice(result.mask.array, ph.mask().array) > 0.4
