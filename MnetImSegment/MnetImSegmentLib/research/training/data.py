"""Training data: the scans of a manifest (:mod:`..manifest`) as ROI crops and 2.5D windows.

Each scan is reduced once to what the network sees: the automatic ROI (the same code inference
uses), cropped with ``jitter_px`` extra context on each side so training can shift the crop, then
normalised. Augmentation, chosen for CT: random in-plane shift of the crop (ROI-location error),
left-right mirroring (the pelvis is near-symmetric), a global HU offset and small gain (scanner
calibration), Gaussian noise (dose). No rotations or elastic warps of the HU values: phantoms and
patients already vary in pose.

For weights with an applicator prior (``InputSpec.applicator_prior``, ``engine.applicator_prior``), each scan also keeps
the prior on its crop, computed from the localiser run on that scan's image (not from the truth:
training must see the localiser's errors that inference will see). It is shifted, mirrored and
warped with the window, never intensity-augmented, and dropped (all zeros, as for an untrusted
localiser) in ``APPLICATOR_PRIOR_DROPOUT`` of the windows so that the network also works without it.
The ``"atlas"`` prior is a statistic of the training labels, so it is attached in a second step: the
training scans are prepared first, the CTV atlas is built from their crops and fits
(:func:`ctv_atlas_of`), then every scan gets its prior (:func:`attach_prior`).

CTV camouflage (``ctv_camouflage``, off by default): in that share of the windows the CTV is made
partly or wholly iso-dense with the tissue around it (:func:`camouflage_ctv`). A real HR-CTV is
often invisible on CT. The phantoms' CTVs are mostly visible, and the held-out style's are not
(docs/generalisation.md: +50 HU lifts it from 0.51 to 0.71). So the network must also learn to
draw the CTV from the context, the tandem and the prior, not from its edge alone.

CTV reveal (``ctv_reveal``, off by default), the camouflage's counterpart: in that share of the
windows the CTV is shifted by 20-80 HU, brighter or darker, with a partial-volume edge
(:func:`reveal_ctv`). Measured on 0.3.2 (docs/generalisation.md, session 21): a CTV made 60 HU
brighter than it was is segmented hardly better (+0.03 over 40 phantoms, worse on v4), as the
phantoms give the CTV's own edge little to earn; a real enhancing CTV is exactly that case. At 0.4 for
8 epochs of fine-tuning (candidate v13a) it did not change that.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ...core.errors import DatasetError, InputError
from ...core.files import atomic_path
from ...core.volume import Geometry, Volume
from ...engine.applicator import locate_applicator
from ...engine.io import read_image
from ...engine.applicator_prior import CtvAtlas, applicator_prior_map, build_ctv_atlas
from ...engine.roi import Roi, RoiSpec, crop, locate_roi
from ...engine.windows import InputSpec, network_input, window_indices
from ..manifest import ScanRecord
from .augment import FullAugmentation, check_level


def read_volume_pair(record: ScanRecord) -> tuple[Volume, Volume]:
    image = read_image(record.image)
    mask = read_image(record.mask)
    if image.shape != mask.shape or not image.geometry.allclose(mask.geometry, atol=1e-3):
        raise DatasetError(f"Scan '{record.scan_id}': mask grid {mask.shape} {mask.geometry} differs from image grid "
                           f"{image.shape} {image.geometry}.")
    return image, mask


@dataclass
class PreparedScan:
    """One scan as the network sees it: normalised ROI stack with context, and its CTV mask."""

    scan_id: str
    image: np.ndarray  # (slices, H + 2 jitter, W + 2 jitter) float16 in [0, 1]
    mask: np.ndarray  # same shape, uint8
    roi: Roi
    spacing_mm: tuple[float, float, float]  # of the crop, (x, y, z)
    prior: Optional[np.ndarray] = None  # same shape as ``image``, float16 in [0, 1], when the input has a prior
    geometry: Optional[Geometry] = None  # of the crop (with its context)
    fit: object = None  # the localiser's ApplicatorFit, when the input has a prior


def ctv_mask(labels: np.ndarray, label_value: int = 1) -> np.ndarray:
    """The CTV of a mask file as booleans: ``== label_value`` in a multi-label map, else ``> 0``."""
    return (labels == label_value) if labels.max() > 1 else (labels > 0)


class DatasetWarning(UserWarning):
    """Data that can be used but deserves a look (a scan without CTV, a CTV cut by the ROI)."""


# Below this share of the CTV volume inside the training crop, the ROI location probably failed.
MIN_CTV_INSIDE_CROP = 0.9
# Share of training windows whose applicator prior is zeroed (what an untrusted localiser gives).
APPLICATOR_PRIOR_DROPOUT = 0.2


def prepare_scan(record: ScanRecord, roi_spec: RoiSpec, input_spec: InputSpec, jitter_px: int = 16,
                 label_value: int = 1) -> PreparedScan:
    """Crop, normalise and binarise one scan (see the module docstring).

    The ``"atlas"`` prior is left to :func:`attach_prior` (it needs the atlas of all training scans).

    A scan without CTV is kept (its windows are negative examples) with a :class:`DatasetWarning`;
    so is a scan whose CTV lies partly outside the crop, since that points at a failed ROI location.
    """
    image, mask = read_volume_pair(record)
    fit = locate_applicator(image) if input_spec.applicator_prior != "none" else None
    roi = locate_roi(image, roi_spec, fit=fit)
    padded = replace(roi_spec, size_px=(roi_spec.size_px[0] + 2 * jitter_px, roi_spec.size_px[1] + 2 * jitter_px))
    img = crop(image, roi, padded)
    target = ctv_mask(mask.array, label_value)
    msk = crop(mask.with_array(target.astype(np.float32)), roi, padded, default=0.0)
    binary = (msk.array >= 0.5).astype(np.uint8)
    if not target.any():
        warnings.warn(f"Scan '{record.scan_id}': the mask '{record.mask}' holds no CTV; the scan is kept as a "
                      "negative example.", DatasetWarning, stacklevel=2)
    else:
        # Compare physical volumes: the crop is resampled in-plane, so voxel counts differ.
        ml_all = float(target.sum()) * float(np.prod(mask.geometry.spacing))
        ml_kept = float(binary.sum()) * float(np.prod(msk.geometry.spacing))
        if ml_kept < MIN_CTV_INSIDE_CROP * ml_all:
            warnings.warn(f"Scan '{record.scan_id}': only {100 * ml_kept / ml_all:.0f}% of the CTV lies inside the "
                          f"training crop around the located ROI (method '{roi.method}'); check the ROI location "
                          "or enlarge the ROI.", DatasetWarning, stacklevel=2)
    scan = PreparedScan(record.scan_id, network_input(img.array, img.geometry.spacing[:2], input_spec).astype(np.float16),
                        binary, roi, img.geometry.spacing, geometry=img.geometry, fit=fit)
    if input_spec.applicator_prior != "atlas":
        attach_prior(scan, input_spec)
    return scan


def attach_prior(scan: PreparedScan, input_spec: InputSpec, atlas: Optional[CtvAtlas] = None) -> PreparedScan:
    """Compute ``scan.prior`` on its crop from its fit (in place; returns the scan)."""
    prior = applicator_prior_map(input_spec.applicator_prior, scan.geometry, scan.image.shape, scan.fit, atlas=atlas)
    scan.prior = None if prior is None else prior.astype(np.float16)
    return scan


ATLAS_FILE = "ctv_atlas.safetensors"  # in a run folder, so that an unfinished run can still be exported


def save_atlas(path, atlas: CtvAtlas) -> None:
    """Write ``atlas`` (array + its card entry as metadata) atomically, read back before it counts."""
    from safetensors.numpy import save_file

    def same(tmp) -> bool:
        back = read_atlas(tmp)
        return bool(np.array_equal(back.probability, atlas.probability)) and back.card_entry() == atlas.card_entry()

    with atomic_path(path, overwrite=True, check=same) as tmp:
        save_file({CtvAtlas.TENSOR: atlas.probability}, str(tmp), metadata={"ctv_atlas": json.dumps(atlas.card_entry())})


def read_atlas(path) -> CtvAtlas:
    """The atlas :func:`save_atlas` wrote.

    Raises:
        DatasetError: The file is missing or unusable.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return CtvAtlas.from_card(json.loads((f.metadata() or {})["ctv_atlas"]), f.get_tensor(CtvAtlas.TENSOR))
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"Cannot read the run's CTV atlas '{path}' ({exc}).") from None


