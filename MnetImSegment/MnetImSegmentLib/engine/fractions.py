"""The previous fraction's approved CTV, carried onto the new fraction's CT and fused with the network.

Propagation (:func:`propagate_prior`): fraction N-1's CT is registered rigidly to fraction N's. The
start comes from the applicator (os + tandem axis, from the localiser or any object with its
attributes), else from the centroids of metal near the CTV; SimpleITK then refines a rigid Euler3D
transform with Mattes mutual information on two resolutions, restricted to a ~100 mm box around the
prior CTV (both images are cropped and resampled to 2 mm first: the whole registration is a few
hundred thousand voxels, well under a second). The CTV moves with the applicator, not with the
bones, which is why the box is small and the applicator is the anchor. The prior CTV is then
resampled onto the current grid inside its own bounding box only.

Fusion (:func:`fuse`): both contours vote with their signed distance (mm, > 0 inside), each
clipped to ``sigma``: ``s = clip(d_network) + w * clip(d_prior)``, fused = ``s > 0``, then the
largest component touching the prior. Where the two surfaces are near each other the result is a
weighted average of them (their errors are largely independent: registration and deformation for
the prior, texture for the network); where they are far apart, neither can reach past ``sigma``, so
a network blob with no prior support, or a piece of prior the network firmly rejects, drops out.
(A first design shifted the network's logits by the prior's distance; the network's probabilities are
nearly binary, so the shift rarely changed anything: +0.01 Dice against +0.02 for the average.)
``FUSION_WEIGHT`` and ``FUSION_SIGMA_MM`` are calibrated on phantom pairs by
``scripts/calibrate_fusion.py`` (table in ``docs/fractions.md``).

Patient checks: a different PatientID refuses; the same FrameOfReferenceUID on two fractions is
only a warning, because several scanners (and some anonymisers) re-use one FoR per patient or per
couch, so equal FoR does not prove the two CTs share coordinates; the registration never assumes it.

Only numpy and SimpleITK: this is on the inference path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import InputError
from .applicator import locate_applicator
from ..core.files import IMAGE_SUFFIXES, LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, suffix_of
from ..core.volume import Geometry, Volume, rotation_between
from ..dicomrt.ct_series import find_ct_series
from ..dicomrt.rasterize import rasterize_structure_set
from ..dicomrt.structure_set import read_structure_set
from .io import read_image, read_segmentation_mask

BOX_MM = 70.0  # minimum side of the registration box around the prior CTV (fixed image); CTV + 15 mm if larger
MOVING_MARGIN_MM = 25.0  # extra margin of the moving crop, so the box never samples outside it
REG_SPACING_MM = 2.5
SAMPLING = 0.2  # share of the fixed box's voxels the metric samples
ITERATIONS = 50
RESIDUAL_WARN_MM = 5.0
RESIDUAL_REFUSE_MM = 10.0
METAL_HU = 2000.0
ANCHOR_LENGTH_MM = 40.0  # residual measured at the os and this far up the tandem
# Fusion: calibrated by scripts/calibrate_fusion.py on phantom pairs (docs/fractions.md).
FUSION_WEIGHT = 3.0
FUSION_SIGMA_MM = 3.0
FUSED_PROBABILITY_MM = 2.0  # mm of fused surface per logit unit in the fused probability
LOW_AGREEMENT_DICE = 0.5


@dataclass
class Propagation:
    """The prior CTV on the current grid and how it got there.

    ``transform`` is a 4x4 LPS matrix carrying a physical point of the prior CT onto the current CT.
    """

    mask: Volume
    transform: np.ndarray
    metric: float
    residual_mm: Optional[float]
    seconds: float
    init: str
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"transform": [[round(float(v), 5) for v in row] for row in self.transform],
                "residual_mm": None if self.residual_mm is None else round(self.residual_mm, 2),
                "metric": round(self.metric, 4), "init": self.init, "seconds": round(self.seconds, 3)}


@dataclass
class Fusion:
    """The fused CTV and the agreement report."""

    mask: Volume
    probability: np.ndarray
    dice_prior_vs_network: float
    follows_prior: float  # of the voxels where prior and network disagree, the share the result takes from the prior
    follows_network: float
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"dice_prior_vs_network": round(self.dice_prior_vs_network, 4),
                "follows": {"prior": round(self.follows_prior, 4), "network": round(self.follows_network, 4)}}


# --------------------------------------------------------------------------- checks
def check_same_patient(prior_meta: Optional[dict], current_meta: Optional[dict]) -> list:
    """Refuse a prior of another patient; warn (only) on a re-used FrameOfReferenceUID."""
    prior_meta, current_meta = prior_meta or {}, current_meta or {}
    a, b = prior_meta.get("PatientID"), current_meta.get("PatientID")
    if a and b and str(a).strip() != str(b).strip():
        raise InputError(f"The previous fraction belongs to another patient (PatientID '{a}', this CT '{b}'); "
                         "a prior is used only for the same patient.")
    f1, f2 = prior_meta.get("FrameOfReferenceUID"), current_meta.get("FrameOfReferenceUID")
    if f1 and f2 and f1 == f2:
        return ["Both fractions share one FrameOfReferenceUID (some scanners re-use it); "
                "the registration does not rely on it."]
    return []


def _check_prior(prior_ct: Volume, prior_ctv: Volume) -> None:
    if not np.any(prior_ctv.array):
        raise InputError("The previous fraction's CTV is empty; nothing can be carried over.")
    if prior_ctv.shape != prior_ct.shape or not prior_ctv.geometry.allclose(prior_ct.geometry, atol=1e-3):
        raise InputError("The previous fraction's CTV is not on the previous CT's voxel grid "
                         "(different size, spacing, origin or orientation); export it on that CT.")


# --------------------------------------------------------------------------- geometry helpers
def _mask_points(mask: Volume) -> np.ndarray:
    idx = np.argwhere(mask.array > 0)[:, ::-1].astype(float)  # (z,y,x) -> (i,j,k)
    return mask.geometry.index_to_physical(idx)


def _box_slices(geometry: Geometry, shape, lo: np.ndarray, hi: np.ndarray):
    """Index slices (z, y, x) of the part of a grid covering the physical box [lo, hi]; None if empty."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = geometry.physical_to_index(corners)
    a = np.floor(ijk.min(0)).astype(int) - 1
    b = np.ceil(ijk.max(0)).astype(int) + 2
    size = np.array(shape[::-1])
    a, b = np.clip(a, 0, size), np.clip(b, 0, size)
    if np.any(b - a < 2):
        return None
    return (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))


