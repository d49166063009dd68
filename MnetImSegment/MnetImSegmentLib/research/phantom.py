"""Synthetic cervical-cancer brachytherapy CT with labels (tests, demo, demo weights).

The anatomy is defined analytically in a patient frame (LPS millimetres, origin at the cervix) and
then *sampled* on any voxel grid: any spacing, slice thickness, field of view and direction,
oblique or flipped. Because the truth lives in physical space, a phantom written on an oblique
grid has the CTV exactly where the same phantom on an axial grid has it: the geometry tests rely
on that.

Sizes and relative positions follow the real structure sets described in
``shared/data/README.md`` (CTV about 56 x 40 x 70 mm, bladder 90 x 75 x 52 mm antero-inferior,
rectum posterior, tandem 150 mm, body about 240-380 mm wide). Everything is randomised by the seed:
anatomy sizes, shapes (smooth random bumps), positions, uterine tilt, HU offsets, noise level,
streak strength, applicator type (tandem + ovoids or tandem + ring; metal or plastic), packing,
slice thickness, field of view, matrix, patient size and small rotations. The CTV differs from the
surrounding tissue by 18-40 HU under 6-14 HU noise and metal streaks (an enhancing cervix on
contrast CT, still far below what a threshold could separate from bladder, rectum and muscle): a
network must learn its texture and where it lies relative to the applicator, bladder and rectum.

Labels: 1 = CTV, 2 = bladder, 3 = rectum (``LABELS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.volume import Geometry, Volume

LABELS = {"CTV": 1, "bladder": 2, "rectum": 3}
AIR_HU = -1000.0


def rotation_matrix(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3x3 matrix."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Blob:
    """A smooth closed shape: an ellipsoid with random radial bumps, in the patient frame.

    ``level(points)`` is < 1 inside and > 1 outside, roughly the normalised radius, so a soft edge
    of width ``w`` mm is ``clip((1 - level) * min_radius / w + 0.5, 0, 1)``.
    """

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    bump_dirs: np.ndarray  # (n, 3) unit vectors
    bump_amps: np.ndarray  # (n,) relative radius change

    @classmethod
    def make(cls, rng, center, radii, rotation=None, bumps=4, bump_amp=0.12):
        dirs = rng.normal(size=(bumps, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return cls(
            np.asarray(center, float),
            np.asarray(radii, float),
            np.eye(3) if rotation is None else np.asarray(rotation, float),
            dirs,
            rng.uniform(-bump_amp, bump_amp, size=bumps),
        )

    def bounding_radius(self) -> float:
        return float(self.radii.max() * (1 + np.abs(self.bump_amps).sum()))

    def level(self, points: np.ndarray) -> np.ndarray:
        local = (points - self.center) @ self.rotation  # into the blob's own axes
        scaled = local / self.radii
        r = np.sqrt((scaled**2).sum(-1)) + 1e-6
        unit = scaled / r[..., None]
        bump = np.zeros_like(r)
        for d, a in zip(self.bump_dirs, self.bump_amps):
            bump += a * np.exp(-((unit @ d - 1.0) ** 2) / 0.18)
        return r / (1.0 + bump)


@dataclass
class Tube:
    """A cylinder of radius ``radius`` around the segment p0-p1 (applicator tandem, ovoid, rectum)."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float

    def bounding_radius(self) -> float:
        return float(np.linalg.norm(self.p1 - self.p0) / 2 + self.radius)

    @property
    def center(self) -> np.ndarray:
        return (self.p0 + self.p1) / 2

    def level(self, points: np.ndarray) -> np.ndarray:
        axis = self.p1 - self.p0
        t = np.clip(((points - self.p0) @ axis) / (axis @ axis), 0.0, 1.0)
        nearest = self.p0 + t[..., None] * axis
        return np.sqrt(((points - nearest) ** 2).sum(-1)) / self.radius


@dataclass
class Torus:
    """Ring applicator: a torus around ``axis`` through ``center``."""

    center: np.ndarray
    axis: np.ndarray
    major: float
    minor: float

    def bounding_radius(self) -> float:
        return self.major + self.minor

    def level(self, points: np.ndarray) -> np.ndarray:
        rel = points - self.center
        along = rel @ self.axis
        radial = np.sqrt(np.maximum((rel**2).sum(-1) - along**2, 0.0))
        return np.sqrt((radial - self.major) ** 2 + along**2) / self.minor


