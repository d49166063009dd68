"""Inference: CT volume in, CTV mask (and optionally its probability map) out, on the CT's own grid.

Pipeline: locate ROI -> crop + resample in-plane -> metal-artefact reduction (for weights trained
with it, ``engine.metal_reduction``) -> normalise -> 5-slice windows over the ROI's
slices only (plus the applicator prior's middle slice for weights trained with one, ``engine.applicator_prior``)
-> network in batches (``torch.inference_mode``; autocast on CUDA) -> sigmoid ->
paste-back onto the original grid -> threshold -> largest connected component (optional).

Progress is reported through ``progress(fraction, message)``; ``cancel()`` returning True stops the
run between batches with :class:`Cancelled` and nothing is returned or written. Deterministic on CPU
(same input, weights and device -> same output): no random ops, fixed batch composition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core.errors import Cancelled, InputError
from ..core.validate import MAX_BATCH_SIZE, positive_int, probability
from ..core.volume import Volume
from .applicator import locate_applicator
from .device import resolve_device, resolve_precision
from .applicator_prior import applicator_prior_map
from .metal_reduction import prepare as prepare_metal_reduction
from .quality import assess_result, check_scope, refuse
from .roi import Roi, crop, locate_roi, paste_box
from .weights import CARD, TENSORS, default_weights_dir, load_weights
from .windows import make_windows, network_input

ProgressCallback = Callable[[float, str], None]


def check_ct(volume: Volume) -> None:
    """Refuse inputs the network cannot meaningfully segment, with one clear sentence."""
    arr = volume.array
    if min(arr.shape) < 1 or arr.size == 0:
        raise InputError("The image is empty.")
    if arr.shape[1] < 16 or arr.shape[2] < 16:
        raise InputError(f"The image is {arr.shape[2]} x {arr.shape[1]} voxels in-plane: too small to be a CT of the pelvis.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError("The image contains NaN or infinite voxel values; it is not a valid CT.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo > -500 or hi < 0 or lo < -10000 or hi > 40000:
        raise InputError(
            f"Voxel values range from {lo:g} to {hi:g}, which does not look like CT in Hounsfield units "
            "(expected air near -1000 HU and soft tissue near 0-100 HU); is this an MR or a rescaled image?"
        )


@dataclass
class SegmentationResult:
    """What a run produced; ``mask`` and ``probability`` share the input's geometry."""

    mask: Volume
    probability: Optional[Volume]
    threshold: float
    roi: Roi
    device: str
    seconds: dict = field(default_factory=dict)
    model: str = ""
    probability_box: Optional[tuple] = None  # (z, y, x) slices outside which the probability is 0
    warnings: list = field(default_factory=list)  # one sentence each; empty when all is well (quality.py)
    quality: dict = field(default_factory=dict)  # per-check values and low-confidence slice numbers

    @property
    def volume_ml(self) -> float:
        return float(self.mask.array.sum()) * float(np.prod(self.mask.geometry.spacing)) / 1000.0


def threshold_mask(probability: np.ndarray, threshold: float, largest_component: bool) -> np.ndarray:
    """Binary CTV from a probability map; optionally keep the largest 3D connected component."""
    mask = (probability >= threshold).astype(np.uint8)
    if largest_component and mask.any():
        import SimpleITK as sitk

        # Components only within the mask's bounding box: the CTV is a few % of a 512^2 x 120 CT.
        nz = np.argwhere(mask)
        box = tuple(slice(a, b + 1) for a, b in zip(nz.min(0), nz.max(0)))
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask[box])), sortByObjectSize=True)
        mask[box] = (sitk.GetArrayViewFromImage(cc) == 1).astype(np.uint8)
    return mask