def ctv_atlas_of(scans: list[PreparedScan]) -> CtvAtlas:
    """The CTV atlas of prepared training scans (their crops' CTV masks placed by their fits).

    Raises:
        DatasetError: No scan has a trusted applicator fit, so there is no frame to build it in.
    """
    atlas = build_ctv_atlas((s.mask.astype(bool), s.geometry, s.fit) for s in scans)
    if atlas is None:
        raise DatasetError("The 'atlas' input prior needs training scans whose applicator the localiser finds; "
                           "it found none in this training split. Train with --applicator-prior tandem or none.")
    return atlas


class WindowSampler:
    """Random training batches of (windows, middle-slice masks) with CT-appropriate augmentation.

    Args:
        scans: Prepared training scans.
        size_px: Network input (W, H).
        slices_per_window: 5 in the paper.
        positive_fraction: Share of windows whose middle slice contains CTV (the CTV is small).
        hu_window_width: Width of the HU window, to express HU offsets in normalised units.
    """

    def __init__(self, scans: list[PreparedScan], size_px, slices_per_window: int = 5,
                 positive_fraction: float = 0.7, hu_window_width: float = 500.0, augment=True, seed: int = 0,
                 scan_weights: Optional[list] = None, ctv_camouflage: float = 0.0, fat_fill: float = 0.0,
                 hu_window_low: float = -200.0, ctv_reveal: float = 0.0):
        if not scans:
            raise DatasetError("No training scans.")
        self.scans = scans
        self.size = (int(size_px[1]), int(size_px[0]))  # (H, W)
        self.w = slices_per_window
        self.positive_fraction = positive_fraction
        self.hu_unit = 1.0 / hu_window_width
        # augment: True/"basic" (shift, mirror, offset, gain, noise), "full" (+ training.augment), False/"none".
        level = "basic" if augment is True else "none" if augment is False else str(augment)
        self.level = check_level(level)
        self.augment = level != "none"
        self.full = FullAugmentation(seed) if level == "full" else None
        self.camouflage = float(ctv_camouflage) if self.augment else 0.0
        self.fat_fill = float(fat_fill) if self.augment else 0.0
        self.reveal = float(ctv_reveal) if self.augment else 0.0
        self.hu_window = (float(hu_window_low), float(hu_window_low) + float(hu_window_width))
        self.index_pos, self.index_neg = [], []
        for s_i, s in enumerate(scans):
            has = s.mask.reshape(s.mask.shape[0], -1).any(1)
            self.index_pos += [(s_i, z) for z in np.flatnonzero(has)]
            self.index_neg += [(s_i, z) for z in np.flatnonzero(~has)]
        self.with_prior = scans[0].prior is not None
        if any((s.prior is not None) != self.with_prior for s in scans):
            raise DatasetError("Some prepared scans carry an applicator prior and others do not; prepare them all "
                               "with the same input specification.")
        if not self.index_pos:
            raise DatasetError("No training slice contains any CTV (inside the ROI crops): a dataset without CTV "
                               "cannot train; check the masks, the label value and the ROI.")
        # Per-scan sampling weights (``--style-weights``): a slice of a scan of weight 2 is drawn twice
        # as often. None keeps the uniform draw (and its random stream: earlier runs stay reproducible).
        self.cdf_pos = self.cdf_neg = None
        if scan_weights is not None and len(set(scan_weights)) > 1:
            w = np.asarray(scan_weights, float)
            self.cdf_pos = _cumulative([w[s_i] for s_i, _ in self.index_pos])
            self.cdf_neg = _cumulative([w[s_i] for s_i, _ in self.index_neg]) if self.index_neg else None

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        if self.full is not None:  # MONAI's own random state follows the sampler's generator
            self.full.reseed(int(rng.integers(2**31 - 1)))
        x = np.empty((batch_size, self.w + int(self.with_prior), h, w), np.float32)
        y = np.empty((batch_size, 1, h, w), np.float32)
        for b in range(batch_size):
            positive = rng.random() < self.positive_fraction or not self.index_neg
            pool, cdf = (self.index_pos, self.cdf_pos) if positive else (self.index_neg, self.cdf_neg)
            s_i, z = pool[rng.integers(len(pool)) if cdf is None else int(np.searchsorted(cdf, rng.random(), "right"))]
            scan = self.scans[s_i]
            H, W = scan.image.shape[1:]
            if self.augment:
                oy, ox = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            else:
                oy, ox = (H - h) // 2, (W - w) // 2
            idx = window_indices(scan.image.shape[0], [z], self.w)[0]
            win = scan.image[idx, oy:oy + h, ox:ox + w].astype(np.float32)
            lab = scan.mask[z, oy:oy + h, ox:ox + w].astype(np.float32)
            pri = scan.prior[z, oy:oy + h, ox:ox + w].astype(np.float32) if self.with_prior else None
            # Drawn only when switched on, so runs without it keep their random stream.
            if self.camouflage and rng.random() < self.camouflage:
                win = camouflage_ctv(win, scan.mask[idx, oy:oy + h, ox:ox + w], rng.uniform(0.5, 1.0))
            if self.reveal and rng.random() < self.reveal:
                shift_hu = rng.uniform(*REVEAL_SHIFT_HU) * (1.0 if rng.random() < 0.5 else -1.0)
                win = reveal_ctv(win, scan.mask[idx, oy:oy + h, ox:ox + w], shift_hu * self.hu_unit)
            if self.fat_fill and rng.random() < self.fat_fill:
                win = fill_fat_around_ctv(win, scan.mask[idx, oy:oy + h, ox:ox + w], int(rng.integers(*FAT_FILL_REACH_PX)),
                                          self.hu_window)
            if self.augment:
                if rng.random() < 0.5:
                    win, lab = win[:, :, ::-1], lab[:, ::-1]
                    pri = None if pri is None else pri[:, ::-1]
                if self.full is not None and pri is None:
                    win, lab = self.full(win, lab)
                elif self.full is not None:
                    win, lab, pri = self.full(win, lab, pri)
                win = win * rng.uniform(0.95, 1.05) + rng.normal(0, 15) * self.hu_unit
                win = win + rng.normal(0, rng.uniform(0, 10) * self.hu_unit, win.shape).astype(np.float32)
                if pri is not None and rng.random() < APPLICATOR_PRIOR_DROPOUT:
                    pri = np.zeros_like(pri)
            x[b, : self.w] = win
            if pri is not None:
                x[b, self.w] = pri
            y[b, 0] = lab
        return x, y