def _sub_image(volume: Volume, box, dtype=np.float32):
    import SimpleITK as sitk

    arr = np.ascontiguousarray(volume.array[box], dtype=dtype)
    img = sitk.GetImageFromArray(arr)
    start = np.array([box[2].start, box[1].start, box[0].start], float)
    img.SetOrigin(tuple(volume.geometry.index_to_physical(start)))
    img.SetSpacing(volume.geometry.spacing)
    img.SetDirection(volume.geometry.direction)
    return img


def _iso(image, spacing: float):
    import SimpleITK as sitk

    old_sp, old_size = np.array(image.GetSpacing()), np.array(image.GetSize())
    size = [max(2, int(round(n))) for n in old_size * old_sp / spacing]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), -1000.0, sitk.sitkFloat32)


def _usable(anchor) -> bool:
    return anchor is not None and bool(getattr(anchor, "found", True)) and getattr(anchor, "os_lps", None) is not None


def locate_anchors(volume: Volume):
    """The applicator fit of a CT, or None where the localiser finds no usable applicator."""
    fit = locate_applicator(volume)
    return fit if _usable(fit) else None


def _metal_centroid(volume: Volume, box) -> Optional[np.ndarray]:
    sub = volume.array[box] if box is not None else volume.array
    idx = np.argwhere(sub >= METAL_HU)
    if len(idx) < 30:
        return None
    if box is not None:
        idx = idx + [box[0].start, box[1].start, box[2].start]
    return volume.geometry.index_to_physical(idx[:, ::-1].astype(float).mean(0))