def fold_batchnorm(model):
    """Fold every eval-mode BatchNorm2d into the convolution before it (inference only).

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is itself a convolution, so the
    normalisation costs nothing at inference; outputs agree with the unfolded model to float
    rounding (~1e-6).
    """
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Sequential):
                continue
            children = list(module.children())
            for i in range(len(children) - 1):
                conv, bn = children[i], children[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    return model


class Segmenter:
    """A loaded model ready to segment CTs; build once, call :meth:`segment` many times.

    Args:
        weights: A weights folder (default: the shipped demo weights).
        device: 'auto', 'cpu' or 'cuda'.
        batch_size: Windows per forward pass.
        amp: Mixed precision (bf16/fp16 autocast) on CUDA; ignored on CPU.
        channels_last: Memory format for CPU convolutions (faster with oneDNN).
        fold_bn: Fold batch norm into the convolutions (same result to float rounding, less work).
        precision: 'auto' (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), 'fp32'
            or 'bf16'. bf16 halves the CPU network time; masks agree with fp32 to Dice >= 0.999
            (tests/test_fast_path.py). Same input, weights, device and precision -> same output.
    """

    def __init__(self, weights=None, device: str = "auto", batch_size: int = 16, amp: bool = True,
                 channels_last: bool = True, fold_bn: bool = True, precision: str = "auto", model=None, card=None):
        import torch

        # Checked before any weights are read: a batch size below 1 would skip the network.
        batch_size = positive_int(batch_size, "The batch size (--batch-size)", MAX_BATCH_SIZE)
        self.device = resolve_device(device)
        if model is None:
            folder = Path(weights) if weights is not None else default_weights_dir()
            model, card = load_weights(folder, device="cpu")
        self.card = card
        self.batch_size = int(batch_size)
        self.precision = resolve_precision(precision, self.device) if amp else "fp32"
        self.amp = self.precision == "bf16" or (bool(amp) and self.device.startswith("cuda"))
        self.channels_last = channels_last
        model = model.eval().to(self.device)
        self.folded = bool(fold_bn)
        if fold_bn:
            model = fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # Weights that reduce metal artefacts need a projector for the ROI grid, known from the card:
        # build it now, in the background, while the caller reads the CT and the ROI is located.
        roi = card.roi_spec
        prepare_metal_reduction(card.input_spec.metal_reduction, roi.size_px[::-1], roi.spacing_mm)

    def predict_roi(self, stack: np.ndarray, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[Callable[[], bool]] = None, start: float = 0.0, span: float = 1.0,
                    centers: Optional[np.ndarray] = None,
                    applicator_prior: Optional[np.ndarray] = None) -> np.ndarray:
        """Probabilities (slices, H, W) for a normalised ROI stack at ``centers`` (default: every slice).

        ``applicator_prior``: the applicator prior on the stack's grid, for weights whose input has one.
        """
        import torch

        todo = np.arange(stack.shape[0]) if centers is None else np.asarray(centers, int)
        n = len(todo)
        out = np.zeros(stack.shape, np.float32)
        w = self.card.input_spec.slices_per_window
        cuda = self.device.startswith("cuda")
        if cuda:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp_dtype = torch.bfloat16
        with torch.inference_mode():
            for b0 in range(0, n, self.batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("Segmentation cancelled; nothing was written.")
                batch = np.arange(b0, min(b0 + self.batch_size, n))
                centers = todo[batch]
                x = torch.from_numpy(make_windows(stack, centers, w, applicator_prior)).to(self.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda" if cuda else "cpu", dtype=amp_dtype, enabled=self.amp):
                    logits = self.model(x)
                out[centers] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
                if progress is not None:
                    progress(start + span * (batch[-1] + 1) / n, f"network: {batch[-1] + 1}/{n} slices")
        return out

    def segment(self, volume: Volume, threshold: Optional[float] = None, largest_component: Optional[bool] = None,
                keep_probability: bool = False, progress: Optional[ProgressCallback] = None,
                cancel: Optional[Callable[[], bool]] = None, roi_center=None,
                modality: Optional[str] = None, enforce_scope: bool = True) -> SegmentationResult:
        """Segment the CTV of one CT volume (HU). See the module docstring for the pipeline.

        An out-of-scope CT (``quality.check_scope``) raises :class:`~.quality.OutOfScopeError` unless
        ``roi_center`` is given; the result carries the quality checks' ``warnings`` and values.
        ``enforce_scope=False`` is for research evaluation on labelled data, where every test scan must
        be scored (a refusal would silently drop the hard cases from the metrics): the scope reasons
        become warnings instead.
        """
        t0 = time.perf_counter()
        report = progress or (lambda f, m: None)
        check_ct(volume)
        threshold = self.card.threshold if threshold is None else probability(threshold, "The threshold")
        largest_component = self.card.largest_component if largest_component is None else largest_component
        roi_spec = self.card.roi_spec
        report(0.0, "checking the CT is in scope")
        qspec = self.card.quality_spec
        scope = check_scope(volume, qspec, modality)
        if roi_center is None and enforce_scope:
            refuse(scope)
        report(0.02, "locating region of interest")
        roi = locate_roi(volume, roi_spec, center=roi_center, fit=scope.fit)
        t1 = time.perf_counter()
        cropped = crop(volume, roi, roi_spec)
        t_crop = time.perf_counter()
        stack = network_input(cropped.array, cropped.geometry.spacing[:2], self.card.input_spec)
        prior = applicator_prior_map(self.card.input_spec.applicator_prior, cropped.geometry, stack.shape, scope.fit,
                                     atlas=self.card.atlas)
        t2 = time.perf_counter()
        prob_roi = self.predict_roi(stack, progress, cancel, start=0.05, span=0.85,
                                    applicator_prior=prior)
        t3 = time.perf_counter()
        if cancel is not None and cancel():
            raise Cancelled("Segmentation cancelled; nothing was written.")
        report(0.92, "pasting back onto the CT grid")
        # Threshold and components inside the pasted box only; the rest of the CT is background.
        box, prob_box = paste_box(cropped.with_array(prob_roi), volume.geometry, volume.shape)
        mask = np.zeros(volume.shape, np.uint8)
        prob = np.zeros(volume.shape, np.float32) if keep_probability else None
        if box is not None:
            mask[box] = threshold_mask(prob_box, threshold, largest_component)
            if keep_probability:
                prob[box] = prob_box
        t4 = time.perf_counter()
        report(0.95, "quality checks")
        warnings, quality = assess_result(self, stack, prob_roi, cropped.geometry, roi, volume.with_array(mask),
                                          prob_box, threshold, scope, qspec,
                                          applicator_prior=prior)
        if roi_center is None and not enforce_scope and scope.refusals:
            warnings = [f"out of scope (not enforced): {reason}" for reason in scope.refusals] + list(warnings)
        t5 = time.perf_counter()
        report(1.0, "done")
        seconds = {"roi": t1 - t0, "crop": t_crop - t1, "input": t2 - t_crop, "network": t3 - t2, "paste_threshold": t4 - t3,
                   "quality": t5 - t4, "total": t5 - t0}
        return SegmentationResult(
            mask=volume.with_array(mask),
            probability=volume.with_array(prob) if keep_probability else None,
            threshold=threshold, roi=roi, device=self.device, seconds=seconds, model=self.card.label,
            probability_box=box, warnings=warnings, quality=quality,
        )


def reference_segment(model, card, volume: Volume) -> np.ndarray:
    """The naive reference path, kept to verify (and benchmark) the fast one.

    Same ROI, crop, paste-back and post-processing as :class:`Segmenter`, but the network runs the
    plain way: eager fp32, batch 1, NCHW, batch norm not folded, and on EVERY slice of the volume
    rather than only the ROI's slices. Returns the uint8 mask on the volume's grid.
    """
    import torch

    model = model.to(memory_format=torch.contiguous_format).eval()
    fit = locate_applicator(volume)
    roi = locate_roi(volume, card.roi_spec, fit=fit)
    n = volume.shape[2 - roi.slice_axis]
    roi = Roi(roi.center, roi.slice_axis, (0, n - 1), roi.method)
    cropped = crop(volume, roi, card.roi_spec)
    stack = network_input(cropped.array, cropped.geometry.spacing[:2], card.input_spec)
    prior = applicator_prior_map(card.input_spec.applicator_prior, cropped.geometry, stack.shape, fit, atlas=card.atlas)
    prob = np.empty(stack.shape, np.float32)
    with torch.inference_mode():
        for z in range(len(stack)):
            x = torch.from_numpy(make_windows(stack, [z], card.input_spec.slices_per_window, prior))
            prob[z] = torch.sigmoid(model(x))[0, 0].numpy()
    box, prob_box = paste_box(cropped.with_array(prob), volume.geometry, volume.shape)
    mask = np.zeros(volume.shape, np.uint8)
    if box is not None:
        mask[box] = threshold_mask(prob_box, card.threshold, card.largest_component)
    return mask


class SegmenterCache:
    """Loaded Segmenters by weights folder and device, for callers that segment again and again (Slicer).

    The key includes the files' modification times, so a replaced model is reloaded; one model per
    device is kept, since holding stale ones would only hold GPU memory.
    """

    def __init__(self):
        self._segmenters = {}

    def get(self, weights: Path, device: str) -> Segmenter:
        stamp = tuple((weights / f).stat().st_mtime_ns for f in (TENSORS, CARD))
        key = (str(weights.resolve()), device, stamp)
        segmenter = self._segmenters.get(key)
        if segmenter is None:
            self.forget(device)
            segmenter = Segmenter(weights, device=device)
            self._segmenters[key] = segmenter
        return segmenter

    def forget(self, device: Optional[str] = None) -> None:
        """Drop the models loaded on ``device`` (all of them when None)."""
        for key in [k for k in self._segmenters if device is None or k[1] == device]:
            del self._segmenters[key]