@dataclass
class Layer:
    """One ingredient painted onto the CT: a shape, its HU, and which label it writes (0: none)."""

    shape: object
    hu: float
    label: int = 0
    edge_mm: float = 1.0
    metal: bool = False
    streak: tuple = ()  # metal only: (ray frequency, modulation frequency, phase), fixed per part
    clears_label: bool = False  # packing displaces tissue: no CTV inside it


@dataclass
class Phantom:
    """A sampled phantom: the CT (HU, int16), its label map (uint8, ``LABELS``) and the recipe."""

    ct: Volume
    labels: Volume
    params: dict

    def mask(self, name: str = "CTV") -> Volume:
        return self.labels.with_array((self.labels.array == LABELS[name]).astype(np.uint8))


class PhantomAnatomy:
    """The random patient + applicator for one seed, independent of any voxel grid."""

    def __init__(self, seed: int, applicator: str | None = "auto"):
        if applicator not in ("auto", "metal", "plastic", None):
            raise ValueError(f"applicator must be 'auto', 'metal', 'plastic' or None, got {applicator!r}")
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.rng = rng
        u = rng.uniform
        p: dict = {"seed": int(seed)}

        # Patient: the whole anatomy is rotated slightly (patient not perfectly aligned on the couch).
        p["patient_rotation_deg"] = [float(u(-4, 4)), float(u(-4, 4)), float(u(-8, 8))]
        self.patient_rotation = rotation_matrix(*p["patient_rotation_deg"])

        body_rx, body_ry = u(120, 190), u(95, 135)
        body_center = np.array([u(-8, 8), u(-20, 5), 0.0])
        fat = u(8, 40)
        p.update(body_width_mm=2 * body_rx, body_depth_mm=2 * body_ry, fat_mm=fat)
        soft = u(25, 50)  # HU of the pelvic soft tissue this patient has (scanner/patient offset)
        hu_offset = u(-15, 15)
        p.update(soft_tissue_hu=soft, hu_offset=hu_offset)

        # Uterine axis (tandem direction): superior, tilted anteriorly (anteverted) and a little sideways.
        tilt = u(5, 40)
        side = u(-12, 12)
        axis = rotation_matrix(-tilt, side, 0) @ np.array([0.0, 0.0, 1.0])
        axis /= np.linalg.norm(axis)
        p.update(uterine_tilt_deg=tilt, uterine_side_deg=side)

        os_point = np.array([0.0, 0.0, 0.0]) - axis * u(8, 16)  # external os, below the CTV centre
        p["cervix_os_lps"] = [float(v) for v in self.patient_rotation @ os_point]  # with or without applicator
        layers: list[Layer] = []
        z_long = 400.0
        # Body (fat layer), then the pelvic interior (mix of fat and tissue), muscles, bones.
        layers.append(Layer(_elliptic_cylinder(rng, body_center, body_rx, body_ry, z_long), -100 + u(-15, 15), edge_mm=1.0))
        inner = _elliptic_cylinder(rng, body_center + [0, u(-3, 3), 0], body_rx - fat, body_ry - fat * 0.7, z_long)
        layers.append(Layer(inner, -60 + u(-20, 20)))
        heads, head_radii = [], []
        for sx in (-1, 1):  # gluteal / obturator muscles and hip bones, left and right
            layers.append(Layer(Blob.make(rng, [sx * u(70, 100), u(20, 50), u(-40, 10)], [u(25, 40), u(35, 55), u(70, 110)]), soft + u(5, 20)))
            layers.append(Layer(Blob.make(rng, [sx * u(60, 80), u(-10, 10), u(30, 80)], [u(15, 25), u(15, 25), u(40, 60)]), soft + u(5, 20)))
            head = [sx * u(85, 105), u(-15, 10), u(-70, -40)]
            r = u(20, 26)
            heads.append(np.asarray(head, float))
            head_radii.append(r)
            layers.append(Layer(Blob.make(rng, head, [r, r, r], bump_amp=0.03), u(900, 1300), edge_mm=0.7))
            layers.append(Layer(Blob.make(rng, head, [r - 4, r - 4, r - 4], bump_amp=0.03), u(200, 350)))
            ilium = [sx * u(90, 120), u(10, 40), u(20, 90)]
            layers.append(Layer(Blob.make(rng, ilium, [u(8, 14), u(35, 50), u(40, 60)], rotation_matrix(0, 0, sx * u(20, 40))), u(500, 900)))
        layers.append(Layer(Blob.make(rng, [0, u(-95, -70), u(-70, -50)], [u(20, 30), u(8, 12), u(15, 25)]), u(500, 900)))  # pubis
        sacrum = Blob.make(rng, [0, u(70, 100), u(-10, 30)], [u(30, 45), u(10, 16), u(50, 70)], rotation_matrix(u(-30, -10), 0, 0))
        layers.append(Layer(sacrum, u(400, 700)))
        # Landmarks in physical LPS mm (patient rotation applied), for distractors painted afterwards.
        p.update(body_center_lps=[float(v) for v in self.patient_rotation @ body_center],
                 sacrum_center_lps=[float(v) for v in self.patient_rotation @ sacrum.center],
                 femoral_heads_lps=[[float(v) for v in self.patient_rotation @ h] for h in heads],
                 femoral_head_radii_mm=[float(r) for r in head_radii])

        # Bladder (antero-inferior of the CTV), rectum (posterior, with gas), uterus/cervix/vagina.
        contrast_bladder = rng.random() < 0.2
        bladder = Blob.make(rng, [u(-8, 8), u(-45, -30), u(-20, 5)], [u(30, 48), u(22, 38), u(18, 30)], bump_amp=0.1)
        rectum_x, rectum_y = u(-8, 8), u(28, 42)
        rectum = Tube(np.array([rectum_x, rectum_y + u(-5, 5), -90.0]), np.array([rectum_x + u(-10, 10), rectum_y + u(0, 12), 60.0]), u(13, 22))
        p.update(bladder_contrast=bool(contrast_bladder))

        cervix_r = u(13, 20)
        cervix = Tube(os_point, os_point + axis * u(25, 40), cervix_r)
        uterus = Blob.make(rng, os_point + axis * u(50, 65), [u(22, 32), u(18, 26), u(30, 42)], _frame_from_axis(axis), bump_amp=0.1)
        vagina = Tube(os_point - np.array([0, u(-4, 4), 70.0]), os_point, u(9, 13))
        parametrium = Blob.make(rng, os_point + axis * 15, [u(35, 45), u(22, 30), u(30, 40)], _frame_from_axis(axis), bump_amp=0.1)
        first_moving = len(layers)  # from here on the uterus, cervix, CTV and applicator move together
        layers.append(Layer(parametrium, soft - u(0, 10)))
        layers.append(Layer(uterus, soft + u(-5, 3)))
        layers.append(Layer(vagina, soft + u(-5, 5)))
        layers.append(Layer(cervix, soft + u(0, 8)))

        # The CTV: cervix, the adjacent uterus and parametria (HR-CTV style), minus bladder and rectum.
        # On the contrast-enhanced planning CT the tumour-bearing cervix enhances more than the uterine
        # body and parametria: 18-40 HU above them, under 6-14 HU noise and metal streaks. Still a
        # low-contrast target, but one a reader could outline: at 10-30 HU under 8-18 HU noise its
        # edge vanished inside the dark bands between metal parts.
        ctv_center = os_point + axis * u(10, 18) + np.array([u(-3, 3), u(-3, 3), 0])
        ctv = Blob.make(rng, ctv_center, [u(22, 32), u(16, 24), u(20, 34)], _frame_from_axis(axis) @ rotation_matrix(0, 0, u(-15, 15)), bumps=5, bump_amp=0.10)
        ctv_delta = u(18, 32)
        p.update(ctv_contrast_hu=ctv_delta)
        layers.append(Layer(ctv, soft + 8 + ctv_delta, label=LABELS["CTV"], edge_mm=2.0))

        layers.append(Layer(bladder, u(150, 400) if contrast_bladder else u(0, 15), label=LABELS["bladder"]))
        layers.append(Layer(rectum, soft + u(5, 15), label=LABELS["rectum"]))
        filling = (len(layers) - 2, len(layers) - 1)  # bladder and rectum: their filling changes between fractions
        n_gas = int(rng.integers(0, 4))
        for _ in range(n_gas):  # gas and stool inside the rectum: painted, but still rectum
            c = rectum.p0 + (rectum.p1 - rectum.p0) * u(0.3, 0.8) + rng.normal(0, 3, 3)
            gas_r = rectum.radius * u(0.3, 0.7)
            layers.append(Layer(Blob.make(rng, c, [gas_r, gas_r * u(0.6, 1), gas_r * u(1, 2)]), u(-950, -600), label=LABELS["rectum"]))

        # Packing below the applicator (gauze: air-filled, sometimes radio-opaque).
        packing = Blob.make(rng, os_point - axis * u(18, 28) + [0, u(-5, 5), 0], [u(18, 26), u(12, 18), u(12, 18)], bump_amp=0.2)
        packing_layer = Layer(packing, u(-600, -150) if rng.random() < 0.7 else u(100, 300), clears_label=True)
        if applicator is not None:  # no applicator, no packing (the draws still happen: seeds keep their anatomy)
            layers.append(packing_layer)

        # Applicator: tandem + ovoids or tandem + ring; metal (streaks) or plastic.
        seed_metal = metal = rng.random() < 0.6
        if applicator in ("metal", "plastic"):
            metal = applicator == "metal"
        kind = "ovoids" if rng.random() < 0.55 else "ring"
        p.update(applicator=kind if applicator is not None else "none", applicator_metal=bool(metal and applicator is not None))
        hu_app = u(2500, 3071) if metal else u(150, 450)
        tandem_len = u(50, 70)
        tandem = Tube(os_point - axis * 90, os_point + axis * tandem_len, u(2.5, 3.5))
        app_parts = [tandem]
        lateral = _frame_from_axis(axis)[:, 0]
        if kind == "ovoids":
            off = u(15, 22)
            for sx in (-1, 1):
                c = os_point + sx * off * lateral - axis * u(3, 8)
                r = u(7, 11)
                app_parts.append(Tube(c - axis * r * 0.6, c + axis * r * 0.6, r))
                app_parts.append(Tube(c - axis * 90, c - axis * r * 0.6, 2.5))  # ovoid handle
        else:
            app_parts.append(Torus(os_point - axis * u(2, 6), axis, u(14, 20), u(3.5, 5)))
        app_layers = []
        for part in app_parts:
            # Streak pattern fixed per metal part, so it is coherent from slice to slice as on a scanner.
            streak = (int(rng.integers(6, 14)), int(rng.integers(3, 7)), float(u(0, 2 * np.pi)))
            app_layers.append(Layer(part, hu_app, edge_mm=0.5, metal=metal, streak=streak))
        if not metal:  # plastic tandems are hollow: an air-filled source channel
            app_layers.append(Layer(Tube(tandem.p0, tandem.p1, 1.0), -800.0, edge_mm=0.3))
        if applicator is not None:
            layers.extend(app_layers)
            # Where the applicator truly is, in physical LPS mm (the patient rotation applied), for
            # tests of applicator localisation: the os (where ring/ovoids sit) and the tandem's tip.
            rot = self.patient_rotation
            p.update(applicator_os_lps=[float(v) for v in rot @ os_point],
                     applicator_axis_lps=[float(v) for v in rot @ axis],
                     applicator_tip_lps=[float(v) for v in rot @ tandem.p1])
        self.metal_parts = app_parts if metal and applicator is not None else []
        # Draw as the seed would have (same draws whatever the forced kind), then apply the kind.
        streak_hu = u(60, 280) if seed_metal else float(np.random.default_rng(seed + 1).uniform(60, 280))
        p.update(streak_hu=streak_hu if metal and applicator is not None else 0.0, noise_hu=u(6, 14))

        self.layers = layers
        # Fraction series (research/fractions_phantom.py) re-insert the applicator: which layers move, and
        # the anchors they move about. Recording them draws nothing, so every seed keeps its phantom.
        self.fraction_parts = {"moving": [i for i in range(first_moving, len(layers))
                                          if i not in filling and layers[i].label != LABELS["rectum"]],
                               "ctv": next(i for i, x in enumerate(layers) if x.label == LABELS["CTV"]),
                               "bladder": filling[0], "rectum": filling[1]}
        self.os_point, self.uterine_axis, self.tandem_tip = os_point, axis, tandem.p1
        self.body_center = body_center
        self.body_radii = (body_rx, body_ry)
        self.hu_offset = hu_offset
        self.ctv_center = ctv_center
        self.params = p

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        return points @ self.patient_rotation  # R^T p for row vectors

    def default_grid(self, matrix: int | None = None, slice_mm: float | None = None,
                     z_extent_mm: float | None = None, direction=None, rng=None) -> tuple[Geometry, tuple[int, int, int]]:
        """A scanner-like grid around this patient: axial by default, FOV just wider than the body."""
        rng = rng or np.random.default_rng(self.seed + 7919)
        matrix = int(matrix or rng.choice([256, 384, 512]))
        slice_mm = float(slice_mm or rng.choice([1.0, 1.25, 2.0, 2.5, 3.0]))
        z_extent_mm = float(z_extent_mm or rng.uniform(120, 200))
        fov = 2 * max(self.body_radii) + rng.uniform(20, 80)
        spacing = (fov / matrix, fov / matrix, slice_mm)
        nz = max(1, int(round(z_extent_mm / slice_mm)))
        d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
        center = np.array([self.body_center[0], self.body_center[1], self.ctv_center[2] + rng.uniform(-20, 20)])
        size = (matrix, matrix, nz)
        origin = center - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
        return Geometry(spacing, origin, tuple(d.ravel())), (nz, matrix, matrix)

    def sample(self, geometry: Geometry, shape_zyx: tuple[int, int, int]) -> Phantom:
        """Sample CT and labels on a voxel grid (any spacing, origin, direction)."""
        nz, ny, nx = shape_zyx
        rng = np.random.default_rng(self.seed + 104729)
        ct = np.empty((nz, ny, nx), np.int16)
        lab = np.zeros((nz, ny, nx), np.uint8)
        jj, ii = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        d = geometry.direction_matrix
        sp = np.asarray(geometry.spacing)
        in_plane = (ii[..., None] * sp[0] * d[:, 0] + jj[..., None] * sp[1] * d[:, 1]).astype(np.float32)
        normal = d[:, 2] / np.linalg.norm(d[:, 2])
        noise_sigma = self.params["noise_hu"]
        inv_d = np.linalg.inv(d)
        for k in range(nz):
            plane_origin = np.asarray(geometry.origin) + d[:, 2] * sp[2] * k
            pts_phys = in_plane + plane_origin.astype(np.float32)
            img = np.full((ny, nx), AIR_HU, np.float32)
            label = np.zeros((ny, nx), np.uint8)
            metal_points = []
            for layer in self.layers:
                shape = layer.shape
                center = self.patient_rotation @ shape.center
                radius = shape.bounding_radius()
                if abs((center - plane_origin) @ normal) > radius + 2 * sp[2]:
                    continue  # this shape does not reach this slice
                # Only evaluate the shape inside its bounding square in this slice's index space.
                ci, cj, _ = (inv_d @ (center - np.asarray(geometry.origin))) / sp
                ri, rj = radius / sp[0] + 2, radius / sp[1] + 2
                i0, i1 = max(int(ci - ri), 0), min(int(ci + ri) + 1, nx)
                j0, j1 = max(int(cj - rj), 0), min(int(cj + rj) + 1, ny)
                if i0 >= i1 or j0 >= j1:
                    continue
                window = (slice(j0, j1), slice(i0, i1))
                win_phys = pts_phys[window]
                level = shape.level(self.to_patient(win_phys))
                inside = level < 1.0
                if not inside.any():
                    continue
                scale = _min_radius(shape) / max(layer.edge_mm, 1e-3)
                alpha = np.clip((1.0 - level) * scale + 0.5, 0.0, 1.0)
                sub = img[window]
                sub += alpha * (layer.hu - sub)
                if layer.label:
                    label[window][inside] = layer.label
                elif layer.clears_label:
                    label[window][inside] = 0
                if layer.metal:
                    metal_points.append((win_phys[inside].mean(0), layer.streak))
            if metal_points:
                img += self._streaks(pts_phys, metal_points)
            noise = rng.normal(0.0, noise_sigma, (ny, nx)).astype(np.float32)
            noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, (1, 1), (0, 1))) / 2
            body = img > -900
            img = np.where(body, img + self.hu_offset + noise, img + noise * 0.3)
            ct[k] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
            lab[k] = label
        params = dict(self.params, spacing=list(geometry.spacing), shape_zyx=[nz, ny, nx],
                      direction=list(geometry.direction))
        return Phantom(Volume(ct, geometry), Volume(lab, geometry), params)

    def _streaks(self, pts, metal_points) -> np.ndarray:
        """Metal artefacts: bright/dark rays from each metal piece, dark bands between pieces."""
        amp = self.params["streak_hu"]
        out = np.zeros(pts.shape[:2], np.float32)
        plane_pts = pts[..., :2]
        for m, (n_rays, n_mod, phase) in metal_points:
            rel = plane_pts - m[:2]
            r = np.sqrt((rel**2).sum(-1)) + 1.0
            phi = np.arctan2(rel[..., 1], rel[..., 0])
            rays = np.cos(n_rays * phi + phase) * np.cos(n_mod * phi)
            out += amp * 0.5 * rays / (1.0 + r / 25.0)
        for a in range(len(metal_points)):
            for b in range(a + 1, len(metal_points)):
                p0, p1 = metal_points[a][0][:2], metal_points[b][0][:2]
                seg = p1 - p0
                length = np.linalg.norm(seg)
                if length < 1:
                    continue
                t = np.clip(((plane_pts - p0) @ seg) / (seg @ seg), 0, 1)
                dist = np.sqrt(((plane_pts - (p0 + t[..., None] * seg)) ** 2).sum(-1))
                out -= 0.5 * amp * np.exp(-(dist**2) / (2 * 4.0**2))
        return out


