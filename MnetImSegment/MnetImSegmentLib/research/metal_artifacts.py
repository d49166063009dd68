"""Physically simulated metal artefacts for synthetic CT slices (phantom v3; research code).

One slice at a time, on a reduced grid: the slice's attenuation (from its HU) and the true
attenuation of its metal are forward-projected (parallel-beam Radon transform), the measurement a
polychromatic beam would give is formed (three energy bins: beam hardening of metal, which a
linear reconstruction cannot undo, shows as dark bands between metal parts and bright/dark
streaks), Poisson noise is drawn on the detected counts (photon starvation behind metal: very few
counts, clipped at one photon), and the DIFFERENCE to the ideal linear measurement is
reconstructed by filtered back-projection (Ram-Lak filter). Only that difference is added back
to the full-resolution slice, so slices without metal are never touched and the slice's own
texture and noise stay as they were.

The projector is the inference path's (``engine.projection``): the artefacts simulated here and
the ones ``engine.metal_reduction`` removes share one geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.projection import fbp, radon, rotation_grids

MU_WATER_PER_MM = 0.0193  # ~70 keV effective energy
# Three-bin model of a 120 kVp spectrum after patient filtration: effective energies 50/70/100 keV.
SPECTRUM_WEIGHTS = np.array([0.30, 0.45, 0.25])
# mu(E) / mu(70 keV) per material (from NIST XCOM mass attenuation, rounded; photoelectric effect
# makes metals much more energy dependent than water, which is what beam hardening is).
ENERGY_RATIO = {"water": np.array([1.17, 1.0, 0.88]), "titanium": np.array([2.05, 1.0, 0.56]),
                "steel": np.array([2.35, 1.0, 0.50]), "plastic": np.array([1.12, 1.0, 0.90])}
# Linear attenuation at 70 keV (1/mm).
MU_METAL_PER_MM = {"titanium": 0.12, "steel": 0.28, "plastic": 0.024}


@dataclass
class ArtifactSettings:
    """Scanner parameters of the simulation.

    Attributes:
        photons: Unattenuated photons per 1 mm detector element and view of a real scanner (1e4: low
            dose; 1e6: high). Each simulated ray stands for ``scanner_views / n_angles`` views and a
            detector bin as wide as a simulation pixel, so it counts that many more photons: noise
            and photon starvation then match the real scanner's, not the coarse simulation's.
        n_angles: Projections over 180 degrees.
        max_grid: Largest side of the reduced simulation grid (pixels).
    """

    photons: float = 2e5
    n_angles: int = 96
    max_grid: int = 128
    scanner_views: int = 1000  # a real rotation's views: the simulated views stand for this many
    # Inconsistent rays through metal (scatter, detector non-linearity, patient motion): the SD of a
    # random line-integral error (mu * mm) on each ray that metal shadows. 0: none (v3, v4).
    ray_error_sd: float = 0.0
    # Severity of the whole artefact (spectrum, exposure and reconstruction kernel not modelled
    # here): the simulated artefact is multiplied by this. 1: as simulated.
    gain: float = 1.0
    # Whole views inconsistent with the rest (patient motion or a detector glitch during a few views,
    # photon starvation in the views that look along the longest metal path): ``view_errors`` of the
    # ``n_angles`` views carry a line-integral error of SD ``view_error_sd`` (mu * mm) on the rays metal
    # shadows. Filtered back-projection turns each into a straight streak through the metal along that
    # view, crossing the whole field of view, as on real CT with a steel tandem. 0: none (v3-v5).
    view_errors: int = 0
    view_error_sd: float = 0.0


def polychromatic(p_soft, p_metal, metal: str):
    """-log of the detected intensity fraction for water-like and metal path lengths (line integrals at 70 keV)."""
    import torch

    w = torch.from_numpy(SPECTRUM_WEIGHTS.astype(np.float32))
    rs = torch.from_numpy(ENERGY_RATIO["water"].astype(np.float32))
    rm = torch.from_numpy(ENERGY_RATIO[metal].astype(np.float32))
    att = torch.exp(-p_soft[..., None] * rs - p_metal[..., None] * rm)
    return -torch.log((att * w).sum(-1))


def metal_artifact_hu(slice_hu: np.ndarray, metal_fraction: np.ndarray, spacing_xy, metal: str,
                      rng: np.random.Generator, settings: ArtifactSettings = ArtifactSettings(),
                      painted_metal_hu: float = 3071.0) -> np.ndarray:
    """The HU the metal adds to one slice through beam hardening, photon starvation and noise.

    The slice's metal is expected painted at ``painted_metal_hu``; the result also carries the metal's
    true (higher) HU there, so clipping the sum to the scanner's range leaves the metal saturated.

    Args:
        slice_hu: (ny, nx) painted slice in HU (metal already painted at its clipped HU).
        metal_fraction: (ny, nx) in [0, 1], how much of each pixel is metal.
        spacing_xy: Pixel size (x, y) in mm.
        metal: ``titanium``, ``steel`` or ``plastic`` (the key of ``MU_METAL_PER_MM``).
        rng: Draws the Poisson counts (deterministic per seed).
        settings: Dose, number of views, simulation grid size.

    Returns:
        (ny, nx) float32 HU to ADD to the slice (zero where the slice has no metal).
    """
    import torch
    import torch.nn.functional as F

    ny, nx = slice_hu.shape
    if not np.any(metal_fraction > 0):
        return np.zeros((ny, nx), np.float32)
    extent_y, extent_x = ny * spacing_xy[1], nx * spacing_xy[0]
    pixel = max(max(extent_x, extent_y) / settings.max_grid, min(spacing_xy))
    my, mx = max(8, int(round(extent_y / pixel))), max(8, int(round(extent_x / pixel)))
    n = max(my, mx)
    mu_soft = np.clip(1.0 + slice_hu / 1000.0, 0.0, None) * MU_WATER_PER_MM * (1.0 - metal_fraction)
    mu_metal = metal_fraction * MU_METAL_PER_MM[metal]
    stack = torch.from_numpy(np.stack([mu_soft, mu_metal]).astype(np.float32))[None]
    small = F.interpolate(stack, size=(my, mx), mode="area")[0]  # area averaging keeps line integrals
    grid = torch.zeros((2, n, n))
    oy, ox = (n - my) // 2, (n - mx) // 2
    grid[:, oy:oy + my, ox:ox + mx] = small
    angles = np.linspace(0, np.pi, settings.n_angles, endpoint=False)
    with torch.no_grad():
        sino = radon(grid, rotation_grids(n, angles), pixel)  # (A, 2, N)
        p_soft, p_metal = sino[:, 0], sino[:, 1]
        poly = polychromatic(p_soft, p_metal, metal)
        hardening = poly - polychromatic(p_soft, torch.zeros_like(p_metal), metal) - p_metal
        photons = settings.photons * (settings.scanner_views / settings.n_angles) * pixel
        expected = photons * torch.exp(-poly).numpy().astype(np.float64)
        counts = np.maximum(rng.poisson(expected), 1.0)  # photon starvation: at least one photon is "seen"
        measured_noise = torch.from_numpy((-np.log(counts / photons)).astype(np.float32)) - poly
        # Noise only where metal shadows the ray: the slice already carries its own noise elsewhere.
        noise = measured_noise * (1.0 - torch.exp(-2.0 * p_metal))
        if settings.ray_error_sd > 0:
            error = rng.normal(0.0, settings.ray_error_sd, tuple(p_metal.shape)).astype(np.float32)
            noise = noise + torch.from_numpy(error) * (1.0 - torch.exp(-2.0 * p_metal))
        if settings.view_errors > 0 and settings.view_error_sd > 0:
            views = rng.choice(len(angles), size=min(settings.view_errors, len(angles)), replace=False)
            # One error shared by the view's metal rays (a band along the view) plus one per ray (thin lines).
            level = rng.normal(0.0, settings.view_error_sd, (len(views), 1))
            ripple = rng.normal(0.0, settings.view_error_sd, (len(views), p_metal.shape[1]))
            error = np.zeros(tuple(p_metal.shape), np.float32)
            error[views] = level + ripple
            noise = noise + torch.from_numpy(error) * (1.0 - torch.exp(-2.0 * p_metal))
        delta = fbp((hardening + noise)[:, None], angles, n, pixel)[0]
    delta_hu = delta[oy:oy + my, ox:ox + mx] * (1000.0 * settings.gain / MU_WATER_PER_MM)
    full = F.interpolate(delta_hu[None, None], size=(ny, nx), mode="bilinear", align_corners=False)[0, 0].numpy()
    true_hu = 1000.0 * (MU_METAL_PER_MM[metal] / MU_WATER_PER_MM - 1.0)
    return (full + metal_fraction * (true_hu - painted_metal_hu)).astype(np.float32)
