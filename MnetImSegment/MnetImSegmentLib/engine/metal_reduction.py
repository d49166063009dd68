"""Metal-artefact reduction of the network's input (sinogram inpainting; issue 11).

A steel or titanium tandem makes streaks on CT: bright and dark lines through the metal, across
the whole slice. They cross the CTV's faint edge and are the largest single cause of error on the
phantoms whose streaks the network has not seen. Clinical scanners reduce them (O-MAR, iMAR,
SEMAR) by treating the rays that passed through metal as missing: the projections are
re-computed, the metal's shadow in them (the "metal trace") is filled in from its neighbours, and
the difference is reconstructed. Any streak that runs through the metal lies inside that trace
(a line is one point of the sinogram, at its own angle and offset), whatever made it: beam
hardening, photon starvation, motion, or a generator that paints lines.

Two methods, chosen by the weights (``InputSpec.metal_reduction``) so that training and
inference see the same images:

* ``linear`` (LI-MAR, Kalender et al. 1987): linear interpolation across the trace, detector bin
  by detector bin within each view;
* ``normalised`` (NMAR, Meyer et al., Med Phys 2010): the projections are first divided by those
  of a tissue-class prior (air, soft tissue, bone) made from the LI image, interpolated, and
  multiplied back; edges of bone and air that cross the trace survive, which LI blurs.

It runs on the ROI stack the network reads (after :func:`.roi.crop`), slice by slice in its
planes, only on slices that hold metal. Only the correction is resampled: the slice keeps its own
texture and noise, and the metal is put back as it was (the network and the quality checks still
see the tandem). Streaks from metal outside the ROI (a hip prosthesis) are not removed; a
plastic applicator has no metal and passes unchanged.
"""

from __future__ import annotations

import numpy as np

from .projection import build_in_background, projector

METAL_REDUCTIONS = ("none", "linear", "normalised")
METAL_THRESHOLD_HU = 2500.0  # above cortical bone (<~2000 HU) and iodinated bladder contrast
SLICES_PER_PASS = 64  # bounds the memory of one pass (views x slices x grid floats, a few MB)
# Tissue classes of the NMAR prior, in HU: below AIR_HU air, above BONE_HU bone, soft tissue between.
AIR_HU, BONE_HU = -500.0, 300.0


def _fill_trace(rows: np.ndarray, trace: np.ndarray) -> np.ndarray:
    """Linear interpolation along the last axis across the bins where ``trace`` is True."""
    n = rows.shape[-1]
    bins = np.broadcast_to(np.arange(n), rows.shape)
    known = ~trace
    prev = np.maximum.accumulate(np.where(known, bins, -1), axis=-1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(known, bins, n), -1), axis=-1), -1)
    has_prev, has_next = prev >= 0, nxt < n
    p, q = np.clip(prev, 0, n - 1), np.clip(nxt, 0, n - 1)
    yp = np.take_along_axis(rows, p, -1)
    yq = np.take_along_axis(rows, q, -1)
    t = np.where(has_prev & has_next, (bins - p) / np.maximum(q - p, 1), np.where(has_prev, 0.0, 1.0))
    filled = np.where(has_prev | has_next, yp + t * (yq - yp), 0.0)
    return np.where(trace, filled, rows).astype(rows.dtype)


def _tissue_prior(hu):
    """NMAR's prior image (HU + 1000): air, soft tissue and bone classes, bone kept as it is."""
    import torch

    return torch.where(hu < AIR_HU, torch.zeros_like(hu), torch.where(hu > BONE_HU, hu + 1000.0,
                                                                       torch.full_like(hu, 1000.0)))


def _correct_square(v, metal, pixel_mm: float, method: str, n_angles: int):
    """Correction (HU) for (C, N, N) images ``v`` (HU + 1000, >= 0) with metal masks ``metal``.

    Only the trace's bins and their neighbours are projected (``project_rows``): the correction is
    zero outside the trace, and filling it reads only the bins either side. The two
    reconstructions are full.
    """
    import torch
    import torch.nn.functional as F

    p = projector(v.shape[-1], n_angles)
    grown = F.max_pool2d(metal[:, None], 3, stride=1, padding=1)[:, 0]  # the partial-volume rim belongs to the metal
    near = p.bins_near(np.argwhere(grown.numpy().any(axis=0)))
    trace = (p.project_rows(grown, near, pixel_mm) > 0.05 * pixel_mm).numpy()
    trace |= np.roll(trace, 1, -1) | np.roll(trace, -1, -1)  # and the detector bins either side
    read = trace | np.roll(trace, 1, -1) | np.roll(trace, -1, -1)  # what filling the trace reads
    rows = np.flatnonzero(read.any(axis=1))  # (A, N) -> flat view * N + bin, for all slices of the pass
    s = p.project_rows(v, rows, pixel_mm).numpy()
    filled = _fill_trace(s, trace)
    if method == "normalised":
        li = v + p.fbp(torch.from_numpy(np.where(trace, filled - s, 0.0)), pixel_mm)
        li = torch.where(grown > 0, torch.full_like(li, 1000.0), li)  # the metal's place: soft tissue
        prior = p.project_rows(_tissue_prior(li - 1000.0), rows, pixel_mm).numpy()
        scale = np.maximum(prior, 1.0 * pixel_mm)  # rays through ~no tissue: no normalisation
        filled = _fill_trace(s / scale, trace) * scale
    return p.fbp(torch.from_numpy(np.where(trace, filled - s, 0.0).astype(np.float32)), pixel_mm)