def _min_radius(shape) -> float:
    if hasattr(shape, "inner"):  # a moved or deformed shape (fractions_phantom.Moved)
        return _min_radius(shape.inner)
    if isinstance(shape, Blob):
        return float(shape.radii.min())
    if isinstance(shape, Tube):
        return float(shape.radius)
    return float(shape.minor)


def _frame_from_axis(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is ``axis`` and first column is as close to +x as possible."""
    z = axis / np.linalg.norm(axis)
    x = np.array([1.0, 0.0, 0.0]) - z[0] * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _elliptic_cylinder(rng, center, rx, ry, length) -> Blob:
    return Blob.make(rng, center, [rx, ry, length / 2], bumps=3, bump_amp=0.04)


def make_phantom(seed: int = 0, matrix: int | None = None, slice_mm: float | None = None,
                 z_extent_mm: float | None = None, direction=None, applicator: str | None = "auto") -> Phantom:
    """One randomised brachytherapy CT phantom.

    Args:
        seed: Everything (anatomy, applicator, intensities, noise, grid) follows from it.
        matrix: In-plane matrix (default: random among 256, 384, 512).
        slice_mm: Slice thickness/spacing in mm (default: random 1-3 mm).
        z_extent_mm: Scan length in mm (default: random 120-200 mm, centred near the CTV).
        direction: Optional 3x3 direction matrix (oblique or flipped acquisitions).
        applicator: "auto" (the seed decides, as always), "metal", "plastic" or None (no applicator
            and no packing: a pelvis without applicator). The random draws are the same whatever
            the choice, so a seed keeps its anatomy.
    """
    anatomy = PhantomAnatomy(seed, applicator)
    geometry, shape = anatomy.default_grid(matrix, slice_mm, z_extent_mm, direction)
    return anatomy.sample(geometry, shape)
