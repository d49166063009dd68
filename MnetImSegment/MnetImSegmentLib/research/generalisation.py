"""Generalisation of a weights folder: Dice on unseen phantom styles and on perturbed phantoms (issue 11).

Every row runs the FULL inference pipeline (``engine.inference.Segmenter.segment``, as ``mnetim
segment`` does) on each CT's own grid and scores the CTV mask with ``metrics.volumetric_dice``.

Rows:

* ``v2``, ``v3``, ``v4``, ``v5``, ``v6`` (training styles) and ``heldout`` (never trained on);
* the perturbation table of issue 11, applied to phantoms of ``perturb_style`` (default ``v2``; the
  same seeds as that style's own row, so every perturbation is paired with its unperturbed phantom):
  HU offset +-40, contrast x0.85 / x1.15 about 40 HU, noise x2 (the generator's own noise level
  doubled, same texture), blur (in-plane Gaussian, sigma 1 px), 1.25 / 5 mm slices and 0.5 / 1.0 mm
  pixels (re-sampled from the same anatomy on that grid, same field of view), mirrored (array flipped
  left-right with the geometry kept: the patient is mirrored, the truth with it), rotated 10 deg
  (re-sampled on a grid whose direction is turned 10 deg about the scanner axis) and plastic
  applicator (every metal applicator part made plastic, 250 HU, hollow air channel, no artefact).

Seeds (disjoint from every training recipe, which uses 0-99 and 1000-1099): ``v2`` 500000+i,
``v3`` 510000+i, ``v4`` 520000+i, ``v5`` 530000+i, ``v6`` 540000+i, ``heldout`` 900000+i (i = 0..N-1). Base grid: ``matrix`` (default 256) in-plane,
2.5 mm slices, 160 mm scan length; pixel size from each generator's field of view.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core.files import write_text
from ..core.volume import Geometry, rotation_between
from ..engine.applicator import locate_applicator
from ..engine.applicator_prior import tandem_prior
from ..engine.inference import Segmenter
from .metrics import volumetric_dice
from .phantom import Layer, Phantom, PhantomAnatomy, Tube, rotation_matrix
from .phantom_heldout import PhantomHeldout, SuperEllipsoid
from .phantom_templates import StarShape, load_templates, star_volume_mm3
from .phantom_styles import TRAINING_STYLES, parse_style_mix
from .phantom_v3 import LABELS, Layer3, PhantomV3, PhantomV4, PhantomV7
from .phantom_v5 import PhantomV5
from .phantom_v6 import PhantomV6

SEED_BASE = {"v2": 500000, "v3": 510000, "v4": 520000, "v5": 530000, "v6": 540000, "v7": 570000, "heldout": 900000}
STYLE_ROWS = ("v2", "v3", "v4", "v5", "v6", "v7", "heldout")
BASE_SLICE_MM = 2.5
BASE_Z_EXTENT_MM = 160.0
CONTRAST_CENTRE_HU = 40.0
PLASTIC_HU = 250.0
PERTURBATIONS = ("hu+40", "hu-40", "contrast x0.85", "contrast x1.15", "noise x2", "blur 1px",
                 "slices 1.25 mm", "slices 5 mm", "pixels 0.5 mm", "pixels 1.0 mm", "mirrored",
                 "rotated 10 deg", "plastic applicator")
_ANATOMY = {"v2": PhantomAnatomy, "v3": PhantomV3, "v4": PhantomV4, "v5": PhantomV5, "v6": PhantomV6, "v7": PhantomV7,
            "heldout": PhantomHeldout}


@dataclass
class GridRequest:
    """How to re-sample an anatomy: slice thickness, pixel size (None: the generator's), direction."""

    slice_mm: float = BASE_SLICE_MM
    spacing_mm: Optional[float] = None
    direction: Optional[np.ndarray] = None
    noise_factor: float = 1.0
    plastic: bool = False


def _make_plastic(anatomy) -> None:
    """Turn every metal applicator part plastic (tissue-like HU, hollow air channel, no artefact)."""
    if isinstance(anatomy, PhantomV3):
        for layer in anatomy.layers:
            if isinstance(layer, Layer3) and layer.metal:
                layer.metal, layer.hu = "", PLASTIC_HU
        if anatomy.params.get("applicator_material") != "plastic":
            p0, tip = anatomy.tandem
            for a, b in ((p0, np.zeros(3)), (np.zeros(3), tip)):
                anatomy.layers.append(Layer3(Tube(a, b, 1.0), -800.0, edge_mm=0.3, deform=False))
        anatomy.params.update(applicator_material="plastic", applicator_metal=False)
        return
    was_metal = bool(anatomy.params.get("applicator_metal"))
    for layer in anatomy.layers:
        if isinstance(layer, Layer) and layer.metal:
            layer.metal, layer.hu = False, PLASTIC_HU
    if was_metal:
        tandem = anatomy.metal_parts[0]
        anatomy.layers.append(Layer(Tube(tandem.p0, tandem.p1, 1.0), -800.0, edge_mm=0.3))
    anatomy.metal_parts = []
    anatomy.params.update(applicator_metal=False, streak_hu=0.0)


def _regrid(geometry: Geometry, shape_zyx, spacing_mm: float) -> tuple[Geometry, tuple[int, int, int]]:
    """The same field of view and centre with square pixels of ``spacing_mm``."""
    sp = np.asarray(geometry.spacing, float)
    size = np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]], float)
    d = geometry.direction_matrix
    centre = np.asarray(geometry.origin) + d @ (sp * (size - 1) / 2)
    n_xy = max(8, int(round(size[0] * sp[0] / spacing_mm)))
    new_sp = np.array([spacing_mm, spacing_mm, sp[2]])
    new_size = np.array([n_xy, n_xy, size[2]])
    origin = centre - d @ (new_sp * (new_size - 1) / 2)
    return Geometry(tuple(new_sp), tuple(origin), tuple(d.ravel())), (int(size[2]), n_xy, n_xy)