def square_grid(shape_yx, spacing_xy) -> tuple[float, int, int, int]:
    """The projector's grid for slices of ``shape_yx`` at ``spacing_xy``: (pixel mm, rows, columns, side N).

    Square pixels of the finer spacing; the slice is padded into an N x N grid whose inscribed disc
    (what every view sees) holds the whole slice.
    """
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    pixel = min(sx, sy)
    my, mx = max(4, int(round(ny * sy / pixel))), max(4, int(round(nx * sx / pixel)))
    return pixel, my, mx, int(np.ceil(max(my, mx) * np.sqrt(2.0))) + 2


def prepare(method: str, shape_yx, spacing_xy) -> None:
    """Start building the projector that :func:`reduce_metal_artifacts` will need, in the background.

    For callers that know the ROI grid before they have the CT (a loaded model): the half-second
    build then overlaps reading the CT and locating the ROI instead of adding to them.
    """
    if method in ("linear", "normalised"):
        n = square_grid(shape_yx, spacing_xy)[3]
        build_in_background(n, n)


def reduce_metal_artifacts(hu: np.ndarray, spacing_xy, method: str = "linear",
                           threshold_hu: float = METAL_THRESHOLD_HU) -> np.ndarray:
    """The stack with the streaks of its metal reduced (a new float32 array; ``hu`` is not modified).

    Args:
        hu: (slices, rows, columns) HU on a grid whose planes are the CT's slices.
        spacing_xy: Column and row spacing (mm).
        method: ``linear`` or ``normalised`` (see the module docstring); ``none`` returns a copy.
        threshold_hu: Voxels at or above this are metal.
    """
    import torch
    import torch.nn.functional as F

    if method not in METAL_REDUCTIONS:
        raise ValueError(f"unknown metal-artefact reduction '{method}' (known: {', '.join(METAL_REDUCTIONS)})")
    out = np.array(hu, dtype=np.float32, copy=True)
    if method == "none" or out.ndim != 3:
        return out
    metal = out >= threshold_hu
    todo = np.nonzero(metal.any(axis=(1, 2)))[0]
    if len(todo) == 0:
        return out
    _, ny, nx = out.shape
    pixel, my, mx, n = square_grid((ny, nx), spacing_xy)
    oy, ox = (n - my) // 2, (n - mx) // 2
    n_angles = n  # as many views as pixels across: fewer leave a moire of fine lines; more cost time for nothing visible
    with torch.no_grad():
        for k0 in range(0, len(todo), SLICES_PER_PASS):
            ks = todo[k0:k0 + SLICES_PER_PASS]
            stack = torch.from_numpy(np.stack([np.maximum(out[ks] + 1000.0, 0.0), metal[ks].astype(np.float32)], 1))
            if (my, mx) != (ny, nx):
                stack = F.interpolate(stack, size=(my, mx), mode="bilinear", align_corners=False)
            square = torch.zeros((len(ks), 2, n, n))
            square[:, :, oy:oy + my, ox:ox + mx] = stack
            delta = _correct_square(square[:, 0], (square[:, 1] >= 0.5).float(), pixel, method, n_angles)
            delta = delta[:, oy:oy + my, ox:ox + mx]
            if (my, mx) != (ny, nx):
                delta = F.interpolate(delta[:, None], size=(ny, nx), mode="bilinear", align_corners=False)[:, 0]
            # The metal and its partial-volume rim are put back as they were: the correction removed the metal, and
            # the network and the quality checks must still see the tandem.
            rim = F.max_pool2d(torch.from_numpy(metal[ks].astype(np.float32))[:, None], 3, stride=1, padding=1)[:, 0]
            out[ks] = np.where(rim.numpy() > 0, out[ks], out[ks] + delta.numpy())
    return out