# Pixels at the ends of the HU window (air, fat below it; bone, contrast, metal above) are not
# tissue the CTV could blend into: they are neither measured nor moved.
CAMOUFLAGE_TISSUE = (0.02, 0.98)
CAMOUFLAGE_RING_PX = 5  # the surroundings: up to 5 px (8 mm at 1.6 mm) outside the CTV


def camouflage_ctv(window: np.ndarray, masks: np.ndarray, strength: float) -> np.ndarray:
    """A copy of ``window`` whose CTV is moved ``strength`` of the way to its surroundings' level, slice by slice.

    Args:
        window: (slices, H, W) normalised window.
        masks: (slices, H, W) CTV masks of the same slices.
        strength: 0 = unchanged, 1 = the CTV's median equals the median of a ring around it.

    The shift fades over the CTV's edge (a 5 px box filter of the mask), so it leaves no step of its
    own: what remains of the edge is the texture, the context and the prior.
    """
    import torch
    import torch.nn.functional as F

    out = np.array(window, np.float32, copy=True)
    m = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
    if not bool(m.any()):
        return out
    r = CAMOUFLAGE_RING_PX
    ring = (F.max_pool2d(m, 2 * r + 1, stride=1, padding=r) - m)[:, 0].numpy() > 0
    fade = F.avg_pool2d(m, 5, stride=1, padding=2, count_include_pad=False)[:, 0].numpy()
    lo, hi = CAMOUFLAGE_TISSUE
    for k in range(out.shape[0]):
        tissue = (window[k] > lo) & (window[k] < hi)
        inside, around = (masks[k] > 0) & tissue, ring[k] & tissue
        if inside.sum() < 10 or around.sum() < 10:
            continue
        shift = float(strength) * (np.median(window[k][around]) - np.median(window[k][inside]))
        out[k] = np.where(tissue, window[k] + shift * fade[k], window[k])
    return out


