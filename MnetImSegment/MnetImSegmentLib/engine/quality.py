"""Trust (issue 12): is this CT in scope, and should this CTV be reviewed? (``docs/quality.md``).

Two kinds of checks, both numpy + SimpleITK only (inference path):

* **Scope**, before the network: HU calibration (air, fat and soft-tissue levels), a pelvis (a pair
  of femoral heads: :func:`.applicator.pelvis_signals`) and an intrauterine applicator found with
  confidence >= ``min_applicator_confidence`` (:func:`.applicator.locate_applicator`). A CT that
  fails any of them is refused (:class:`OutOfScopeError`, nothing written) unless the user gives the
  ROI centre (``--roi-center`` / a point in Slicer): then the reasons become warnings.
* **Result**, after the network: CTV volume range, distance to and enclosure of the tandem, large
  components besides the largest (counted before largest-component filtering), and a per-slice
  confidence from the network itself: the disagreement of a left-right mirrored second pass (run on
  the slices that hold CTV only, so it costs at most one network pass) and the share of uncertain
  probabilities (0.2-0.8) in the CTV; for weights with a CTV atlas, the drawn CTV's agreement with
  that atlas on the applicator (an unusual CTV for this applicator is to be reviewed); and an
  applicator seen only by its contrast with the tissue around it (the localiser's last search,
  for soft kernels) or a plastic one found with less than full confidence, since the ROI then
  deserves a look.

Every threshold is a field of :class:`QualitySpec`; the defaults were calibrated with
``scripts/calibrate_quality.py`` and a model card may override any of them under ``"quality"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..core.errors import InputError, MnetImError
from ..core.volume import Volume
from .applicator import ApplicatorFit, locate_applicator, pelvis_signals


class OutOfScopeError(InputError):
    """The CT is outside what the model was made for; nothing was segmented or written.

    Attributes:
        reasons: The refusals, each a clause (``ScopeReport.refusals``), so that a front end can say
            the same thing with its own way to override (:func:`scope_refusal`).
    """

    def __init__(self, message: str, reasons=()):
        super().__init__(message)
        self.reasons = tuple(str(r) for r in reasons)


class QualityError(MnetImError):
    """``--strict``: the result has quality warnings, so nothing was written."""

    exit_code = 3


@dataclass(frozen=True)
class QualitySpec:
    """Thresholds of every check (defaults: ``docs/quality.md``; a model card may override them)."""

    air_hu: tuple = (-1100.0, -850.0)  # median outside the body
    fat_hu: tuple = (-160.0, -40.0)  # median of body voxels in [-250, -40]
    soft_tissue_hu: tuple = (0.0, 90.0)  # median of body voxels in [-20, 120]
    min_fat_fraction: float = 0.02  # of the body: a water phantom has none; thin patients (held-out style) ~4 %
    min_soft_tissue_fraction: float = 0.05
    max_lung_fraction: float = 0.08  # body voxels at -950..-600 HU: aerated lung (rectal gas is far less)
    min_body_width_mm: float = 220.0  # a pelvis is 280-450 mm wide; a head ~150-170 mm
    min_applicator_confidence: float = 0.5
    # A plastic applicator trusted under this is a warning: on 384 phantoms (v2-v7, sharp and
    # blurred; session 18) plastic fits at 0.5-0.95 were off the tandem 36 times of 55, at >= 0.95
    # 8 of 64 (metal: 9 of 91 under 0.95, so no such warning for metal).
    min_plastic_confidence: float = 0.95
    ctv_ml: tuple = (15.0, 250.0)
    max_tandem_distance_mm: float = 15.0  # from the os to the nearest CTV voxel
    min_tandem_enclosed: float = 0.4  # share of the tandem's first 20 mm above the os inside the CTV
    max_second_component_ml: float = 2.0  # any other piece at least this big is a warning
    slice_disagreement: float = 0.35  # 1 - Dice(mask, mirrored mask) on one slice
    slice_uncertain: float = 0.45  # share of a slice's CTV+band with probability in [0.2, 0.8]
    min_slice_area_mm2: float = 30.0  # smaller cross-sections (the CTV's tips) are not judged
    max_low_confidence_slices: int = 3
    mirrored_pass: bool = True
    # Weights with a CTV atlas: Dice of the drawn CTV with the atlas placed on the applicator (at
    # atlas_level) below this is a warning: an unusual CTV for this applicator is to be reviewed.
    min_atlas_agreement: float = 0.5
    atlas_level: float = 0.3  # research.generalisation.ATLAS_LEVEL: the atlas-alone baseline's level

    @classmethod
    def from_card(cls, card_quality: dict | None) -> "QualitySpec":
        """Defaults overridden by the model card's optional ``"quality"`` object (unknown keys refused)."""
        if not card_quality:
            return cls()
        if not isinstance(card_quality, dict):
            raise InputError("The model card's \"quality\" entry must be a JSON object.")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(card_quality) - names)
        if unknown:
            raise InputError(f"The model card's \"quality\" entry has unknown key(s): {', '.join(unknown)}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in card_quality.items()}
        return replace(cls(), **values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


OVERRIDE_HINT = "pass --roi-center X,Y,Z (LPS mm; in Slicer, place a point) to segment it anyway"


@dataclass
class ScopeReport:
    """What the scope checks found: ``refusals`` (out of scope) and the measured values."""

    refusals: list = field(default_factory=list)
    values: dict = field(default_factory=dict)
    fit: ApplicatorFit | None = None


def _outside(value, bounds) -> bool:
    return value is None or not bounds[0] <= value <= bounds[1]


def check_scope(volume: Volume, spec: QualitySpec = QualitySpec(), modality: str | None = None,
                fit: ApplicatorFit | None = None) -> ScopeReport:
    """Input-scope checks (see the module docstring); never raises, returns the reasons.

    Args:
        volume: CT in HU.
        spec: Thresholds.
        modality: The DICOM modality when known (``None``: an image file, assumed CT).
        fit: The applicator fit when already computed.
    """
    report = ScopeReport()
    if modality is not None and modality.upper() != "CT":
        report.refusals.append(f"the image is {modality}, not CT")
    s = pelvis_signals(volume)
    fit = fit if fit is not None else locate_applicator(volume)
    report.fit = fit
    heads = s.get("femoral_heads", {})
    report.values = {
        "modality": modality or "CT (assumed)", "air_hu": _r(s.get("air_hu")), "fat_hu": _r(s.get("fat_hu")),
        "soft_tissue_hu": _r(s.get("soft_tissue_hu")), "fat_fraction": _r(s.get("fat_fraction"), 3),
        "soft_tissue_fraction": _r(s.get("soft_tissue_fraction"), 3), "lung_fraction": _r(s.get("lung_fraction"), 3),
        "body_width_mm": _r(s.get("body_width_mm")), "femoral_head_pair": bool(heads.get("pair")),
        "applicator_found": bool(fit.found), "applicator_kind": fit.kind,
        "applicator_confidence": round(float(fit.confidence), 3),
    }
    if not s.get("body_found"):
        report.refusals.append("no patient body was found")
        return report
    if s.get("air_hu") is not None and _outside(s["air_hu"], spec.air_hu):
        report.refusals.append(f"air outside the body reads {s['air_hu']:.0f} HU, not about -1000 HU "
                               "(not a CT in Hounsfield units?)")
    if (s.get("fat_fraction", 0.0) < spec.min_fat_fraction or _outside(s.get("fat_hu"), spec.fat_hu)
            or s.get("soft_tissue_fraction", 0.0) < spec.min_soft_tissue_fraction
            or _outside(s.get("soft_tissue_hu"), spec.soft_tissue_hu)):
        report.refusals.append("fat and soft tissue are not at their usual CT levels (a phantom, an MR or a "
                               "rescaled image?)")
    if s.get("lung_fraction", 0.0) > spec.max_lung_fraction:
        report.refusals.append(f"{100 * s['lung_fraction']:.0f} % of the body is aerated lung (a chest CT?)")
    if s.get("body_width_mm", 0.0) < spec.min_body_width_mm:
        report.refusals.append(f"the body is {s['body_width_mm']:.0f} mm wide, too small for a pelvis (a head or a limb?)")
    # Short brachytherapy scans may stop above the femoral heads: their absence alone refuses only
    # when no applicator confirms the pelvis either.
    if not heads.get("pair") and fit.confidence < spec.min_applicator_confidence:
        report.refusals.append("no pelvis was recognised (no pair of femoral heads)")
    if fit.confidence < spec.min_applicator_confidence:
        report.refusals.append(f"no intrauterine applicator was found (confidence {fit.confidence:.2f} < "
                               f"{spec.min_applicator_confidence:g})")
    return report


def scope_refusal(reasons, hint: str = OVERRIDE_HINT) -> OutOfScopeError:
    """The :class:`OutOfScopeError` for these reasons: one sentence, why and then ``hint`` (how to override)."""
    reasons = [str(r) for r in reasons]
    return OutOfScopeError(f"This CT looks out of scope for the CTV model: {'; '.join(reasons)}; {hint}.", reasons)


def refuse(report: ScopeReport) -> None:
    """Raise :class:`OutOfScopeError` with one sentence: why, and how to override."""
    if report.refusals:
        raise scope_refusal(report.refusals)


def parse_point(text: str) -> tuple[float, float, float]:
    """``"X,Y,Z"`` (LPS mm) as three floats; one clear sentence when it is not."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"'{text}' is not a point: give X,Y,Z in LPS millimetres, e.g. 0,-20,15.")
    return values


def strict_check(warnings: list) -> None:
    """Raise :class:`QualityError` when there are warnings (``--strict``), before anything is written."""
    if warnings:
        raise QualityError(f"--strict: {len(warnings)} quality warning(s), nothing was written: {warnings[0]}.")


def _r(v, nd: int = 1):
    return None if v is None else round(float(v), nd)


# ----------------------------------------------------------------------------------------------
# Result checks


def component_volumes_ml(mask: np.ndarray, voxel_ml: float) -> list[float]:
    """Volumes of the 3D connected components of ``mask`` (largest first), within its bounding box."""
    if not mask.any():
        return []
    import SimpleITK as sitk

    nz = np.argwhere(mask)
    box = tuple(slice(a, b + 1) for a, b in zip(nz.min(0), nz.max(0)))
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask[box].astype(np.uint8)))
    counts = np.bincount(sitk.GetArrayViewFromImage(cc).ravel())[1:]
    return sorted((float(c) * voxel_ml for c in counts if c), reverse=True)


def tandem_relation(mask: Volume, fit: ApplicatorFit | None) -> dict:
    """Distance (mm) from the os to the nearest CTV voxel, and the share of the tandem's first 20 mm
    above the os that lies inside the CTV; empty when no applicator was located."""
    if fit is None or fit.os_lps is None or not mask.array.any():
        return {}
    geom = mask.geometry
    os_ = np.asarray(fit.os_lps, float)
    axis = np.asarray(fit.axis_lps, float)
    samples = os_ + np.outer(np.arange(0.0, min(20.0, fit.length_mm) + 1e-6, 2.0), axis)
    idx = np.round(geom.physical_to_index(samples)).astype(int)[:, ::-1]  # (z, y, x)
    inside = np.all((idx >= 0) & (idx < np.asarray(mask.shape)), axis=1)
    hits = np.zeros(len(samples), bool)
    hits[inside] = mask.array[tuple(idx[inside].T)] > 0
    nz = np.argwhere(mask.array)
    pts = geom.index_to_physical(nz[:, ::-1].astype(float))
    return {"os_to_ctv_mm": round(float(np.min(np.linalg.norm(pts - os_, axis=1))), 1),
            "tandem_enclosed": round(float(hits.mean()), 3)}


def slice_confidence(prob: np.ndarray, mirrored: np.ndarray | None, threshold: float, pixel_mm2: float,
                     spec: QualitySpec) -> dict:
    """Per ROI slice: mirrored disagreement (1 - Dice) and uncertain share; the low-confidence ones.

    Args:
        prob: (slices, H, W) probabilities of the ROI stack.
        mirrored: The same from the left-right mirrored pass, flipped back (NaN-free), or None.
        threshold: The mask threshold.
        pixel_mm2: Area of one ROI pixel.
        spec: Thresholds.
    """
    fg = prob >= threshold
    area = fg.sum((1, 2)) * pixel_mm2
    judged = area >= spec.min_slice_area_mm2
    band = fg | (prob >= 0.2)
    uncertain = ((prob >= 0.2) & (prob <= 0.8)).sum((1, 2)) / np.maximum(band.sum((1, 2)), 1)
    disagreement = np.zeros(len(prob))
    if mirrored is not None:
        fm = mirrored >= threshold
        inter = (fg & fm).sum((1, 2))
        total = fg.sum((1, 2)) + fm.sum((1, 2))
        disagreement = 1.0 - 2.0 * inter / np.maximum(total, 1)
    low = judged & ((disagreement > spec.slice_disagreement) | (uncertain > spec.slice_uncertain))
    return {"disagreement": disagreement, "uncertain": uncertain, "judged": judged, "low": low}


def result_warnings(ctv_ml: float, components_ml: list, tandem: dict, low_slices: list,
                    spec: QualitySpec, agreement: float | None = None) -> list[str]:
    """The warnings of the result checks, one sentence each (empty when all is well)."""
    out = []
    if ctv_ml <= 0.0:
        out.append("the CTV is empty: review the CT and draw the CTV by hand")
    elif _outside(ctv_ml, spec.ctv_ml):
        out.append(f"CTV volume {ctv_ml:.1f} ml is outside the plausible range "
                   f"{spec.ctv_ml[0]:g}-{spec.ctv_ml[1]:g} ml")
    if tandem:
        if tandem["os_to_ctv_mm"] > spec.max_tandem_distance_mm:
            out.append(f"the CTV lies {tandem['os_to_ctv_mm']:.0f} mm from the applicator's cervical os")
        elif tandem["tandem_enclosed"] < spec.min_tandem_enclosed:
            out.append(f"the CTV encloses only {100 * tandem['tandem_enclosed']:.0f} % of the tandem above the os")
    extra = [v for v in components_ml[1:] if v >= spec.max_second_component_ml]
    if extra:
        out.append(f"the network found {len(extra) + 1} large separate pieces (the largest was kept; others: "
                   f"{', '.join(f'{v:.1f}' for v in extra[:3])} ml)")
    if len(low_slices) > spec.max_low_confidence_slices:
        out.append(f"{len(low_slices)} slices have low confidence (slices {_slice_list(low_slices)}): review them")
    if ctv_ml > 0.0 and agreement is not None and agreement < spec.min_atlas_agreement:  # see atlas_agreement
        out.append(f"the CTV is unlike the usual CTV around this applicator (Dice {agreement:.2f} with the "
                   "model's CTV atlas): review its extent")
    return out


def atlas_agreement(prob_roi: np.ndarray, threshold: float, applicator_prior: np.ndarray | None,
                    spec: QualitySpec) -> float | None:
    """Dice of the drawn CTV (``prob_roi >= threshold``) with the CTV atlas the network saw, on the ROI grid.

    None when there is nothing to compare with: weights without an atlas prior, or an atlas that is
    all zero (no trusted applicator fit). Why: where the network and its own atlas part, the network
    has overruled the usual CTV around the applicator; on the issue-11 phantoms that flags failed
    contours the other checks pass (docs/quality.md, session 15).
    """
    if applicator_prior is None or not np.any(applicator_prior > 0):
        return None
    drawn, usual = prob_roi >= threshold, applicator_prior >= spec.atlas_level
    total = int(drawn.sum()) + int(usual.sum())
    return 2.0 * int((drawn & usual).sum()) / total if total else None


def _slice_list(slices: list, limit: int = 8) -> str:
    text = ", ".join(str(s) for s in slices[:limit])
    return text + (", ..." if len(slices) > limit else "")


def assess_result(segmenter, stack: np.ndarray, prob_roi: np.ndarray, roi_geometry, roi, mask: Volume,
                  prob_box: np.ndarray | None, threshold: float, scope: ScopeReport,
                  spec: QualitySpec, applicator_prior: np.ndarray | None = None) -> tuple[list, dict]:
    """Run the result checks of one segmentation; returns (warnings, quality values).

    Args:
        segmenter: The :class:`~.inference.Segmenter` (its ``predict_roi`` runs the mirrored pass).
        stack: The normalised ROI stack the network saw; ``prob_roi`` its probabilities.
        roi_geometry: Geometry of the ROI stack; ``roi`` the :class:`~.roi.Roi`.
        mask: The final CTV mask on the CT's grid.
        prob_box: The pasted probabilities in the CTV's box (for components before filtering).
        threshold: The mask threshold.
        scope: The scope report (its refusals, overridden by a user centre, become warnings).
        spec: Thresholds.
        applicator_prior: The applicator prior the network saw with ``stack`` (mirrored with it), or None.
    """
    warnings = [f"out of scope, segmented at the given centre: {r}" for r in scope.refusals]
    if scope.fit is not None and scope.fit.found and scope.fit.contrast_relative:
        # Found by the contrast-relative search (a soft kernel, a plastic as dense as the uterus):
        # it puts the ROI on the tandem on most soft-kernel CTs it is trusted on, not all (one of 11 was 12 mm off).
        warnings.append("the applicator was seen only by its faint contrast with the tissue around it (a soft "
                        "reconstruction kernel?): check that the region of interest is on the tandem")
    elif (scope.fit is not None and scope.fit.found and scope.fit.kind == "plastic"
          and scope.fit.confidence < spec.min_plastic_confidence):
        warnings.append(f"the plastic applicator was found with moderate confidence ({scope.fit.confidence:.2f} < "
                        f"{spec.min_plastic_confidence:g}): check that the region of interest is on the tandem")
    voxel_ml = float(np.prod(mask.geometry.spacing)) / 1000.0
    ctv_ml = float(mask.array.sum()) * voxel_ml
    components = component_volumes_ml(prob_box >= threshold, voxel_ml) if prob_box is not None else []
    tandem = tandem_relation(mask, scope.fit if scope.fit is not None and scope.fit.found else None)
    mirrored = None
    sp = roi_geometry.spacing
    # Only the slices that will be judged (enough CTV): the mirrored pass costs less than one pass.
    rows = np.flatnonzero((prob_roi >= threshold).sum((1, 2)) * float(sp[0] * sp[1]) >= spec.min_slice_area_mm2)
    if spec.mirrored_pass and len(rows):
        # Left-right mirrored input (the ROI's x axis is the patient's L-R): the network should
        # mirror its answer; where it does not, that slice's contour is not to be trusted.
        flipped = np.ascontiguousarray(stack[:, :, ::-1])
        flipped_prior = None if applicator_prior is None else np.ascontiguousarray(applicator_prior[:, :, ::-1])
        mirrored = segmenter.predict_roi(flipped, centers=rows, applicator_prior=flipped_prior)[:, :, ::-1]
    conf = slice_confidence(prob_roi, mirrored, threshold, float(sp[0] * sp[1]), spec)
    low = [_ct_slice(roi, k, len(prob_roi), roi_geometry, mask.geometry) for k in np.flatnonzero(conf["low"])]
    low = sorted(low)
    # Only an atlas prior is "the usual CTV"; the tandem prior is a tube, not a CTV.
    uses_atlas = getattr(getattr(segmenter, "card", None), "atlas", None) is not None
    agreement = atlas_agreement(prob_roi, threshold, applicator_prior, spec) if uses_atlas else None
    warnings += result_warnings(ctv_ml, components, tandem, low, spec, agreement)
    judged = conf["judged"]
    quality = dict(
        scope=scope.values, ctv_ml=round(ctv_ml, 2), components_ml=[round(v, 2) for v in components[:5]],
        **tandem, mirrored_pass=mirrored is not None,
        max_slice_disagreement=round(float(conf["disagreement"][judged].max()), 3) if judged.any() else 0.0,
        max_slice_uncertain=round(float(conf["uncertain"][judged].max()), 3) if judged.any() else 0.0,
        atlas_agreement=None if agreement is None else round(agreement, 3),
        low_confidence_slices=low, status="red" if scope.refusals or ctv_ml <= 0 else ("amber" if warnings else "green"),
    )
    return warnings, quality


def _ct_slice(roi, k: int, n: int, roi_geometry, ct_geometry) -> int:
    """The CT's slice index (along the ROI's slice axis) of ROI stack slice ``k``."""
    first, last = roi.slice_range
    # The ROI stack runs along +S; the CT's slice axis may run the other way.
    return int(first + k) if ct_geometry.direction_matrix[2, roi.slice_axis] > 0 else int(last - k)