# --------------------------------------------------------------------------- propagation
def propagate_prior(prior_ct: Volume, prior_ctv: Volume, ct: Volume, anchor_prior=None, anchor_current=None,
                    prior_meta: Optional[dict] = None, current_meta: Optional[dict] = None) -> Propagation:
    """Carry the previous fraction's CTV onto the current CT (see the module docstring).

    Args:
        prior_ct: Previous fraction's CT (HU).
        prior_ctv: Its approved CTV, on ``prior_ct``'s grid.
        ct: The current fraction's CT.
        anchor_prior, anchor_current: Applicator fits (``os_lps``, ``axis_lps``, ``found``), or None.
        prior_meta, current_meta: Optional DICOM header values (``PatientID``, ``FrameOfReferenceUID``).

    Raises:
        InputError: other patient, empty or misplaced prior, prior carried outside the CT, or an
            applicator residual above ``RESIDUAL_REFUSE_MM``.
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()
    warnings = check_same_patient(prior_meta, current_meta)
    _check_prior(prior_ct, prior_ctv)
    pts = _mask_points(prior_ctv)
    ctv_center = pts.mean(0)

    # Initial transform T0: current physical -> prior physical (SimpleITK's fixed -> moving).
    rot, init = np.eye(3), "identity"
    c_cur, c_pri = ctv_center, ctv_center
    if _usable(anchor_prior) and _usable(anchor_current):
        c_pri, c_cur = np.asarray(anchor_prior.os_lps, float), np.asarray(anchor_current.os_lps, float)
        rot = rotation_between(np.asarray(anchor_current.axis_lps, float), np.asarray(anchor_prior.axis_lps, float))
        init = "applicator"
    else:
        half = np.full(3, 60.0)
        m_pri = _metal_centroid(prior_ct, _box_slices(prior_ct.geometry, prior_ct.shape, ctv_center - half, ctv_center + half))
        m_cur = _metal_centroid(ct, _box_slices(ct.geometry, ct.shape, ctv_center - 2 * half, ctv_center + 2 * half))
        if m_pri is not None and m_cur is not None:
            c_pri, c_cur, init = m_pri, m_cur, "metal centroids"
        else:
            warnings.append("No applicator anchor was found; the registration started from the scanner coordinates.")

    def t0_inverse(p):  # prior -> current under T0
        return (np.asarray(p) - c_pri) @ rot + c_cur

    # Crops: fixed = current, a BOX_MM box around where T0 puts the prior CTV; moving = prior, larger.
    half_fixed = np.maximum(BOX_MM / 2, (pts.max(0) - pts.min(0)) / 2 + 15.0)
    center_cur = t0_inverse(ctv_center)
    fbox = _box_slices(ct.geometry, ct.shape, center_cur - half_fixed, center_cur + half_fixed)
    half_moving = half_fixed + MOVING_MARGIN_MM
    mbox = _box_slices(prior_ct.geometry, prior_ct.shape, ctv_center - half_moving, ctv_center + half_moving)
    if fbox is None or mbox is None:
        raise InputError("The previous fraction's CTV does not lie within the current CT (no overlap after alignment).")
    fixed = _iso(sitk.Clamp(_sub_image(ct, fbox), sitk.sitkFloat32, -1000.0, 2000.0), REG_SPACING_MM)
    moving = _iso(sitk.Clamp(_sub_image(prior_ct, mbox), sitk.sitkFloat32, -1000.0, 2000.0), REG_SPACING_MM)

    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(v) for v in center_cur))
    tx.SetMatrix(tuple(float(v) for v in rot.ravel()))
    # T0(x) = rot (x - c_cur) + c_pri = rot (x - center) + center + t
    tx.SetTranslation(tuple(float(v) for v in c_pri - rot @ c_cur + rot @ center_cur - center_cur))

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(SAMPLING, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.05, numberOfIterations=ITERATIONS,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(fixed, moving)
        metric = float(reg.GetMetricValue())
    except RuntimeError:
        raise InputError("The registration of the previous fraction's CT to this CT failed "
                         "(too little overlap between the two scans around the CTV).") from None

    r = np.asarray(tx.GetMatrix()).reshape(3, 3)
    c = np.asarray(tx.GetCenter())
    t = np.asarray(tx.GetTranslation())
    forward = np.eye(4)  # current -> prior
    forward[:3, :3], forward[:3, 3] = r, c + t - r @ c
    transform = np.linalg.inv(forward)  # prior -> current: what the user reads

    residual = None
    if _usable(anchor_prior) and _usable(anchor_current):
        residual = applicator_residual(transform, anchor_prior, anchor_current)
        if residual > RESIDUAL_REFUSE_MM:
            raise InputError(f"The registration of the previous fraction failed: the applicators differ by "
                             f"{residual:.1f} mm after alignment (over {RESIDUAL_REFUSE_MM:g} mm).")
        if residual > RESIDUAL_WARN_MM:
            warnings.append(f"The applicators differ by {residual:.1f} mm after registration; "
                            "check the carried-over CTV before using it.")

    mask = _resample_mask(prior_ctv, ct, forward, transform, pts)
    kept = mask.sum() * np.prod(ct.geometry.spacing) / (len(pts) * np.prod(prior_ctv.geometry.spacing))
    if kept < 0.5:
        raise InputError(f"The previous fraction's CTV falls outside the current CT after registration "
                         f"(only {100 * kept:.0f}% of it lies inside); the scans do not cover the same region.")
    if kept < 0.9:
        warnings.append(f"Only {100 * kept:.0f}% of the previous fraction's CTV lies inside this CT.")
    return Propagation(ct.with_array(mask), transform, metric, residual, time.perf_counter() - t0, init, warnings)


def applicator_residual(transform: np.ndarray, anchor_prior, anchor_current) -> float:
    """Largest distance (mm) between the prior's os / tandem point and the current's carried onto it."""
    def points(a):
        os_ = np.asarray(a.os_lps, float)
        axis = np.asarray(a.axis_lps, float)
        return np.stack([os_, os_ + axis / np.linalg.norm(axis) * ANCHOR_LENGTH_MM])

    carried = points(anchor_prior) @ transform[:3, :3].T + transform[:3, 3]
    return float(np.linalg.norm(carried - points(anchor_current), axis=1).max())


def _resample_mask(prior_ctv: Volume, ct: Volume, forward: np.ndarray, transform: np.ndarray, pts) -> np.ndarray:
    """The prior CTV on the current grid, computed only inside its carried bounding box."""
    import SimpleITK as sitk

    out = np.zeros(ct.shape, np.uint8)
    lo, hi = pts.min(0) - 3, pts.max(0) + 3
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    carried = corners @ transform[:3, :3].T + transform[:3, 3]
    box = _box_slices(ct.geometry, ct.shape, carried.min(0), carried.max(0))
    if box is None:
        return out
    ref = _sub_image(ct.with_array(out), box, np.uint8)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tuple(float(v) for v in forward[:3, :3].ravel()))
    aff.SetTranslation(tuple(float(v) for v in forward[:3, 3]))
    src = prior_ctv.with_array((prior_ctv.array > 0).astype(np.float32)).to_sitk()
    res = sitk.Resample(src, ref, aff, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out[box] = (sitk.GetArrayViewFromImage(res) >= 0.5).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- fusion
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """Signed distance (mm) to the mask's surface, > 0 inside, symmetric about the voxel faces.

    Maurer's map puts the inside boundary voxels at 0 and the outside ones at one voxel; half the
    smallest spacing is added so that the average of two identical masks is the mask itself.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(v) for v in spacing))
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return -sitk.GetArrayFromImage(dist) + float(min(spacing)) / 2