REVEAL_SHIFT_HU = (20.0, 80.0)  # how far the CTV is moved, brighter or darker (an enhancing or necrotic CTV)
REVEAL_EDGE_PX = 3  # box filter of the mask: a ~1 px partial-volume edge, as a reconstructed CT has


def reveal_ctv(window: np.ndarray, masks: np.ndarray, shift: float) -> np.ndarray:
    """A copy of ``window`` whose CTV is shifted by ``shift`` (normalised units), slice by slice.

    Args:
        window: (slices, H, W) normalised window.
        masks: (slices, H, W) CTV masks of the same slices.
        shift: The HU shift divided by the HU window's width; the same in every slice.

    Only tissue pixels move (not air, fat below the window, bone, contrast or metal above it:
    ``CAMOUFLAGE_TISSUE``), and the shift fades over the CTV's edge, so the window gets a CTV edge of
    known contrast and the truth's shape, which the network can only use by reading it.
    """
    import torch
    import torch.nn.functional as F

    out = np.array(window, np.float32, copy=True)
    m = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
    if not bool(m.any()):
        return out
    r = REVEAL_EDGE_PX
    fade = F.avg_pool2d(m, r, stride=1, padding=r // 2, count_include_pad=False)[:, 0].numpy()
    lo, hi = CAMOUFLAGE_TISSUE
    tissue = (window > lo) & (window < hi)
    out[tissue] = np.clip(window[tissue] + float(shift) * fade[tissue], 0.0, 1.0)
    return out


# Fat (HU) and how far from the CTV it is filled (px; 6-26 mm at the demo's 1.6 mm).
FAT_FILL_BAND_HU = (-170.0, -30.0)
FAT_FILL_TISSUE_HU = (-10.0, 110.0)  # the soft tissue whose level the fat takes (not contrast, not bone)
FAT_FILL_REACH_PX = (4, 17)


def fill_fat_around_ctv(window: np.ndarray, masks: np.ndarray, reach_px: int, hu_window=(-200.0, 300.0)) -> np.ndarray:
    """A copy of ``window`` whose fat within ``reach_px`` of the CTV is raised to the soft tissue's level there.

    Why: the held-out ablation (research.generalisation, session 15) showed the network draws the CTV
    out to the nearest fat boundary, and shrinks to a default ~25 ml where there is none. Filling the
    fat around a training CTV leaves the CTV with only its own contrast (or none, with the
    camouflage), and moves the remaining fat edge to a random distance from it, so that "fill to the
    fat" should stop paying. Measured (candidate v11a, docs/generalisation.md, session 15): at 0.4 for
    10 epochs it did NOT unteach it, and made the model fragile to streaks, because the dark streaks of
    metal artefacts near the tandem fall in the fat band and are filled too. Kept as an option, off
    by default.

    Args:
        window: (slices, H, W) normalised window.
        masks: (slices, H, W) CTV masks of the same slices.
        reach_px: How far outside the CTV (in-plane, px) fat is filled.
        hu_window: The HU window the window was normalised with (``InputSpec.hu_window``): fat is
            FAT_FILL_BAND_HU (gas and air below it, tissue above it are kept), and it takes the level of
            the FAT_FILL_TISSUE_HU pixels around the CTV (the CTV's own if there are none).

    One tissue level and one fat level per window (the slices stay consistent); the fill keeps the
    fat's own noise (a shift, not a paint) and fades over the edges of the fat band and of the
    reach, so it adds no step of its own.
    """
    import torch
    import torch.nn.functional as F

    out = np.array(window, np.float32, copy=True)
    m = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
    if not bool(m.any()):
        return out
    r = int(reach_px)
    near = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)
    reach = F.avg_pool2d(near, 5, stride=1, padding=2, count_include_pad=False)[:, 0].numpy()
    unit = lambda hu: (hu - hu_window[0]) / (hu_window[1] - hu_window[0])  # noqa: E731 - HU -> normalised
    lo, hi = (unit(hu) for hu in FAT_FILL_BAND_HU)
    edge = 0.3 * (hi - lo)  # soft band edges: partial-volume pixels move part of the way
    # Fat-ness from a 5 x 5 box mean: per-pixel noise across the band's edge would otherwise become speckle.
    smooth = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(window, np.float32))[:, None], 5, stride=1, padding=2,
                          count_include_pad=False)[:, 0].numpy()
    fatness = np.clip((hi + edge - smooth) / edge, 0, 1) * np.clip((smooth - lo + edge) / edge, 0, 1)
    fatness *= np.clip((window - lo) / (0.5 * edge) + 1, 0, 1)  # a gas pixel in fat is still gas
    ring = (reach > 0) & (masks == 0)
    fat = ring & (fatness > 0.99)
    t_lo, t_hi = (unit(hu) for hu in FAT_FILL_TISSUE_HU)
    tissue = ring & (smooth > t_lo) & (smooth < t_hi)
    if fat.sum() < 10:
        return out
    level = np.median(window[tissue]) if tissue.sum() >= 10 else np.median(window[masks > 0])
    shift = level - np.median(window[fat])
    out += (shift * fatness * reach * (masks == 0)).astype(np.float32)
    return out


