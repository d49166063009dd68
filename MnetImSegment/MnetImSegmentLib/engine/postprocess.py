"""Post-processing of the network's probabilities on the ROI stack, before paste-back.

``fill_slice_gaps``: a CTV is one body around the tandem, so a run of empty slices between two slices
the network drew is a dropout of the network, not anatomy. On the held-out phantom style (session 17,
``docs/generalisation.md``) the network answers p < 0.001 on every slice of a 7-13 slice stretch in
the middle of the CTV, where the slices above and below are drawn and the atlas says CTV; the
largest-component step then keeps one of the two halves. The gap is filled by shape-based
interpolation (Raya & Udupa 1990): the signed distance maps of the two bounding slices' masks are
interpolated linearly along the slice axis, as an oncologist's "fill between slices" would, and the
result is written back as a probability whose ``threshold`` level is the interpolated contour, so the
paste-back, the threshold and the quality checks see it like any other network output.
"""

from __future__ import annotations

import numpy as np

# A slice counts as drawn from this CTV area on: the quality checks judge slices from the same area.
MIN_DRAWN_MM2 = 30.0
# The interpolated probability falls from 1 to 0 over a few mm around the interpolated contour.
EDGE_MM = 1.0


def _signed_distance_mm(mask2d: np.ndarray, spacing_xy) -> np.ndarray:
    """Signed distance (mm) to the contour of a 2D mask: negative inside, positive outside."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask2d.astype(np.uint8))
    img.SetSpacing((float(spacing_xy[0]), float(spacing_xy[1])))
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(dist).astype(np.float32)


def slice_gaps(prob: np.ndarray, spacing, threshold: float, max_gap_mm: float,
               min_area_mm2: float = MIN_DRAWN_MM2) -> list[tuple[int, int]]:
    """(a, b) pairs of drawn slices with only undrawn slices between them, at most ``max_gap_mm`` apart.

    Args:
        prob: Probabilities (slices, H, W) on the ROI stack.
        spacing: The stack's (x, y, z) spacing in mm; z is the distance between slices.
        threshold: The card's threshold.
        max_gap_mm: The longest undrawn stretch filled, in mm ((b - a - 1) slices).
        min_area_mm2: The CTV area from which a slice counts as drawn.
    """
    area = (prob >= threshold).reshape(len(prob), -1).sum(1) * float(spacing[0]) * float(spacing[1])
    drawn = np.flatnonzero(area >= min_area_mm2)
    return [(int(a), int(b)) for a, b in zip(drawn[:-1], drawn[1:])
            if b - a > 1 and (b - a - 1) * float(spacing[2]) <= max_gap_mm + 1e-6]


def fill_slice_gaps(prob: np.ndarray, spacing, threshold: float, max_gap_mm: float,
                    min_area_mm2: float = MIN_DRAWN_MM2) -> tuple[np.ndarray, list[int]]:
    """``prob`` with the undrawn stretches between drawn slices filled by shape-based interpolation.

    Args:
        prob: Probabilities (slices, H, W) on the ROI stack; not modified.
        spacing: The stack's (x, y, z) spacing in mm.
        threshold: The card's threshold; the interpolated contour is drawn at this level.
        max_gap_mm: The longest undrawn stretch filled (0: nothing is filled).
        min_area_mm2: The CTV area from which a slice counts as drawn.

    Returns:
        (probabilities, the filled slice indices). Outside the filled slices the input is unchanged;
        inside them each voxel keeps the larger of the network's and the interpolated probability.
    """
    gaps = slice_gaps(prob, spacing, threshold, max_gap_mm, min_area_mm2) if max_gap_mm > 0 else []
    if not gaps:
        return prob, []
    out = prob.copy()
    level = float(np.log(threshold / (1.0 - threshold)))
    filled = []
    for a, b in gaps:
        da = _signed_distance_mm(prob[a] >= threshold, spacing)
        db = _signed_distance_mm(prob[b] >= threshold, spacing)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            d = (1.0 - t) * da + t * db
            interp = 1.0 / (1.0 + np.exp(np.clip(d / EDGE_MM - level, -50.0, 50.0)))
            out[k] = np.maximum(out[k], interp.astype(np.float32))
            filled.append(k)
    return out, filled