def fuse(probability: Volume, propagated: Volume, threshold: float = 0.5, weight: float = FUSION_WEIGHT,
         sigma_mm: float = FUSION_SIGMA_MM) -> Fusion:
    """Fuse the network's probability map with the propagated prior CTV (see the module docstring).

    Each contour votes with its signed distance (mm, > 0 inside), clipped to ``sigma_mm`` so that a
    contour far away cannot outvote the other: ``s = clip(d_network) + weight * clip(d_prior)``; the
    fused CTV is ``s > 0`` (a weighted average of the two surfaces where both are near), then the
    largest component touching the prior. A network component the prior does not support is dropped,
    and a part of the prior the network clearly rejects is too. The returned probability is
    ``sigmoid(logit(threshold) + s / FUSED_PROBABILITY_MM)``: re-thresholding it moves the fused
    surface by about ``FUSED_PROBABILITY_MM * delta logit`` millimetres.

    Args:
        probability: Network probability (0..1) on the current CT's grid.
        propagated: The carried-over prior CTV on the same grid.
        threshold: The network's threshold (the fused map is cut at the same value).
        weight: The prior's vote relative to the network's (calibrated: ``FUSION_WEIGHT``).
        sigma_mm: Reach of each vote in mm (calibrated: ``FUSION_SIGMA_MM``).
    """
    p = np.asarray(probability.array, np.float32)
    prior = propagated.array > 0
    network = p >= threshold
    base = float(np.log(threshold / (1 - threshold)))
    fused_p = p.copy()  # outside the box below there is no network voxel: p < threshold there already
    fused = np.zeros(p.shape, bool)
    union = prior | network
    if union.any():
        spacing = probability.geometry.spacing
        nz = np.argwhere(union)
        margin = np.ceil(sigma_mm / np.asarray(spacing)[::-1]).astype(int) + 2
        a = np.maximum(nz.min(0) - margin, 0)
        b = np.minimum(nz.max(0) + margin + 1, p.shape)
        box = tuple(slice(i, j) for i, j in zip(a, b))
        score = -sigma_mm * np.ones(prior[box].shape, np.float32)  # no network voxel here: its vote is "outside"
        if network[box].any():
            score = np.clip(_signed_distance(network[box], spacing), -sigma_mm, sigma_mm)
        score = score + weight * np.clip(_signed_distance(prior[box], spacing), -sigma_mm, sigma_mm)
        fused[box] = score > 0
        fused_p[box] = 1.0 / (1.0 + np.exp(-(base + score / FUSED_PROBABILITY_MM)))
    mask = _largest_overlapping(fused, prior)
    disagree = prior != network
    n = int(disagree.sum())
    follows_prior = float((mask[disagree] == prior[disagree]).sum()) / n if n else 1.0
    dice = _dice(prior, network)
    warnings = []
    if dice < LOW_AGREEMENT_DICE:
        warnings.append(f"The network and the previous fraction's CTV agree poorly (Dice {dice:.2f}); "
                        "review the contour carefully.")
    return Fusion(probability.with_array(mask.astype(np.uint8)), fused_p, dice, follows_prior,
                  1.0 - follows_prior if n else 1.0, warnings)


