"""Slow checks, deselected by default: run with ``pytest -m slow`` (``make test-slow``)."""

import numpy as np
import pytest

from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.research.metrics import volumetric_dice as dice
from MnetImSegmentLib.research.phantom import make_phantom

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", range(30000, 30010))
def test_demo_weights_on_unseen_clinical_size_phantoms(seed, demo_weights):
    """Ten clinical-size phantoms the weights never saw: the contour overlaps the truth.

    They scored 0.87-0.95 (mean 0.91) when the weights were trained; the bound sits below the
    held-out minimum (0.76), so it catches a broken pipeline or a real accuracy loss, not noise.
    """
    ph = make_phantom(seed, matrix=512, slice_mm=2.5)
    result = Segmenter(demo_weights, device="cpu").segment(ph.ct)
    assert dice(result.mask.array, ph.mask().array) > 0.75


def test_demo_weights_unseen_styles_match_their_card(demo_weights, capsys):
    """Issue 11: held-out-style Dice next to in-distribution Dice, re-measured against the card.

    The card's ``generalisation`` rows were measured with ``scripts/evaluate_generalisation.py`` (same
    seeds, same grid); CPU inference is deterministic, so each row must come back within 0.03. The
    printed table (``pytest -m slow -s``) is the weights' honest profile: good on v2, failing on v3
    and the held-out style (docs/generalisation.md).
    """
    from MnetImSegmentLib.engine.weights import read_card
    from MnetImSegmentLib.research import generalisation as gen

    recorded = read_card(demo_weights).raw["generalisation"]
    results = gen.evaluate_generalisation(demo_weights, n=recorded["n_per_row"], matrix=recorded["matrix"],
                                          styles=[s for s in gen.STYLE_ROWS if s in recorded["rows"]], perturbations=(),
                                          heldout_no_streaks=gen.HELDOUT_NO_STREAKS in recorded["rows"])
    with capsys.disabled():
        print("\n" + gen.markdown_table(results))
    for row in results["rows"]:
        assert row["mean"] == pytest.approx(recorded["rows"][row["row"]]["mean"], abs=0.03), row["row"]