def generate(style: str, seed: int, matrix: int, request: GridRequest = GridRequest(),
             z_extent_mm: float = BASE_Z_EXTENT_MM) -> Phantom:
    """One phantom of ``style`` on the evaluation grid, with the grid/noise/applicator changes of ``request``."""
    anatomy = _ANATOMY[style](seed)
    if request.noise_factor != 1.0:
        anatomy.params["noise_hu"] = float(anatomy.params["noise_hu"]) * request.noise_factor
    if request.plastic:
        _make_plastic(anatomy)
    geometry, shape = anatomy.default_grid(matrix, request.slice_mm, z_extent_mm, request.direction)
    if request.spacing_mm is not None:
        geometry, shape = _regrid(geometry, shape, request.spacing_mm)
    if style == "v2":
        return anatomy.sample(geometry, shape)
    return anatomy.sample(geometry, shape, artifacts=True)


def _hu(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), -1024, 3071).astype(np.int16)


def _blur(array: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _hu(gaussian_filter(array.astype(np.float32), sigma=(0, sigma_px, sigma_px)))


def _with(ph: Phantom, ct: np.ndarray, labels: Optional[np.ndarray] = None, **params) -> Phantom:
    labels = ph.labels.array if labels is None else labels
    return Phantom(ph.ct.with_array(ct), ph.labels.with_array(np.ascontiguousarray(labels)), dict(ph.params, **params))


def perturb(name: str, style: str, seed: int, matrix: int, base: Optional[Phantom] = None,
            z_extent_mm: float = BASE_Z_EXTENT_MM) -> Phantom:
    """The phantom ``style``/``seed`` with the perturbation ``name`` (one of ``PERTURBATIONS``).

    Intensity and mirror perturbations change the base phantom's arrays; grid, noise and applicator
    perturbations re-sample the same anatomy.
    """
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{name}'")
    resampled = {
        "noise x2": GridRequest(noise_factor=2.0),
        "slices 1.25 mm": GridRequest(slice_mm=1.25),
        "slices 5 mm": GridRequest(slice_mm=5.0),
        "pixels 0.5 mm": GridRequest(spacing_mm=0.5),
        "pixels 1.0 mm": GridRequest(spacing_mm=1.0),
        "rotated 10 deg": GridRequest(direction=rotation_matrix(rz_deg=10.0)),
        "plastic applicator": GridRequest(plastic=True),
    }
    if name in resampled:
        ph = generate(style, seed, matrix, resampled[name], z_extent_mm)
        ph.params["perturbation"] = name
        return ph
    base = base if base is not None else generate(style, seed, matrix, z_extent_mm=z_extent_mm)
    ct = base.ct.array.astype(np.float32)
    if name in ("hu+40", "hu-40"):
        return _with(base, _hu(ct + (40.0 if name == "hu+40" else -40.0)), perturbation=name)
    if name.startswith("contrast"):
        k = 0.85 if name.endswith("0.85") else 1.15
        return _with(base, _hu(CONTRAST_CENTRE_HU + k * (ct - CONTRAST_CENTRE_HU)), perturbation=name)
    if name == "blur 1px":
        return _with(base, _blur(ct), perturbation=name)
    # mirrored: x (array axis 2) reversed, geometry unchanged, so the truth is mirrored with the image
    return _with(base, np.ascontiguousarray(base.ct.array[:, :, ::-1]), base.labels.array[:, :, ::-1], perturbation=name)


@dataclass
class RowResult:
    """Dice of one table row over its phantoms."""

    row: str
    group: str  # "in-distribution", "unseen style", "held-out", "perturbation"
    style: str
    seeds: list
    dice: list = field(default_factory=list)
    volumes: list = field(default_factory=list)  # (predicted ml, true ml) per phantom
    tube: list = field(default_factory=list)  # Dice of the no-network baseline (tube_dice) per phantom, style rows
    atlas: list = field(default_factory=list)  # ...and of the weights' own CTV atlas alone (atlas_dice), if they have one

    def add(self, score: tuple[float, float, float]) -> None:
        self.dice.append(score[0])
        self.volumes.append(score[1:])

    def volume_r(self) -> Optional[float]:
        """Pearson r of predicted vs true CTV volume: does the model read the CTV's size from the image?"""
        v = np.asarray(self.volumes, float)
        if len(v) < 3 or v[:, 0].std() == 0 or v[:, 1].std() == 0:
            return None
        return round(float(np.corrcoef(v[:, 0], v[:, 1])[0, 1]), 3)

    def summary(self) -> dict:
        d = self.dice
        return {"row": self.row, "group": self.group, "style": self.style, "n": len(d), "seeds": list(self.seeds),
                "dice": [round(float(x), 4) for x in d],
                "ctv_ml": [[round(float(a), 1), round(float(b), 1)] for a, b in self.volumes],
                "volume_r": self.volume_r(),
                "mean": round(float(np.mean(d)), 4) if d else None,
                "median": round(float(statistics.median(d)), 4) if d else None,
                "min": round(float(np.min(d)), 4) if d else None,
                **({"tube_dice": [round(float(x), 4) for x in self.tube],
                    "tube_mean": round(float(np.mean(self.tube)), 4)} if self.tube else {}),
                **({"atlas_dice": [round(float(x), 4) for x in self.atlas],
                    "atlas_mean": round(float(np.mean(self.atlas)), 4)} if self.atlas else {})}


# The no-network baseline: the tandem prior thresholded, a tube of ~17 mm radius round the lower
# tandem placed by the localiser alone. 0.7 is the best level on the training styles v2 and v4
# (docs/generalisation.md, session 9). A model that does not beat it on a style has learnt where the
# tandem is, not what that style's CTV looks like.
TUBE_LEVEL = 0.7


# The second no-network baseline, for weights with the "atlas" prior: their CTV atlas placed by the
# localiser, thresholded at 0.3, the best level on the training styles v2 and v4 (docs/generalisation.md,
# session 10). The network gets this atlas as its sixth channel, so it must beat it.
ATLAS_LEVEL = 0.3


def tube_dice(ph: Phantom, fit=None) -> float:
    """Dice of the no-network tube baseline (``TUBE_LEVEL``) on one phantom, on its own CT grid.

    ``fit``: the localiser's result on ``ph.ct`` if already known."""
    prior = tandem_prior(ph.ct.geometry, ph.ct.shape, fit or locate_applicator(ph.ct))
    return volumetric_dice(prior >= TUBE_LEVEL, ph.labels.array == 1)


def atlas_dice(ph: Phantom, atlas, fit=None) -> float:
    """Dice of a CTV atlas alone (``ATLAS_LEVEL``), placed by the localiser, on one phantom's own CT grid."""
    prior = atlas.sample(ph.ct.geometry, ph.ct.shape, fit or locate_applicator(ph.ct))
    return volumetric_dice(prior >= ATLAS_LEVEL, ph.labels.array == 1)


def _score(segmenter, ph: Phantom) -> tuple[float, float, float]:
    """(Dice, predicted CTV ml, true CTV ml) of one phantom through the full pipeline."""
    result = segmenter.segment(ph.ct, enforce_scope=False)
    pred, truth = result.mask.array > 0, ph.labels.array == 1
    voxel_ml = float(np.prod(ph.ct.geometry.spacing)) / 1000.0
    return volumetric_dice(pred, truth), float(pred.sum()) * voxel_ml, float(truth.sum()) * voxel_ml


def trained_styles(card: dict) -> Optional[set]:
    """The phantom styles a card's weights were trained on, from its data description; None if it does not say.

    ``styles`` (a count per style) when the card has it, else the ``--style`` options of its phantom
    recipe (``mnetim phantom`` without ``--style`` writes v2).
    """
    data = (card.get("training") or {}).get("data") or {}
    if isinstance(data.get("styles"), dict) and data["styles"]:
        return set(data["styles"])
    recipe = data.get("recipe")
    if not isinstance(recipe, str) or "mnetim phantom" not in recipe:
        return None
    styles = set()
    for command in recipe.split(";"):
        if "mnetim phantom" in command:
            mix = re.findall(r"--style\s+(\S+)", command)
            styles |= {name for m in mix for name, _ in parse_style_mix(m)} if mix else {"v2"}
    return styles


def _style_group(style: str, trained: Optional[set]) -> str:
    if style == "heldout":
        return "held-out"
    return "in-distribution" if trained is None or style in trained else "unseen style"


def _weights_entry(weights, segmenter, **extra) -> dict:
    """The ``weights`` entry of a results dict: the card's name and version, the folder, and ``extra``."""
    raw = getattr(getattr(segmenter, "card", None), "raw", {}) or {}
    return {"name": raw.get("name"), "version": raw.get("version"),
            "folder": str(weights) if weights is not None else None, **extra}


def evaluate_generalisation(weights, n: int = 3, matrix: int = 256, perturb_style: str = "v2",
                            styles=STYLE_ROWS, perturbations=PERTURBATIONS, device: str = "cpu",
                            segmenter=None, log: Optional[Callable[[str], None]] = None,
                            z_extent_mm: float = BASE_Z_EXTENT_MM, heldout_no_streaks: bool = True) -> dict:
    """Dice of ``weights`` on ``n`` phantoms per row (see the module docstring).

    Args:
        weights: A weights folder (ignored when ``segmenter`` is given).
        n: Phantoms per row.
        matrix: In-plane matrix of the base grid.
        perturb_style: The style the perturbations are applied to ('v2', 'v3' or 'v4').
        styles: Style rows to run.
        perturbations: Perturbation rows to run (names from ``PERTURBATIONS``).
        device: Inference device.
        segmenter: An already built ``Segmenter`` (tests).
        log: Optional progress callback, one line per phantom.
        z_extent_mm: Scan length (shorter only to keep tests fast).
        heldout_no_streaks: With the ``heldout`` row, also the row ``HELDOUT_NO_STREAKS``: the same
            phantoms without their painted streaks, so a reader sees how much of the held-out gap is
            that generator's cartoon of metal artefacts and how much is its anatomy and intensities.

    Returns:
        A JSON-ready dict: ``rows`` (one summary per row), the settings, and the weights' name/version.
    """
    if perturb_style not in TRAINING_STYLES:
        raise ValueError(f"perturbations apply to a training style: one of {', '.join(TRAINING_STYLES)}")
    log = log or (lambda s: None)
    segmenter = segmenter or Segmenter(weights, device=device)
    t0 = time.perf_counter()
    raw = getattr(getattr(segmenter, "card", None), "raw", {}) or {}
    trained = trained_styles(raw)
    atlas = getattr(getattr(segmenter, "card", None), "atlas", None)
    rows, bases = [], {}
    for style in styles:
        seeds = [SEED_BASE[style] + i for i in range(n)]
        row = RowResult(style, _style_group(style, trained), style, seeds)
        for s in seeds:
            ph = generate(style, s, matrix, z_extent_mm=z_extent_mm)
            if style == perturb_style:
                bases[s] = ph
            row.add(_score(segmenter, ph))
            fit = locate_applicator(ph.ct)
            row.tube.append(tube_dice(ph, fit))
            if atlas is not None:
                row.atlas.append(atlas_dice(ph, atlas, fit))
            log(f"{style} seed {s}: Dice {row.dice[-1]:.3f} (tube {row.tube[-1]:.3f}"
                + (f", atlas {row.atlas[-1]:.3f})" if atlas is not None else ")"))
        rows.append(row)
        if style == "heldout" and heldout_no_streaks:
            plain = RowResult(HELDOUT_NO_STREAKS, "held-out", style, seeds)
            for s in seeds:
                plain.add(_score(segmenter, heldout_variant(s, matrix, False, None, z_extent_mm)))
                log(f"{HELDOUT_NO_STREAKS} seed {s}: Dice {plain.dice[-1]:.3f}")
            rows.append(plain)
    seeds = [SEED_BASE[perturb_style] + i for i in range(n)]
    for name in perturbations:
        row = RowResult(name, "perturbation", perturb_style, seeds)
        for s in seeds:
            if s not in bases:
                bases[s] = generate(perturb_style, s, matrix, z_extent_mm=z_extent_mm)
            row.add(_score(segmenter, perturb(name, perturb_style, s, matrix, bases[s], z_extent_mm)))
            log(f"{name} ({perturb_style}) seed {s}: Dice {row.dice[-1]:.3f}")
        rows.append(row)
    return {
        "weights": _weights_entry(weights, segmenter, trained_styles=sorted(trained) if trained is not None else None),
        "n_per_row": n, "matrix": matrix, "slice_mm": BASE_SLICE_MM, "z_extent_mm": z_extent_mm,
        "perturb_style": perturb_style, "seed_base": dict(SEED_BASE), "device": segmenter.device,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": [r.summary() for r in rows],
    }


# Why does a model fail on the held-out style? Its suspects switched off one at a time: the painted
# streaks, a CTV that may be iso-dense with the uterus (-40..+60 HU in that generator), the
# sinusoidal soft-tissue texture no training style has, and the CTV's superellipsoid shape (swapped
# for a training template); and the surroundings the held-out style lacks (session 15): a fat shell
# hugging the CTV (as parametrial fat would), or a fat region of one fixed size around the cervix,
# not tied to the CTV. Each entry: heldout_variant's keywords.
HELDOUT_NO_STREAKS = "heldout, no streaks"
HELDOUT_ABLATIONS = {"heldout": {}, HELDOUT_NO_STREAKS: {"artifacts": False},
                     "heldout, CTV +50 HU": {"ctv_above_uterus_hu": 50.0},
                     "heldout, no streaks, CTV +50 HU": {"artifacts": False, "ctv_above_uterus_hu": 50.0},
                     "heldout, no texture": {"texture": False},
                     "heldout, no streaks, no texture": {"artifacts": False, "texture": False},
                     "heldout, template CTV": {"template_ctv": True},
                     "heldout, fat around the CTV": {"fat": "around_ctv"},
                     "heldout, fat region not tied to the CTV": {"fat": "fixed_region"}}
HELDOUT_FAT = ("around_ctv", "fixed_region")


def heldout_variant(seed: int, matrix: int, artifacts: bool = True, ctv_above_uterus_hu: Optional[float] = None,
                    z_extent_mm: float = BASE_Z_EXTENT_MM, texture: bool = True, template_ctv: bool = False,
                    fat: Optional[str] = None) -> Phantom:
    """A held-out-style phantom on the evaluation grid: with or without its streaks and its soft-tissue texture, its CTV set ``ctv_above_uterus_hu`` above the uterus.

    ``template_ctv``: the CTV's superellipsoid swapped for the training styles' first CTV template
    (turned with the tandem), with the same centre and volume: is it the CTV's shape the network
    does not recognise?

    ``fat`` (HELDOUT_FAT), painted under the uterus, cervix and CTV, so it shows only outside them:
    ``"around_ctv"``, a fat shell 6-12 mm outside the CTV's surface; ``"fixed_region"``, a fat
    superellipsoid of one fixed size (48 x 40 x 55 mm radii) around the cervix, whatever the CTV.
    Does the network draw the CTV out to the nearest fat boundary?
    """
    anatomy = PhantomHeldout(seed)
    if fat is not None:
        _add_fat(anatomy, fat, np.random.default_rng([seed, 77]))
    if template_ctv:
        layer = next(layer for layer in anatomy.layers if layer.label == LABELS["CTV"])
        layer.shape = _template_like(layer.shape, anatomy.axis)
        anatomy.ctv = layer.shape
    if ctv_above_uterus_hu is not None:
        ctv = next(layer for layer in anatomy.layers if layer.label == LABELS["CTV"])
        uterus = ctv.hu - anatomy.params["ctv_contrast_hu"]
        ctv.hu = uterus + ctv_above_uterus_hu
        anatomy.params["ctv_contrast_hu"] = ctv_above_uterus_hu
    if not texture:
        anatomy.params["texture_hu"] = 0.0
    geometry, shape = anatomy.default_grid(matrix, BASE_SLICE_MM, z_extent_mm, None)
    return anatomy.sample(geometry, shape, artifacts=artifacts)


def _add_fat(anatomy: PhantomHeldout, kind: str, rng: np.random.Generator) -> None:
    """Insert a fat layer (-110..-70 HU) just before the uterus, the first of uterus, cervix tube, CTV."""
    if kind not in HELDOUT_FAT:
        raise ValueError(f"fat must be one of {HELDOUT_FAT}, got {kind!r}")
    ctv_at = next(i for i, layer in enumerate(anatomy.layers) if layer.label == LABELS["CTV"])
    uterus_at = ctv_at - 2
    ctv, uterus = anatomy.layers[ctv_at].shape, anatomy.layers[uterus_at].shape
    if kind == "around_ctv":
        shape = SuperEllipsoid(ctv.center.copy(), ctv.radii + rng.uniform(6, 12), ctv.rotation.copy(), ctv.exponent)
    else:
        shape = SuperEllipsoid(anatomy.axis * 15.0, np.array([48.0, 40.0, 55.0]), uterus.rotation.copy(), 2.5)
    anatomy.layers.insert(uterus_at, Layer3(shape, rng.uniform(-110, -70), edge_mm=1.5))


def _template_like(shape: SuperEllipsoid, axis: np.ndarray) -> StarShape:
    """The first CTV template, turned with the tandem ``axis``, with ``shape``'s centre and volume."""
    tpl = load_templates()[0]
    s = tpl["structures"]["CTV"]
    axes = rotation_between(np.asarray(tpl["tandem_axis"], float), axis) @ np.asarray(s["axes_mm"], float)
    coeffs = np.asarray(s["sh"], float)
    e = shape.exponent  # superellipsoid volume: 8abc Gamma(1 + 1/e)^3 / Gamma(1 + 3/e)
    volume = 8.0 * float(np.prod(shape.radii)) * math.gamma(1 + 1 / e) ** 3 / math.gamma(1 + 3 / e)
    axes = axes * (volume / star_volume_mm3(axes, coeffs)) ** (1 / 3)
    return StarShape(np.asarray(shape.center, float), axes, coeffs)


def heldout_ablation(weights, n: int = 3, matrix: int = 256, device: str = "cpu", segmenter=None,
                     log: Optional[Callable[[str], None]] = None, z_extent_mm: float = BASE_Z_EXTENT_MM) -> dict:
    """Dice on the held-out style as generated and with each suspected cause of failure removed (same seeds as its row)."""
    log = log or (lambda s: None)
    segmenter = segmenter or Segmenter(weights, device=device)
    t0 = time.perf_counter()
    seeds = [SEED_BASE["heldout"] + i for i in range(n)]
    rows = []
    for name, variant in HELDOUT_ABLATIONS.items():
        row = RowResult(name, "held-out ablation", "heldout", seeds)
        for s in seeds:
            row.add(_score(segmenter, heldout_variant(s, matrix, z_extent_mm=z_extent_mm, **variant)))
            log(f"{name} seed {s}: Dice {row.dice[-1]:.3f}")
        rows.append(row)
    return {"weights": _weights_entry(weights, segmenter),
            "n_per_row": n, "matrix": matrix, "slice_mm": BASE_SLICE_MM, "z_extent_mm": z_extent_mm,
            "device": segmenter.device, "seconds": round(time.perf_counter() - t0, 1),
            "rows": [r.summary() for r in rows]}


# Does the network follow a CTV it can see? The training styles with their CTV shifted by this much
# (session 21: 0.3.2 drew a CTV 60 HU brighter than it was hardly better than as made: 0.526 -> 0.563).
VISIBLE_CTV_SHIFTS_HU = (0.0, 60.0, -60.0)
VISIBLE_CTV_STYLES = ("v3", "v4", "v5", "v6", "v7")


def with_ctv_shift(ph: Phantom, shift_hu: float) -> Phantom:
    """``ph`` with its CTV (label 1) shifted by ``shift_hu``, fading over about one voxel in-plane.

    The fade is a Gaussian of the CTV mask (sigma 0.7 px in-plane, 0.3 px across slices), as a
    reconstructed CT blurs a real edge; labels, geometry and everything outside the fade are kept.
    """
    from scipy.ndimage import gaussian_filter

    if not shift_hu:
        return ph
    fade = gaussian_filter((ph.labels.array == LABELS["CTV"]).astype(np.float32), (0.3, 0.7, 0.7))
    return _with(ph, _hu(ph.ct.array.astype(np.float32) + float(shift_hu) * fade), ctv_shift_hu=float(shift_hu))


def visible_ctv_ablation(weights, n: int = 8, matrix: int = 256, device: str = "cpu", segmenter=None,
                         styles=VISIBLE_CTV_STYLES, shifts=VISIBLE_CTV_SHIFTS_HU,
                         log: Optional[Callable[[str], None]] = None, z_extent_mm: float = BASE_Z_EXTENT_MM) -> dict:
    """Dice on the training styles' phantoms (their rows' first ``n`` seeds) as made and with the CTV shifted.

    A network that reads the CTV's edge gains where the edge is made plain (+60 HU, an enhancing CTV;
    -60 HU, a hypodense one); one that draws its prior around the tandem does not.
    """
    log = log or (lambda s: None)
    segmenter = segmenter or Segmenter(weights, device=device)
    t0 = time.perf_counter()
    rows = []
    for style in styles:
        seeds = [SEED_BASE[style] + i for i in range(n)]
        # "as made" is named apart from the style row: the same phantoms, but another table (read_results merges by name).
        by_shift = {d: RowResult(f"{style}, CTV {f'{d:+.0f} HU' if d else 'as made'}", "visible-CTV ablation", style, seeds)
                    for d in shifts}
        for s in seeds:
            ph = generate(style, s, matrix, z_extent_mm=z_extent_mm)
            for d, row in by_shift.items():
                row.add(_score(segmenter, with_ctv_shift(ph, d)))
                log(f"{row.row} seed {s}: Dice {row.dice[-1]:.3f}")
        rows += by_shift.values()
    return {"weights": _weights_entry(weights, segmenter), "n_per_row": n, "matrix": matrix,
            "slice_mm": BASE_SLICE_MM, "z_extent_mm": z_extent_mm, "device": segmenter.device,
            "seconds": round(time.perf_counter() - t0, 1), "rows": [r.summary() for r in rows]}


def markdown_table(results: dict) -> str:
    """The rows as a markdown table (mean / median / min Dice, n)."""
    with_atlas = any("atlas_mean" in r for r in results["rows"])
    lines = ["| row | group | style | n | mean Dice | median | min | tube, no network |" + (" atlas, no network |" if with_atlas else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if with_atlas else "")]
    for r in results["rows"]:
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        lines.append(f"| {r['row']} | {r['group']} | {r['style']} | {r['n']} | {fmt(r['mean'])} | "
                     f"{fmt(r['median'])} | {fmt(r['min'])} | {fmt(r.get('tube_mean'))} |"
                     + (f" {fmt(r.get('atlas_mean'))} |" if with_atlas else ""))
    return "\n".join(lines) + "\n"


def add_to_card(card: dict, results: dict) -> dict:
    """A copy of the model-card dict ``card`` with ``results`` summarised under ``"generalisation"``."""
    summary = {k: results[k] for k in ("n_per_row", "matrix", "slice_mm", "perturb_style", "seed_base") if k in results}
    summary["rows"] = {r["row"]: {"group": r["group"], "style": r["style"], "n": r["n"], "mean": r["mean"],
                                  "median": r["median"], "min": r["min"]} for r in results["rows"]}
    return {**card, "generalisation": summary}


def write_results(results: dict, out_dir) -> tuple[Path, Path]:
    """``generalisation.json`` and ``generalisation.md`` in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "generalisation.json", out / "generalisation.md"
    write_text(js, json.dumps(results, indent=1) + "\n", overwrite=True)
    write_text(md, markdown_table(results), overwrite=True)
    return js, md


def read_results(path) -> dict:
    """The rows of one evaluation: a ``generalisation.json``, a candidate JSON of ``docs/``, or a folder.

    A folder is the output of ``scripts/evaluate_candidate.sh`` (styles, perturbations, ablation in
    sub-folders): every ``generalisation.json`` under it is read and their rows are merged. A row that
    two of them measure on the same first seeds alike is kept with the more seeds; one they measure
    differently is refused, not silently overwritten.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"'{path}' does not exist.")
    files = sorted(path.rglob("generalisation.json")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"No generalisation.json under '{path}'.")
    rows: dict = {}
    for f in files:
        loaded = json.loads(f.read_text())
        if not isinstance(loaded, dict) or not all(isinstance(r, dict) and {"row", "seeds", "dice"} <= set(r)
                                                   for r in loaded.get("rows") or [None]):
            raise ValueError(f"'{f}' is not a generalisation evaluation (rows with row, seeds and dice).")
        for r in loaded["rows"]:
            seen = rows.get(r["row"])
            if seen is not None:
                short, long_ = sorted((seen, r), key=lambda x: len(x["seeds"]))
                n = len(short["seeds"])
                if (list(long_["seeds"][:n]), list(long_["dice"][:n])) != (list(short["seeds"]), list(short["dice"])):
                    raise ValueError(f"Row '{r['row']}' is measured twice, differently, under '{path}'.")
                r = long_  # the same phantoms, and more of them (the held-out row on 16 seeds and again on 8)
            rows[r["row"]] = r
    return {"source": str(path), "rows": list(rows.values())}