def _largest_overlapping(mask: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The largest connected component touching the prior (the largest of all if none touches it)."""
    import SimpleITK as sitk

    if not mask.any():
        return mask
    nz = np.argwhere(mask)
    box = tuple(slice(a, b + 1) for a, b in zip(nz.min(0), nz.max(0)))
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask[box].astype(np.uint8))), sortByObjectSize=True))
    touching = np.unique(labels[prior[box] & (labels > 0)])
    keep = int(touching.min()) if touching.size else 1  # labels sorted by size: the smallest label is the largest
    out = np.zeros_like(mask)
    out[box] = labels == keep
    return out


# --------------------------------------------------------------------------- the CLI's entry points
@dataclass
class Prior:
    """The previous fraction as read from disk: its CT, its approved CTV and DICOM identity (if any)."""

    ct: Volume
    ctv: Volume
    meta: dict = field(default_factory=dict)


def dicom_identity(path) -> dict:
    """PatientID and FrameOfReferenceUID of a DICOM CT series folder ({} for an image file)."""
    path = Path(path)
    if not path.is_dir():
        return {}
    series = find_ct_series(path)
    return {"PatientID": series.patient_id, "FrameOfReferenceUID": series.frame_of_reference_uid}


def read_prior_ctv(path, prior_ct: Volume) -> tuple[Volume, dict]:
    """The approved CTV of the previous fraction: a .seg.nrrd, a labelmap, or an RTSTRUCT on the prior CT.

    A labelmap with several labels gives its label 1 (the CTV in this project's label maps).
    Returns the mask and the DICOM identity the file states (RTSTRUCT only).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"The previous fraction's CTV '{path}' does not exist.")
    if suffix_of(path) == SEGMENTATION_SUFFIX:
        return read_segmentation_mask(path), {}
    if suffix_of(path) not in IMAGE_SUFFIXES + LABELMAP_SUFFIXES:  # DICOM files carry any name: RTSTRUCT
        structure_set = read_structure_set(path)
        mask, _ = rasterize_structure_set(structure_set, prior_ct.geometry, prior_ct.shape)
        fors = structure_set.frame_of_reference_uids
        return mask, {"PatientID": structure_set.patient_id, "FrameOfReferenceUID": fors[0] if fors else ""}
    labels = read_image(path)
    values = np.unique(labels.array)
    values = values[values != 0]
    pick = (labels.array == 1) if len(values) > 1 else (labels.array != 0)
    return labels.with_array(pick.astype(np.uint8)), {}


def load_prior(prior_ct_path, prior_ctv_path) -> Prior:
    """Read the previous fraction (CT: DICOM folder or image file; CTV: see :func:`read_prior_ctv`)."""
    if not prior_ct_path or not prior_ctv_path:
        raise InputError("A previous fraction needs both its CT (--prior-ct) and its approved CTV (--prior-ctv).")
    ct = read_image(prior_ct_path)
    ctv, ctv_meta = read_prior_ctv(prior_ctv_path, ct)
    meta = dicom_identity(prior_ct_path)
    if ctv_meta.get("PatientID") and meta.get("PatientID") and ctv_meta["PatientID"] != meta["PatientID"]:
        raise InputError("The previous fraction's RTSTRUCT and CT belong to different patients.")
    meta = {k: meta.get(k) or ctv_meta.get(k) for k in ("PatientID", "FrameOfReferenceUID")}
    _check_prior(ct, ctv)
    return Prior(ct, ctv, meta)


def propagate_loaded(prior: Prior, ct: Volume, current_meta: Optional[dict] = None) -> Propagation:
    """:func:`propagate_prior` with the applicator of both CTs located (when the localiser is installed)."""
    check_same_patient(prior.meta, current_meta)  # before any image work: refusal is immediate
    return propagate_prior(prior.ct, prior.ctv, ct, locate_anchors(prior.ct), locate_anchors(ct),
                           prior.meta, current_meta)


def fuse_result(result, propagation: Propagation):
    """A SegmentationResult (with probability) fused with the propagated prior: (new result, report dict).

    The result's probability becomes the fused map, so re-thresholding it (Slicer) stays consistent
    with the fused contour.
    """
    import dataclasses

    fusion = fuse(result.probability, propagation.mask, result.threshold)
    report = dict(propagation.to_dict(), **fusion.to_dict())
    report["warnings"] = propagation.warnings + fusion.warnings
    fused_probability = result.probability.with_array(fusion.probability.astype(np.float32))
    extra = {"warnings": list(result.warnings) + report["warnings"]} if hasattr(result, "warnings") else {}
    return dataclasses.replace(result, mask=fusion.mask, probability=fused_probability, probability_box=None,
                               **extra), report
