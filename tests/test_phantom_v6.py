"""Phantom style v6: v5 with a visible CTV edge, capped noise and whole-view streaks (issue 11)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from MnetImSegmentLib.research.metal_artifacts import ArtifactSettings, metal_artifact_hu
from MnetImSegmentLib.research.phantom_styles import TRAINING_STYLES, make_phantom_style
from MnetImSegmentLib.research.phantom_v5 import make_phantom_v5
from MnetImSegmentLib.research.phantom_v6 import CTV_RANGE_HU, PhantomV6, make_phantom_v6
from test_phantom_v5 import SMALL, _metal_slice


def test_v6_is_deterministic_and_a_training_style():
    a, b = make_phantom_v6(5, **SMALL), make_phantom_v6(5, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.params == b.params and a.params["style"] == "v6"
    assert "v6" in TRAINING_STYLES and make_phantom_style("v6", 5, **SMALL).params == a.params


def test_v6_leaves_v5_bit_identical():
    """v5's rendering became configurable for v6: v5 datasets and the recorded v5 candidate stay valid."""
    ph = make_phantom_v5(5, **SMALL)
    digest = hashlib.md5(ph.ct.array.tobytes() + ph.labels.array.tobytes()).hexdigest()
    assert digest == "69f8b6b67abcfa42f8e4cc019bceaf16"  # v5 before v6 existed (commit 4efdce6)


def test_v6_ctv_edge_is_bounded_and_noise_capped():
    """The label must be visible: the CTV differs from what borders it by >= max(25 HU, 1.2 noise SD)."""
    envelopes = set()
    for seed in range(40):
        a = PhantomV6(seed)
        p, roles = a.params, a.roles
        assert 4.0 <= p["noise_hu"] <= 25.0
        gap = roles["parametrium"].hu - roles["ctv"].hu
        assert gap == pytest.approx(p["parametrium_contrast_hu"])
        assert abs(gap) >= max(25.0, 1.2 * p["noise_hu"]) - 1e-6, (seed, p)
        if p["ctv_envelope"] == "none":
            assert roles["parametrium"].hu == roles["pelvic_fat"].hu
            assert CTV_RANGE_HU[0] <= roles["ctv"].hu <= CTV_RANGE_HU[1]
        else:
            assert (gap > 0) == (p["ctv_envelope"] == "brighter")
        envelopes.add(p["ctv_envelope"])
    assert envelopes == {"darker", "brighter", "none"}


def test_v6_scanner_carries_whole_view_errors():
    streaky = [PhantomV6(seed).artifact_settings() for seed in range(30)]
    assert any(s.view_errors == 0 for s in streaky) and sum(s.view_errors > 0 for s in streaky) >= 15
    for s in streaky:
        assert (s.view_errors == 0) == (s.view_error_sd == 0.0)
        assert s.view_errors == 0 or (2 <= s.view_errors <= 12 and 0.2 <= s.view_error_sd <= 1.5)


def test_view_errors_draw_straight_streaks_across_the_field_and_cost_nothing_when_off():
    img, metal, body = _metal_slice()
    base = metal_artifact_hu(img, metal, (1.5, 1.5), "titanium", np.random.default_rng(1), ArtifactSettings(photons=5e5))
    off = metal_artifact_hu(img, metal, (1.5, 1.5), "titanium", np.random.default_rng(1),
                            ArtifactSettings(photons=5e5, view_errors=6, view_error_sd=0.0))
    assert np.array_equal(base, off)  # no extra draws: v3-v5 phantoms are unchanged
    one = metal_artifact_hu(img, metal, (1.5, 1.5), "titanium", np.random.default_rng(1),
                            ArtifactSettings(photons=5e5, view_errors=1, view_error_sd=1.0))
    streak = one - base
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    far = body & (np.hypot(yy - 48, xx - 49) > 25)  # > 37 mm from the metal
    assert np.abs(streak[far]).max() > 3 * max(np.abs(base[far]).std(), 1.0)
    # One view: the streak is a straight line through the metal, so it is concentrated on few
    # directions; energy by angle around the metal is far from uniform.
    angle = np.arctan2(yy - 48, xx - 49)[far] % np.pi
    energy = np.bincount(np.minimum((angle / np.pi * 18).astype(int), 17), weights=streak[far] ** 2, minlength=18)
    assert energy.max() > 4 * np.median(energy), energy