def paired_comparison(base: dict, candidate: dict) -> list[dict]:
    """Per row both evaluations measured: both means and the candidate's paired difference.

    Rows are paired by seed (every candidate of issue 11 is measured on the same seeds), so the
    difference's standard error is that of the per-phantom differences, far smaller than the spread of
    either row. A row measured on more phantoms on one side (16 seeds against 8: the seeds of a row are
    always its style's first n) is compared on the seeds both have; rows on other seeds are refused:
    their difference would not be paired.
    """
    theirs = {r["row"]: r for r in candidate["rows"]}
    out = []
    for b in base["rows"]:  # in the base's order: the canonical one for the shipped JSONs
        r = theirs.get(b["row"])
        if r is None:
            continue
        n = min(len(b["seeds"]), len(r["seeds"]))
        if n == 0 or list(b["seeds"])[:n] != list(r["seeds"])[:n]:
            raise ValueError(f"Row '{r['row']}' was measured on other seeds in the two evaluations: not a paired comparison.")
        diff = np.asarray(r["dice"][:n], float) - np.asarray(b["dice"][:n], float)
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out.append({"row": r["row"], "group": r["group"], "n": len(diff), "base": float(np.mean(b["dice"][:n])),
                    "candidate": float(np.mean(r["dice"][:n])), "difference": float(diff.mean()), "se": se,
                    "better": int((diff > 0).sum())})
    return out


def comparison_table(rows: list[dict], base_name: str = "base", candidate_name: str = "candidate") -> str:
    """``paired_comparison`` as a markdown table."""
    lines = [f"| row | n | {base_name} | {candidate_name} | difference (SE) | better |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['n']} | {r['base']:.3f} | {r['candidate']:.3f} | "
                     f"{r['difference']:+.3f} ({r['se']:.3f}) | {r['better']}/{r['n']} |")
    return "\n".join(lines) + "\n"
