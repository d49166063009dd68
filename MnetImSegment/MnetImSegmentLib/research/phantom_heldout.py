"""Phantom style "heldout": a structurally different generator, ONLY for measuring generalisation.

Never train on it (``mnetim phantom --style heldout`` puts every scan in the ``test`` split, and
``read_manifest`` refuses held-out scans in train/val). It shares the task's semantics (a CTV
around the cervix and the tandem, bladder anterior, rectum posterior) but none of v2's or v3's
modelling choices:

* shapes: superellipsoids (boxy or pointed, exponent 1.4-5) and chains of beads, no smooth bumps,
  no spherical-harmonic templates, no deformation field; the pelvis is a single bony ring;
* intensity model: no fat layers; soft tissue carries a sinusoidal texture (+-5-30 HU), the CTV
  lies anywhere from 40 HU below to 60 HU above the uterus, fat is a thin rim;
* artefacts: painted straight streak lines through each metal part (alternating bright/dark,
  decaying with distance) instead of a projection model; white noise blurred by a 3 x 3 box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import Torus, Tube, _frame_from_axis, rotation_matrix
from .phantom_v3 import LABELS, METAL_HU, Layer3, PhantomV3


@dataclass
class SuperEllipsoid:
    """``(|x/a|^e + |y/b|^e + |z/c|^e)^(1/e) < 1`` in the frame ``rotation`` around ``center``."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    exponent: float

    def bounding_radius(self) -> float:
        return float(np.linalg.norm(self.radii))

    @property
    def minor(self) -> float:  # the edge width of phantom_v3._min_radius
        return float(self.radii.min())

    def level(self, points: np.ndarray) -> np.ndarray:
        local = (points - self.center.astype(np.float32)) @ self.rotation.astype(np.float32)
        e = self.exponent
        return ((np.abs(local / self.radii.astype(np.float32)) ** e).sum(-1) + 1e-9) ** (1.0 / e)