def _cumulative(weights) -> np.ndarray:
    """Normalised cumulative weights: ``searchsorted(cdf, u)`` of a uniform ``u`` draws index i with p_i."""
    cdf = np.cumsum(np.asarray(weights, float))
    cdf /= cdf[-1]
    cdf[-1] = 1.0 + 1e-12  # u < 1 always lands inside the pool
    return cdf


def parse_style_weights(text: str) -> dict:
    """``"v2:3,v5:0.5"`` -> {"v2": 3.0, "v5": 0.5}: how often a training scan of each manifest style is drawn (default 1).

    Raises:
        InputError: A malformed item, a weight that is not a positive finite number, or a style given twice.
    """
    weights: dict = {}
    for item in (part.strip() for part in str(text).split(",") if part.strip()):
        name, sep, value = item.partition(":")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not sep or not name:
            raise InputError(f"Style weight '{item}' must be written style:weight, e.g. v2:3.")
        if not np.isfinite(w) or w <= 0:
            raise InputError(f"Style weight for '{name}' must be a positive number, got '{value.strip()}'.")
        if name in weights:
            raise InputError(f"Style '{name}' is given two weights.")
        weights[name] = w
    if not weights:
        raise InputError("--style-weights is empty; write e.g. v2:3,v5:1.")
    return weights


def scan_weights_for(records, style_weights: Optional[dict]) -> Optional[list]:
    """The sampling weight of each training record (None: all equal).

    Raises:
        DatasetError: A weighted style that no training scan has (a typo would otherwise weigh nothing).
    """
    if not style_weights:
        return None
    present = {r.style for r in records}
    missing = sorted(set(style_weights) - present)
    if missing:
        have = ", ".join(sorted(str(s) for s in present if s)) or "none (the manifest has no style column)"
        raise DatasetError(f"--style-weights names style(s) {', '.join(missing)} that no training scan has; the "
                           f"training split's styles: {have}.")
    return [float(style_weights.get(r.style, 1.0)) for r in records]
