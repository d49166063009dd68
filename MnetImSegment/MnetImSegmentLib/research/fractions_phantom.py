"""Phantom fraction series: one patient, the applicator re-inserted for every fraction.

Fraction 1 is exactly ``make_phantom(seed, **kwargs)``. Every later fraction keeps the same random
anatomy (bones, body, muscles) and moves the applicator together with the cervix, uterus, CTV and
packing rigidly about the external os (3-10 mm and 3-10 degrees about a random axis), changes the
bladder and rectum filling (radii x0.8-1.2 / x0.85-1.15, growing away from the cervix, pushed by half the
applicator's shift), and deforms the CTV slightly with a smooth field (a few Gaussian bumps
of at most ~2.5 mm). Each fraction is sampled on its own scanner grid (the couch position differs)
with its own noise. The truth of every fraction is its label map, the applicator anchors in LPS and
the 4x4 LPS transform that carries fraction 1's physical points onto this fraction's.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .phantom import Phantom, PhantomAnatomy, rotation_matrix


@dataclass
class SmoothWarp:
    """A small smooth displacement field: a sum of Gaussian bumps (mm)."""

    centers: np.ndarray  # (n, 3)
    vectors: np.ndarray  # (n, 3) displacement at each centre
    sigma: float

    @property
    def max_mm(self) -> float:
        return float(np.linalg.norm(self.vectors, axis=1).sum())

    def __call__(self, points: np.ndarray) -> np.ndarray:
        out = np.zeros_like(points)
        for c, v in zip(self.centers, self.vectors):
            w = np.exp(-((points - c) ** 2).sum(-1) / (2 * self.sigma**2))
            out = out + w[..., None] * v
        return out


@dataclass
class Moved:
    """A phantom shape moved rigidly about ``pivot`` (then optionally warped), in the patient frame."""

    inner: object
    rotation: np.ndarray
    pivot: np.ndarray
    shift: np.ndarray
    warp: Optional[SmoothWarp] = None

    def bounding_radius(self) -> float:
        return self.inner.bounding_radius() + (self.warp.max_mm if self.warp is not None else 0.0)

    @property
    def center(self) -> np.ndarray:
        return self.rotation @ (self.inner.center - self.pivot) + self.pivot + self.shift

    def level(self, points: np.ndarray) -> np.ndarray:
        if self.warp is not None:  # the field is small and smooth: subtracting it inverts it well enough
            points = points - self.warp(points)
        local = (points - self.pivot - self.shift) @ self.rotation + self.pivot  # R^T for row vectors
        return self.inner.level(local.astype(np.float32) if points.dtype == np.float32 else local)


@dataclass
class Anchors:
    """Applicator landmarks in LPS mm, with the attributes of ``applicator.ApplicatorFit``."""

    os_lps: np.ndarray
    tip_lps: np.ndarray
    kind: str = ""
    found: bool = True
    confidence: float = 1.0

    @property
    def axis_lps(self) -> np.ndarray:
        d = self.tip_lps - self.os_lps
        return d / np.linalg.norm(d)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.tip_lps - self.os_lps))


@dataclass
class Fraction:
    """One fraction: its phantom (CT, labels, params), true anchors, and fraction 1 -> this transform."""

    index: int
    phantom: Phantom
    anchors: Anchors
    transform_from_first: np.ndarray  # 4x4, LPS mm: fraction 1 physical point -> this fraction's


def _random_rotation(rng, max_deg: float) -> tuple[np.ndarray, float]:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(3.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k, float(np.rad2deg(angle))


def _fraction_anatomy(base: PhantomAnatomy, index: int, max_shift_mm: float, max_rot_deg: float,
                      warp_mm: float) -> tuple[PhantomAnatomy, np.ndarray, dict]:
    rng = np.random.default_rng([base.seed, index, 1409])
    rot, angle = _random_rotation(rng, max_rot_deg)
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(3.0, max_shift_mm)
    pivot = np.asarray(base.os_point, float)
    parts = base.fraction_parts
    layers = list(base.layers)
    for i in parts["moving"]:
        warp = None
        if i == parts["ctv"]:
            ctv = base.layers[i].shape
            centers = ctv.center + rng.normal(0, 12, size=(3, 3))
            vectors = rng.normal(size=(3, 3))
            vectors *= (rng.uniform(0.5, 1.0, size=3) * warp_mm / np.linalg.norm(vectors, axis=1))[:, None]
            warp = SmoothWarp((centers - pivot) @ rot.T + pivot + shift, vectors, 15.0)  # about the moved CTV
        layers[i] = dataclasses.replace(base.layers[i], shape=Moved(base.layers[i].shape, rot, pivot, shift, warp))
    bladder_f, rectum_f = rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15)
    # Filling grows or shrinks the organ away from the cervix: the wall next to the CTV stays about where
    # it was (a fuller bladder lifts the uterus, it does not swallow the tumour).
    ctv_center = base.layers[parts["ctv"]].shape.center
    b = base.layers[parts["bladder"]]
    away = (b.shape.center - ctv_center) / np.linalg.norm(b.shape.center - ctv_center)
    reach = float(np.sqrt((((b.shape.rotation.T @ away) * b.shape.radii) ** 2).sum()))  # centre to wall, towards the CTV
    # The organs next to the cervix are pushed along by half the applicator's displacement.
    bladder = dataclasses.replace(b.shape, radii=b.shape.radii * bladder_f,
                                  center=b.shape.center + away * (bladder_f - 1) * reach + shift / 2)
    layers[parts["bladder"]] = dataclasses.replace(b, shape=bladder)
    r = base.layers[parts["rectum"]]
    away = (r.shape.center - ctv_center) * [1, 1, 0]
    away = away / np.linalg.norm(away)
    grow = away * (rectum_f - 1) * r.shape.radius + shift / 2
    rectum = dataclasses.replace(r.shape, radius=r.shape.radius * rectum_f, p0=r.shape.p0 + grow, p1=r.shape.p1 + grow)
    layers[parts["rectum"]] = dataclasses.replace(r, shape=rectum)
    anatomy = copy.copy(base)
    anatomy.layers = layers
    anatomy.seed = base.seed * 1000 + index  # sample() draws its noise from it: new noise per fraction
    # Patient frame move M (x -> rot (x - pivot) + pivot + shift) seen in physical LPS: P M P^T.
    pr = base.patient_rotation
    m = np.eye(4)
    m[:3, :3] = pr @ rot @ pr.T
    m[:3, 3] = pr @ (pivot + shift - rot @ pivot)
    info = {"applicator_shift_mm": [float(v) for v in pr @ shift], "applicator_rotation_deg": angle,
            "bladder_filling_factor": float(bladder_f), "rectum_filling_factor": float(rectum_f),
            "ctv_warp_mm": float(warp_mm)}
    return anatomy, m, info


def _anchors(anatomy: PhantomAnatomy, m: np.ndarray, kind: str) -> Anchors:
    pr = anatomy.patient_rotation
    os_ = m[:3, :3] @ (pr @ anatomy.os_point) + m[:3, 3]
    tip = m[:3, :3] @ (pr @ anatomy.tandem_tip) + m[:3, 3]
    return Anchors(os_, tip, kind)


def make_fraction_series(seed: int, n_fractions: int = 3, max_shift_mm: float = 10.0, max_rot_deg: float = 10.0,
                         warp_mm: float = 2.5, **phantom_kwargs) -> list[Fraction]:
    """Fractions 1..N of one phantom patient (see module docstring).

    Args:
        seed: The patient (anatomy, applicator type, intensities) and every fraction's motion.
        n_fractions: How many fractions (>= 1).
        max_shift_mm: Largest applicator translation relative to fraction 1.
        max_rot_deg: Largest applicator rotation about the os relative to fraction 1.
        warp_mm: Scale of the smooth CTV deformation.
        **phantom_kwargs: ``matrix``, ``slice_mm``, ``z_extent_mm``, ``direction`` as in ``make_phantom``;
            fixed ones are shared by every fraction, the rest are drawn per fraction.
    """
    if n_fractions < 1:
        raise ValueError("n_fractions must be at least 1")
    base = PhantomAnatomy(seed)
    kind = base.params["applicator"]
    out = []
    for index in range(1, n_fractions + 1):
        if index == 1:
            anatomy, m, info = base, np.eye(4), {}
            grid = base.default_grid(**phantom_kwargs)
        else:
            anatomy, m, info = _fraction_anatomy(base, index, max_shift_mm, max_rot_deg, warp_mm)
            grid = base.default_grid(**phantom_kwargs, rng=np.random.default_rng([seed, index, 7919]))
        ph = anatomy.sample(*grid)
        anchors = _anchors(base, m, kind)
        ph.params.update(info, fraction=index, seed=int(seed),
                         cervix_os_lps=[float(v) for v in anchors.os_lps],
                         tandem_tip_lps=[float(v) for v in anchors.tip_lps],
                         tandem_axis_lps=[float(v) for v in anchors.axis_lps],
                         transform_from_fraction_1=m.tolist())
        out.append(Fraction(index, ph, anchors, m))
    return out


def transform_between(first: Fraction, second: Fraction) -> np.ndarray:
    """4x4 LPS transform carrying ``first``'s physical points onto ``second``'s."""
    return second.transform_from_first @ np.linalg.inv(first.transform_from_first)


__all__ = ["Anchors", "Fraction", "Moved", "SmoothWarp", "make_fraction_series", "transform_between"]
