"""Metal-artefact reduction of the network input (issue 11): streaks through metal go, the rest stays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import WeightsError
from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.engine.metal_reduction import METAL_REDUCTIONS, METAL_THRESHOLD_HU, reduce_metal_artifacts
from MnetImSegmentLib.engine.weights import read_card
from MnetImSegmentLib.engine.windows import InputSpec, network_input, normalise
from MnetImSegmentLib.research.metal_artifacts import ArtifactSettings, metal_artifact_hu
from MnetImSegmentLib.research.phantom import rotation_matrix
from MnetImSegmentLib.research.phantom_v3 import make_phantom_v3

from helpers.weights import make_weights

METHODS = ("linear", "normalised")


def _scene(spacing_xy, shape=(72, 96)):
    """A water ellipse with a brighter 'cervix' and a 4 mm steel rod: (x, y, clean HU, metal, body far from metal)."""
    sx, sy = spacing_xy
    ny, nx = shape
    y, x = np.meshgrid((np.arange(ny) - ny / 2 + 0.5) * sy, (np.arange(nx) - nx / 2 + 0.5) * sx, indexing="ij")
    clean = np.where(x**2 / 40**2 + y**2 / 30**2 < 1, 40.0, -1000.0).astype(np.float32)
    clean[(x - 8) ** 2 + (y + 5) ** 2 < 9**2] = 90.0
    r2 = (x - 2) ** 2 + (y - 1) ** 2
    metal = r2 < 2.0**2
    clean[metal] = 3071.0
    far = (clean > -500) & ~metal & (r2 > 5**2)
    return x, y, clean, metal, far


def _rms(a, where):
    return float(np.sqrt(np.mean(a[where] ** 2)))


def _painted_line(x, y, clean, metal, angle=0.6, amplitude=300.0):
    dist = np.abs(-np.sin(angle) * (x - 2) + np.cos(angle) * (y - 1))
    return clean + np.where(metal | (clean < -500), 0.0, amplitude * np.exp(-dist**2 / 2)).astype(np.float32)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.2, 0.8)], ids=["isotropic", "anisotropic"])
@pytest.mark.parametrize("method", METHODS)
def test_streaks_through_metal_are_reduced_and_the_metal_is_kept(method, spacing):
    """A painted line through the rod and physically simulated steel streaks (beam hardening, photon starvation,
    inconsistent views) lose at least 40 % (painted) and 30 % (physical) of their RMS error; the metal is unchanged."""
    x, y, clean, metal, far = _scene(spacing)
    painted = _painted_line(x, y, clean, metal)
    artefact = metal_artifact_hu(clean, metal.astype(np.float32), spacing, "steel", np.random.default_rng(0),
                                 ArtifactSettings(view_errors=6, view_error_sd=1.0), 3071.0)
    physical = np.clip(clean + np.where(metal, 0.0, artefact), -1024, 3071).astype(np.float32)
    for image, keep in ((painted, 0.6), (physical, 0.7)):
        before = _rms(image - clean, far)
        out = reduce_metal_artifacts(image[None], spacing, method)[0]
        assert before > 40.0  # the scene really has streaks
        assert _rms(out - clean, far) < keep * before
        np.testing.assert_array_equal(out[metal], image[metal])


@pytest.mark.parametrize("method", METHODS)
def test_a_slice_without_streaks_is_barely_changed(method):
    _, _, clean, _, far = _scene((1.2, 0.8))
    out = reduce_metal_artifacts(clean[None], (1.2, 0.8), method)[0]
    assert _rms(out - clean, far) < 15.0


@pytest.mark.parametrize("method", METHODS)
def test_mirrored_slice_gives_the_mirrored_correction(method):
    """Left-right and up-down flips of the slice commute with the reduction (to the projector's sampling)."""
    x, y, clean, metal, far = _scene((1.2, 0.8))
    image = _painted_line(x, y, clean, metal)
    out = reduce_metal_artifacts(image[None], (1.2, 0.8), method)[0]
    for axis in (0, 1):
        flipped = reduce_metal_artifacts(np.flip(image, axis)[None].copy(), (1.2, 0.8), method)[0]
        assert _rms(np.flip(flipped, axis) - out, far) < 6.0


def test_no_metal_no_change_and_the_input_is_never_modified():
    rng = np.random.default_rng(0)
    stack = rng.normal(40, 20, (3, 40, 50)).astype(np.float32)
    stack[1, 20, 25] = METAL_THRESHOLD_HU - 1  # dense bone or contrast: not metal
    for method in METAL_REDUCTIONS:
        out = reduce_metal_artifacts(stack, (0.9, 1.1), method)
        np.testing.assert_array_equal(out, stack)
        assert out is not stack
    with_metal = stack.copy()
    with_metal[1, 18:22, 23:27] = 3071.0
    kept = with_metal.copy()
    out = reduce_metal_artifacts(with_metal, (0.9, 1.1), "normalised")
    np.testing.assert_array_equal(with_metal, kept)  # the caller's array is untouched
    np.testing.assert_array_equal(out[[0, 2]], with_metal[[0, 2]])  # slices without metal are not touched
    assert not np.array_equal(out[1], with_metal[1])
    with pytest.raises(ValueError, match="unknown metal-artefact reduction 'mar'"):
        reduce_metal_artifacts(stack, (1.0, 1.0), "mar")


def test_input_spec_and_card_carry_the_reduction(tmp_path):
    assert "metal_reduction" not in InputSpec().to_dict()  # cards without it are unchanged
    spec = InputSpec.from_dict(InputSpec(metal_reduction="normalised").to_dict())
    assert spec.metal_reduction == "normalised" and spec.channels == 5
    hu = np.zeros((2, 8, 8), np.float32)
    np.testing.assert_array_equal(network_input(hu, (1.0, 1.0), spec), normalise(hu, spec))
    weights = make_weights(tmp_path / "w", metal_reduction="normalised")
    assert read_card(weights).input_spec.metal_reduction == "normalised"
    raw = json.loads((weights / "model.json").read_text())
    raw["input"]["metal_reduction"] = "o-mar"
    (weights / "model.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="metal_reduction"):
        read_card(weights)


def test_segmenter_reduces_metal_on_an_oblique_flipped_anisotropic_ct(tmp_path):
    """Weights with input.metal_reduction: the network's input differs from the plain weights' only on slices
    with metal, and there by less than the streaks (v3: physically simulated steel artefacts)."""
    direction = rotation_matrix(7, -5, 20) @ np.diag([-1.0, 1.0, -1.0])
    ph = make_phantom_v3(5, matrix=160, slice_mm=3.0, z_extent_mm=90, direction=direction, artifacts=True)
    assert ph.ct.array.max() >= METAL_THRESHOLD_HU
    inputs = {}
    for method in ("none", "normalised"):
        seg = Segmenter(make_weights(tmp_path / method, metal_reduction=method), device="cpu", fold_bn=False,
                        precision="fp32")
        seen = []
        forward = seg.model.forward
        seg.model.forward = lambda x, f=forward, s=seen: s.append(x[:, 2].clone()) or f(x)  # noqa: B023
        result = seg.segment(ph.ct, enforce_scope=False)
        assert result.mask.geometry.allclose(ph.ct.geometry) and "input" in result.seconds
        inputs[method] = np.concatenate([t.numpy() for t in seen])
    plain, reduced = inputs["none"], inputs["normalised"]
    changed = np.abs(plain - reduced).max(axis=(1, 2)) > 1e-6
    assert changed.any() and not changed.all()  # only the slices with metal
    assert np.abs(plain - reduced).mean() > 0


@pytest.mark.parametrize("n, n_angles", [(37, 50), (64, 64)])
def test_sparse_projector_is_the_grid_sample_projector(n, n_angles):
    """The reduction's sparse projector equals radon / back_project / fbp (the phantoms' simulation) to rounding."""
    import torch

    from MnetImSegmentLib.engine.projection import back_project, fbp, projector, radon, rotation_grids

    p = projector(n, n_angles)
    images = torch.rand(3, n, n, generator=torch.Generator().manual_seed(0))
    sino = radon(images, rotation_grids(n, p.angles), 1.3)
    torch.testing.assert_close(p.project(images, 1.3), sino, rtol=1e-4, atol=1e-4)
    views = torch.randn(n_angles, 3, n, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p.back_project(views), back_project(views, rotation_grids(n, -p.angles), n),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p.fbp(sino, 1.3), fbp(sino, p.angles, n, 1.3), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n, n_angles", [(37, 50), (64, 64)])
def test_row_subsets_and_fft_filter_are_exact(n, n_angles):
    """project_rows equals project on its rows (zero elsewhere); bins_near holds every bin a sparse image reaches;
    the FFT ramp filter equals the 2N - 1 tap convolution."""
    import torch

    from MnetImSegmentLib.engine.projection import projector, ramp_filter, ramp_filter_fft

    p = projector(n, n_angles)
    g = torch.Generator().manual_seed(2)
    images = torch.rand(3, n, n, generator=g)
    rows = np.sort(np.random.default_rng(0).choice(n_angles * n, n_angles * n // 5, replace=False))
    full = p.project(images, 0.9).permute(0, 2, 1).reshape(-1, 3)  # (A*N, C), rows view-major like project_rows'
    part = p.project_rows(images, rows, 0.9).permute(0, 2, 1).reshape(-1, 3)
    torch.testing.assert_close(part[rows], full[rows], rtol=1e-5, atol=1e-5)
    outside = np.setdiff1d(np.arange(n_angles * n), rows)
    assert torch.count_nonzero(part[outside]) == 0
    sparse = torch.zeros(3, n, n)
    pixels = np.array([[n // 3, n // 2], [n // 2, n // 2 + 1], [n - 5, 4], [2, n - 3]])
    sparse[:, pixels[:, 0], pixels[:, 1]] = 1.0
    reached = np.flatnonzero((p.project(sparse, 1.0) > 0).any(dim=1).reshape(-1).numpy())
    near = p.bins_near(pixels)
    assert set(reached) <= set(near) and len(near) < 0.5 * n_angles * n  # all of them, and not everything
    sino = torch.randn(n_angles, 3, n, generator=g)
    torch.testing.assert_close(ramp_filter_fft(sino, 1.3), ramp_filter(sino, 1.3), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_reduction_on_trace_rows_equals_reduction_on_all_rows(method, monkeypatch):
    """Projecting only the trace's bins and their neighbours changes the reduced image by < 0.01 HU (anisotropic)."""
    from MnetImSegmentLib.engine.projection import ParallelBeamProjector

    x, y, clean, metal, far = _scene((1.2, 0.8))
    stack = np.stack([_painted_line(x, y, clean, metal, angle=a) for a in (0.2, 0.9, 1.7)])
    fast = reduce_metal_artifacts(stack, (1.2, 0.8), method)
    every_row = ParallelBeamProjector.project_rows
    monkeypatch.setattr(ParallelBeamProjector, "project_rows",
                        lambda self, images, rows, pixel_mm: every_row(self, images, np.arange(len(self.angles) * self.n),
                                                                       pixel_mm))
    full = reduce_metal_artifacts(stack, (1.2, 0.8), method)
    assert np.abs(full - stack).max() > 50  # the reduction did something
    assert np.abs(fast - full).max() < 0.01


def test_projector_built_in_the_background_is_built_once():
    """A caller arriving during the background build waits for it and gets the same projector."""
    from MnetImSegmentLib.engine import projection

    projection.projector.cache_clear()
    thread = projection.build_in_background(41, 41)
    first = projection.projector(41, 41)
    thread.join()
    assert projection.projector(41, 41) is first and projection._build.cache_info().misses == 1


def _child_builds(queue):
    from MnetImSegmentLib.engine import projection

    queue.put(projection.projector(23, 23).n)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork start method only")
def test_process_forked_during_a_background_build_does_not_deadlock():
    """A child forked while the parent's background build holds the lock still gets a projector."""
    import multiprocessing

    from MnetImSegmentLib.engine import projection

    projection.projector.cache_clear()
    thread = projection.build_in_background(160, 160)  # long enough to be running at the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_builds, args=(queue,))
    child.start()
    child.join(60)
    thread.join()
    if child.is_alive():  # deadlocked: do not leave it behind
        child.kill()
        child.join()
    assert child.exitcode == 0 and queue.get(timeout=5) == 23


def test_command_line_option_reaches_the_run_config(capsys):
    """``mnetim train --metal-reduction normalised`` sets the run's input; an unknown method is refused by the parser."""
    from MnetImSegmentLib.cli import build_parser
    from MnetImSegmentLib.cli.options import train_config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "m.csv", "-o", "run", "--metal-reduction", "normalised"])
    assert train_config_from_args(args).input["metal_reduction"] == "normalised"
    assert "metal_reduction" not in train_config_from_args(parser.parse_args(["train", "m.csv", "-o", "run"])).input
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["train", "m.csv", "-o", "run", "--metal-reduction", "o-mar"])
    assert exc.value.code != 0 and "invalid choice: 'o-mar'" in capsys.readouterr().err
