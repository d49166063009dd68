"""Phantom style v4: v3 with the CTV tied to what the image shows (issue 11's diagnosis of v3)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from MnetImSegmentLib.research.phantom_styles import TRAINING_STYLES, make_phantom_style
from MnetImSegmentLib.research.phantom_v3 import LABELS, PhantomV3, PhantomV4, make_phantom_v3, make_phantom_v4

SMALL = dict(matrix=64, slice_mm=4.0, z_extent_mm=48.0)


def test_v4_is_deterministic_and_a_training_style():
    a, b = make_phantom_v4(5, **SMALL), make_phantom_v4(5, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.params == b.params and a.params["style"] == "v4"
    assert "v4" in TRAINING_STYLES and make_phantom_style("v4", 5, **SMALL).params == a.params


def test_v4_switch_leaves_v3_bit_identical():
    """v4 draws from its own random stream: v3 datasets and their recorded results stay valid."""
    ph = make_phantom_v3(5, **SMALL)
    digest = hashlib.md5(ph.ct.array.tobytes() + ph.labels.array.tobytes()).hexdigest()
    assert digest == "8d79680776be55653fc93ceaaf30189f"  # the v3 output before v4 existed (commit fc54347)
    assert "fat_free" not in ph.params and "parametrium_contrast_hu" not in ph.params


@pytest.mark.parametrize("seed", range(6))
def test_v4_visible_cervix_sits_inside_the_ctv_and_the_parametrium_contrasts(seed):
    a = PhantomV4(seed)
    cervix = next(layer for layer in a.layers if type(layer.shape).__name__ == "Tube" and not layer.metal
                  and np.allclose((layer.shape.p0 + layer.shape.p1) / 2, a.ctv.center))
    mid = (cervix.shape.p0 + cervix.shape.p1) / 2
    ends = np.stack([mid, cervix.shape.p0 * 0.7 + mid * 0.3, cervix.shape.p1 * 0.7 + mid * 0.3])
    assert (a.ctv.level(ends.astype(np.float32)) < 1.0).all()  # the cervix axis lies inside the CTV
    ctv_hu = next(layer.hu for layer in a.layers if layer.label == LABELS["CTV"])
    gap = abs(a.params["parametrium_contrast_hu"])
    assert gap >= max(25.0, 1.2 * a.params["noise_hu"]) - 1e-6
    assert any(abs(layer.hu - ctv_hu) == pytest.approx(gap) for layer in a.layers if not layer.label)


def test_v4_includes_fat_free_pelvises():
    flags = [PhantomV4(s).params["fat_free"] for s in range(30)]
    assert 3 <= sum(flags) <= 20
    lean = PhantomV4(flags.index(True))
    assert all(layer.hu > -80 for layer in lean.layers[2:3])  # the pelvic-fat layer holds soft tissue


def test_v4_ctv_edge_is_more_visible_than_v3():
    """The reason v4 exists: per-voxel CNR of the CTV edge (scripts/ctv_boundary_contrast.py's measure)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ctv_boundary_contrast.py"
    spec = importlib.util.spec_from_file_location("ctv_boundary_contrast", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cnr = {style: [module.boundary_contrast(make_phantom_style(style, 620000 + s, matrix=96))["cnr"] for s in range(4)]
           for style in ("v3", "v4")}
    assert np.median(cnr["v4"]) > 1.0 and np.median(cnr["v4"]) > np.median(cnr["v3"]), cnr


def test_v7_is_v4_with_quiet_surroundings():
    """v7 (session 15): the same anatomy and labels as v4 of its seed, the pelvic fat at the soft tissue's
    level and the parametrium at the cervix's; a training style; v4 itself untouched."""
    from MnetImSegmentLib.research.phantom_v3 import PhantomV7, make_phantom_v7

    v4_before = make_phantom_v4(5, **SMALL)
    a, b = make_phantom_v7(5, **SMALL), make_phantom_v7(5, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array) and a.params == b.params and a.params["style"] == "v7"
    assert "v7" in TRAINING_STYLES and make_phantom_style("v7", 5, **SMALL).params == a.params
    assert np.array_equal(make_phantom_v4(5, **SMALL).ct.array, v4_before.ct.array)
    assert np.array_equal(a.labels.array, v4_before.labels.array)  # same anatomy, same labels
    assert not np.array_equal(a.ct.array, v4_before.ct.array)
    for seed in range(6):
        quiet, tied = PhantomV7(seed), PhantomV4(seed)
        roles = quiet.roles
        assert abs(roles["pelvic_fat"].hu - quiet.params["soft_tissue_hu"]) <= 10.0
        assert abs(roles["parametrium"].hu - roles["cervix"].hu) <= 8.0
        assert roles["ctv"].hu == tied.roles["ctv"].hu  # the CTV keeps its own contrast (v3's draw)
        assert quiet.params["parametrium_contrast_hu"] == pytest.approx(roles["parametrium"].hu - roles["ctv"].hu)
        assert abs(tied.params["parametrium_contrast_hu"]) >= 25.0 or abs(tied.params["parametrium_contrast_hu"]) >= 1.2 * tied.params["noise_hu"]
