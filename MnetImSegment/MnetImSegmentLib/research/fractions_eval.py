"""Phantom pairs (fraction 1 -> 2) for calibrating and measuring the fusion of prior and network.

One pair = fraction 1's CT + approved (true) CTV, fraction 2's CT, its true CTV, the network's
probability on fraction 2 and the propagated prior. Pairs are cached as .npz (only the box around
the CTVs) so that the calibration grid and the evaluation table reuse one network run per pair.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.volume import Geometry, Volume
from ..engine.fractions import fuse, propagate_prior
from .fractions_phantom import make_fraction_series
from .metrics import volumetric_dice


def build_pair(seed: int, matrix: int, segmenter, cache_dir=None) -> dict:
    """The arrays of one pair, cropped to the box around the CTVs (cached in ``cache_dir`` if given)."""
    path = Path(cache_dir) / f"pair_{seed}_{matrix}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    first, second = make_fraction_series(seed, 2, matrix=matrix)
    ct = second.phantom.ct
    t0 = time.perf_counter()
    prop = propagate_prior(first.phantom.ct, first.phantom.mask(), ct, first.anchors, second.anchors)
    t_reg = time.perf_counter() - t0
    result = segmenter.segment(ct, keep_probability=True, enforce_scope=False)
    truth = second.phantom.mask().array
    union = (truth > 0) | (prop.mask.array > 0) | (result.probability.array >= 0.05)
    nz = np.argwhere(union)
    lo, hi = np.maximum(nz.min(0) - 12, 0), np.minimum(nz.max(0) + 13, truth.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pair = {"truth": truth[box].astype(np.uint8), "prior": prop.mask.array[box].astype(np.uint8),
            "probability": result.probability.array[box].astype(np.float32),
            "network": result.mask.array[box].astype(np.uint8),
            "spacing": np.asarray(ct.geometry.spacing, float), "threshold": np.float32(result.threshold),
            "residual_mm": np.float32(prop.residual_mm if prop.residual_mm is not None else np.nan),
            "registration_s": np.float32(t_reg), "metal": np.int8(first.phantom.params["applicator_metal"])}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **pair)
    return pair


def score_pair(pair: dict, weight: float, sigma_mm: float) -> dict:
    """Dice to the truth of the prior alone, the network alone and the fusion with (weight, sigma)."""
    g = Geometry(tuple(pair["spacing"]))
    fusion = fuse(Volume(pair["probability"], g), Volume(pair["prior"], g), float(pair["threshold"]),
                  weight=weight, sigma_mm=sigma_mm)
    truth = pair["truth"] > 0
    return {"prior": volumetric_dice(pair["prior"] > 0, truth), "network": volumetric_dice(pair["network"] > 0, truth),
            "fused": volumetric_dice(fusion.mask.array > 0, truth), "agreement": fusion.dice_prior_vs_network,
            "follows_prior": fusion.follows_prior}
