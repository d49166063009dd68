"""Parallel-beam CT projector: Radon transform, Ram-Lak filter, filtered back-projection (torch).

Shared by the metal-artefact simulation of the phantoms (``research.metal_artifacts``) and the
metal-artefact reduction of the inference path (``engine.metal_reduction``), so both see the same
geometry. Bilinear rotations with ``grid_sample``; the back-projection is the adjoint of the
projection, so the two always agree on angles and orientation. Only torch and numpy: light enough
for Slicer's Python.

Images are (C, N, N) tensors on a square grid of ``pixel_mm`` pixels; projections are (A, C, N):
one row of N detector bins per view angle and channel. Only the disc inscribed in the grid is
seen by every view; pad the image when its corners matter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def rotation_grids(n: int, angles: np.ndarray):
    """``grid_sample`` grids that rotate an N x N image to each view angle (radians)."""
    return _cached_grids(int(n), tuple(float(a) for a in angles))


@lru_cache(maxsize=8)
def _cached_grids(n: int, angles: tuple):
    # Building the sampling grids costs as much as a projection: keep them for the next slice.
    import torch
    import torch.nn.functional as F

    angles = np.asarray(angles)
    c, s = np.cos(angles), np.sin(angles)
    theta = np.zeros((len(angles), 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    return F.affine_grid(torch.from_numpy(theta), (len(angles), 1, n, n), align_corners=False)


def radon(images, grids, pixel_mm: float):
    """Parallel-beam projections: (C, N, N) tensor -> (A, C, N) line integrals (mm * 1/mm)."""
    import torch.nn.functional as F

    a = grids.shape[0]
    rotated = F.grid_sample(images[None].expand(a, -1, -1, -1), grids, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return rotated.sum(dim=2) * pixel_mm


def ramp_filter(sino, pixel_mm: float):
    """Ram-Lak filtering along the detector axis (spatial kernel, zero padded)."""
    import torch
    import torch.nn.functional as F

    n = sino.shape[-1]
    k = np.arange(-n + 1, n)
    h = np.zeros(len(k))
    h[k == 0] = 1 / (4 * pixel_mm**2)
    odd = k % 2 == 1
    h[odd] = -1 / (np.pi**2 * k[odd].astype(float) ** 2 * pixel_mm**2)
    kernel = torch.from_numpy(h.astype(np.float32))[None, None]
    flat = sino.reshape(-1, 1, n)
    out = F.conv1d(flat, kernel, padding=n - 1) * pixel_mm
    return out.reshape(sino.shape)


def back_project(filtered, grids_inverse, n: int):
    """Adjoint of :func:`radon` (smear each view across the grid, rotate back, sum) times pi / A."""
    import torch.nn.functional as F

    a = filtered.shape[0]
    smeared = filtered[:, :, None, :].expand(a, filtered.shape[1], n, n)
    back = F.grid_sample(smeared.contiguous(), grids_inverse, mode="bilinear", padding_mode="zeros", align_corners=False)
    return back.sum(0) * (np.pi / a)


def fbp(sino, angles: np.ndarray, n: int, pixel_mm: float):
    """Filtered back-projection of (A, C, N) projections to (C, N, N)."""
    return back_project(ramp_filter(sino, pixel_mm), rotation_grids(n, -angles), n)
