"""Tiny random-init weights folders with valid model cards (for plumbing tests, not accuracy)."""

from __future__ import annotations

from pathlib import Path

TINY_CONFIG = dict(features=(8, 16, 32, 64, 128), input_branch_channels=(8, 8, 8, 8))


def make_weights(folder: Path, name: str = "Mnet_Im", threshold: float = 0.5, seed: int = 0, applicator_prior: str = "none",
                 metal_reduction: str = "none", atlas=None, **config) -> Path:
    """A random-init weights folder with a valid card (for plumbing tests, not accuracy).

    ``applicator_prior``, ``metal_reduction``: its input's (``engine.windows.InputSpec``); ``atlas``: the
    CTV atlas of an ``"atlas"`` prior.
    """
    import torch

    from MnetImSegmentLib.engine.roi import RoiSpec
    from MnetImSegmentLib.engine.weights import save_weights
    from MnetImSegmentLib.engine.windows import InputSpec
    from MnetImSegmentLib.models import build_model, model_config

    cfg = {**TINY_CONFIG, **config} if name == "Mnet_Im" else config
    if applicator_prior != "none":
        cfg["in_channels"] = InputSpec(applicator_prior=applicator_prior).channels
    torch.manual_seed(seed)
    model = build_model(name, **cfg)
    card = {
        "name": f"test-{name}", "version": "0.0.0", "architecture": name, "config": model_config(name, **cfg),
        "input": dict(InputSpec(applicator_prior=applicator_prior, metal_reduction=metal_reduction).to_dict(),
                      roi=RoiSpec().to_dict()), "threshold": threshold,
        "postprocessing": {"largest_component": True}, "intended_use": "tests only",
    }
    return save_weights(model, folder, card, atlas=atlas)
