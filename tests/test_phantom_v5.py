"""Phantom style v5: v4's anatomy rendered SynthSeg-style, harsher metal artefacts (issue 11)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.research.metal_artifacts import ArtifactSettings, metal_artifact_hu
from MnetImSegmentLib.research.phantom_styles import TRAINING_STYLES, make_phantom_style, parse_style_mix
from MnetImSegmentLib.research.phantom_v3 import LABELS, PhantomV4, make_phantom_v4
from MnetImSegmentLib.research.phantom_v5 import SOFT_RANGE_HU, PhantomV5, make_phantom_v5
from MnetImSegmentLib.research.phantom_v6 import PhantomV6

SMALL = dict(matrix=64, slice_mm=4.0, z_extent_mm=48.0)


def _grid(anatomy, size=(72, 72, 12), spacing=(2.5, 2.5, 4.0)):
    centre = anatomy.patient_rotation @ anatomy.ctv_center
    origin = centre - np.asarray(spacing) * (np.asarray(size) - 1) / 2
    return Geometry(spacing, tuple(origin), tuple(np.eye(3).ravel())), tuple(size[::-1])


def test_v5_is_deterministic_and_a_training_style():
    a, b = make_phantom_v5(5, **SMALL), make_phantom_v5(5, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.params == b.params and a.params["style"] == "v5"
    assert "v5" in TRAINING_STYLES and make_phantom_style("v5", 5, **SMALL).params == a.params
    assert parse_style_mix("v5:0.5,v4:0.5") == [("v5", 0.5), ("v4", 0.5)]


def test_v5_leaves_v4_bit_identical():
    """v5 draws from its own stream and only re-paints: v4 datasets and their results stay valid."""
    ph = make_phantom_v4(5, **SMALL)
    digest = hashlib.md5(ph.ct.array.tobytes() + ph.labels.array.tobytes()).hexdigest()
    assert digest == "7e5937b30f01e72f7c9577d79557b3ba"  # v4 before v5 existed (commit fd12875)


@pytest.mark.parametrize("seed", [3, 8])
@pytest.mark.parametrize("style_class", [PhantomV5, PhantomV6], ids=["v5", "v6"])
def test_v5_has_v4_anatomy_but_not_its_image(seed, style_class):
    v4, v5 = PhantomV4(seed), style_class(seed)
    geometry, shape = _grid(v4)
    a, b = v4.sample(geometry, shape, artifacts=False), v5.sample(geometry, shape, artifacts=False)
    assert (a.labels.array == LABELS["CTV"]).sum() > 200
    assert np.array_equal(a.labels.array, b.labels.array)  # same labels: the lumps carry none
    assert not np.array_equal(a.ct.array, b.ct.array)


def test_v5_intensities_are_randomised_but_the_applicator_is_not():
    ctv_hu, synth = [], []
    for seed in range(24):
        v4, v5 = PhantomV4(seed), PhantomV5(seed)
        synth.append(v5.params["synth_intensities"])
        ctv_hu.append(v5.roles["ctv"].hu)
        rigid4 = [(layer.hu, layer.metal) for layer in v4.layers if not layer.deform or layer.metal]
        rigid5 = [(layer.hu, layer.metal) for layer in v5.layers if not layer.deform or layer.metal]
        assert rigid4 == rigid5  # applicator, packing and needles keep their physical values
        if v5.params["synth_intensities"]:
            assert SOFT_RANGE_HU[0] <= v5.roles["ctv"].hu <= SOFT_RANGE_HU[1]
    assert 10 <= sum(synth) <= 23
    assert np.std(ctv_hu) > 60  # v4's CTV stays within about 15-175 HU of one tissue level


def test_v5_ctv_envelope_is_darker_brighter_or_missing():
    seen = set()
    for seed in range(30):
        a = PhantomV5(seed)
        p, roles = a.params, a.roles
        gap = roles["parametrium"].hu - roles["ctv"].hu
        assert gap == pytest.approx(p["parametrium_contrast_hu"])
        if p["ctv_envelope"] == "none":
            assert roles["parametrium"].hu == a.layers[2].hu
        else:
            assert abs(gap) >= max(20.0, p["noise_hu"]) - 1e-6
            assert (gap > 0) == (p["ctv_envelope"] == "brighter")
        seen.add(p["ctv_envelope"])
        assert 2 <= p["lumps"] <= 9
    assert seen == {"darker", "brighter", "none"}


def _metal_slice():
    yy, xx = np.mgrid[:96, :96]
    body = ((yy - 48) / 40.0) ** 2 + ((xx - 48) / 44.0) ** 2 < 1
    img = np.where(body, 40.0, -1000.0).astype(np.float32)
    metal = np.zeros_like(img)
    metal[(yy - 48) ** 2 + (xx - 40) ** 2 <= 4] = 1.0
    metal[(yy - 48) ** 2 + (xx - 58) ** 2 <= 4] = 1.0
    img[metal > 0] = 3071.0
    return img, metal, body


def test_artifact_gain_scales_the_artifact_exactly():
    img, metal, _ = _metal_slice()
    one = metal_artifact_hu(img, metal, (1.5, 1.5), "steel", np.random.default_rng(1), ArtifactSettings(photons=2e4))
    two = metal_artifact_hu(img, metal, (1.5, 1.5), "steel", np.random.default_rng(1), ArtifactSettings(photons=2e4, gain=2.0))
    outside = metal == 0
    assert np.abs(one[outside]).max() > 5
    np.testing.assert_allclose(two[outside], 2 * one[outside], rtol=1e-4, atol=1e-3)


def test_inconsistent_rays_add_streaks_near_metal():
    img, metal, body = _metal_slice()
    near = body & (metal == 0)
    sd = [metal_artifact_hu(img, metal, (1.5, 1.5), "titanium", np.random.default_rng(1),
                            ArtifactSettings(photons=5e5, ray_error_sd=e))[near].std() for e in (0.0, 0.08)]
    assert sd[1] > 1.5 * sd[0], sd