class PhantomHeldout(PhantomV3):
    """Held-out anatomy + intensities + artefact model for one seed (grid-independent)."""

    style = "heldout"

    def __init__(self, seed: int):  # noqa: C901 - one recipe, read top to bottom
        rng = np.random.default_rng([seed, 11])
        self.seed = int(seed)
        u = rng.uniform
        p: dict = {"seed": int(seed), "style": self.style}
        layers: list[Layer3] = []
        self.patient_rotation = rotation_matrix(u(-6, 6), u(-6, 6), u(-12, 12))

        def se(center, radii, rot=None, e=None):
            return SuperEllipsoid(np.asarray(center, float), np.asarray(radii, float),
                                  np.eye(3) if rot is None else np.asarray(rot, float), float(e or u(1.4, 5.0)))

        body_rx, body_ry = u(140, 210), u(100, 150)
        body_c = np.array([u(-10, 10), u(-10, 10), 30.0])
        tissue = u(30, 70)
        layers.append(Layer3(se(body_c, [body_rx, body_ry, 400], e=u(2.5, 5)), u(-60, -20)))
        layers.append(Layer3(se(body_c, [body_rx - u(3, 8), body_ry - u(3, 8), 400], e=u(2.5, 5)), tissue))
        bone_hu = u(300, 1000)
        layers.append(Layer3(Torus(np.array([0, u(0, 30), u(-30, 20)]), np.array([0.0, 0.0, 1.0]), u(85, 115), u(9, 16)),
                             bone_hu, edge_mm=0.8))
        for sx in (-1, 1):
            layers.append(Layer3(se([sx * u(95, 125), u(-10, 10), u(-60, -20)], [u(18, 26), u(18, 26), u(25, 45)]), bone_hu,
                                 edge_mm=0.8))
        axis = rotation_matrix(-u(0, 55), u(-15, 15), 0) @ np.array([0.0, 0.0, 1.0])
        frame = _frame_from_axis(axis)
        uterus = tissue + u(-15, 25)
        layers.append(Layer3(se(axis * u(45, 65), [u(22, 35), u(18, 28), u(30, 45)], frame), uterus))
        layers.append(Layer3(Tube(np.array([0, 0, -80.0]), axis * 30, u(12, 18)), uterus + u(-10, 10)))
        ctv = se(axis * u(8, 20) + rng.normal(0, 3, 3), [u(15, 30), u(12, 22), u(15, 30)], frame @ rotation_matrix(0, 0, u(-25, 25)))
        ctv_delta = u(-40, 60)
        layers.append(Layer3(ctv, uterus + ctv_delta, label=LABELS["CTV"], edge_mm=u(0.5, 3.0)))
        contrast = rng.random() < 0.3
        layers.append(Layer3(se([u(-10, 10), u(-60, -35), u(-30, 5)], [u(25, 50), u(18, 35), u(15, 35)]),
                             u(200, 700) if contrast else u(-10, 40), label=LABELS["bladder"]))
        rx, ry = u(-10, 10), u(30, 50)
        for k in range(4):  # rectum: a chain of beads
            z = -60 + 30 * k
            layers.append(Layer3(se([rx + u(-5, 5), ry + u(-5, 5), z], [u(12, 20), u(12, 20), u(18, 24)], e=u(1.8, 3)),
                                 u(-60, 60) if rng.random() < 0.5 else u(-900, -500), label=LABELS["rectum"]))
        metal = rng.random() < 0.7
        hu_app = METAL_HU if metal else u(100, 400)
        tip = axis * u(40, 70)
        parts = [Tube(np.array([0, 0, -100.0]), np.zeros(3), 3.0), Tube(np.zeros(3), tip, 3.0)]
        if rng.random() < 0.5:
            lateral = frame[:, 0]
            parts += [se(sx * lateral * u(14, 20) - axis * 4, [9, 9, 9], e=2.0) for sx in (-1, 1)]
        else:
            parts.append(Torus(-axis * 4, axis, u(14, 19), 4.0))
        for part in parts:
            layers.append(Layer3(part, hu_app, edge_mm=0.4, deform=False, metal="steel" if metal else ""))
        p.update(ctv_contrast_hu=float(ctv_delta), bladder_contrast=bool(contrast), applicator_metal=bool(metal),
                 uterine_axis=[float(v) for v in axis], hu_offset=u(-25, 25), noise_hu=u(5, 20),
                 texture_hu=u(5, 30), streak_hu=u(80, 400) if metal else 0.0)
        self.texture = (rng.normal(size=(3, 3)) / 25.0, rng.uniform(0, 2 * np.pi, 3))
        self.layers = layers
        self.body_center = body_c
        self.body_radii = (body_rx, body_ry)
        self.ctv = ctv
        self.ctv_center = ctv.center
        self.axis = axis
        self.os_point = np.zeros(3)
        self.tandem = (parts[0].p0.copy(), tip.copy())
        self.deformation = lambda pts: pts  # no deformation field: shapes are sampled as built
        self.params = p
        self.rng_grid = np.random.default_rng([seed, 7907])

    def _scanner(self, img, plane_origin, d, sp, rng, torch) -> np.ndarray:
        """Texture on soft tissue, offset, and box-blurred white noise."""
        p = self.params
        ny, nx = img.shape
        body = img > -900
        jj, ii = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        freqs, phases = self.texture
        pts = plane_origin + ii[..., None] * sp[0] * d[:, 0] + jj[..., None] * sp[1] * d[:, 1]
        soft = (img > -50) & (img < 150)
        texture = p["texture_hu"] * np.sin(pts @ freqs.T + phases).mean(-1)
        noise = rng.normal(0.0, p["noise_hu"] * 3.0, (ny, nx)).astype(np.float32)
        noise = sum(np.roll(np.roll(noise, a, 0), b, 1) for a in (-1, 0, 1) for b in (-1, 0, 1)) / 9.0
        return np.where(body, img + p["hu_offset"] + np.where(soft, texture, 0.0) + noise, img + 0.3 * noise).astype(np.float32)

    def _add_metal_artifacts(self, ct, metal_by_slice, sp, settings, rng) -> None:
        """Painted straight streaks through each slice's metal (deliberately not the v3 physics)."""
        amp = self.params["streak_hu"]
        n_lines = 8
        angles = np.linspace(0, np.pi, n_lines, endpoint=False) + rng.uniform(0, np.pi / n_lines)
        for k, (metal, _kind, _img) in metal_by_slice.items():
            jj, ii = np.nonzero(metal > 0.5)
            if len(jj) == 0:
                continue
            cy, cx = jj.mean() * sp[1], ii.mean() * sp[0]
            ny, nx = metal.shape
            y, x = np.meshgrid(np.arange(ny) * sp[1] - cy, np.arange(nx) * sp[0] - cx, indexing="ij")
            r = np.sqrt(x**2 + y**2) + 1.0
            out = np.zeros((ny, nx), np.float32)
            for n, a in enumerate(angles):
                dist = np.abs(-np.sin(a) * x + np.cos(a) * y)
                out += (1 if n % 2 else -1) * amp * np.exp(-(dist**2) / 2.0) / (1.0 + r / 40.0)
            body = ct[k] > -900
            ct[k] = np.clip(np.rint(ct[k] + np.where(body, out, 0.0)), -1024, 3071).astype(np.int16)


make_phantom_heldout = PhantomHeldout.make  # one held-out-style phantom
