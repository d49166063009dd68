"""Distractors painted into a phantom: the things on a real pelvic CT that are not the applicator.

Research side (tests, evaluation): numpy only. Everything is placed in PHYSICAL space (LPS mm) from
the landmarks the phantom records in ``params`` (femoral heads, sacrum, body centre, the true os and
tandem axis), then painted onto the phantom's own voxel grid, whatever its spacing, origin or
direction, so a distractor is where it should be on oblique and flipped grids too.

Kinds (``KINDS``):

* ``hip_left``, ``hip_right``, ``hip_both``: total hip prosthesis (acetabular cup, polyethylene
  liner, femoral head, neck and stem; cobalt-chrome / titanium at the scanner's 3071 HU ceiling)
  with metal streaks in the style of the applicator's (rays per part, dark bands between parts,
  including towards a metal tandem);
* ``spinal_screws``: pedicle screws (run front to back) in two or three sacral/lumbar levels and
  the two rods joining them (long, thin, cranio-caudal metal: the hard case);
* ``clips``: surgical clips on the pelvic side walls; ``fiducials``: gold seeds in the cervix;
* ``contrast_bladder``: contrast layering in the dependent part of the bladder (200-1500 HU);
* ``contrast_bowel``: contrast-filled small-bowel loops above the uterus (and sometimes the rectum);
* ``calcifications``: phleboliths on the side walls, iliac artery plaques, a calcified fibroid;
* ``table``: the couch below the patient (carbon shell, foam core, metal rails).

A phantom without applicator is ``phantom.make_phantom(..., applicator=None)``.
"""

from __future__ import annotations

import numpy as np

from .phantom import Blob, Phantom, PhantomAnatomy, Tube, _min_radius, rotation_matrix
from ..core.volume import Geometry, Volume

KINDS = ("hip_left", "hip_right", "hip_both", "spinal_screws", "clips", "fiducials", "contrast_bladder",
         "contrast_bowel", "calcifications", "table")
METAL = 3071.0


class _Canvas:
    """The phantom's CT as float, with painting of analytic shapes given in physical space."""

    def __init__(self, phantom: Phantom, rng: np.random.Generator):
        self.geom = phantom.ct.geometry
        self.img = phantom.ct.array.astype(np.float32)
        self.labels = phantom.labels.array
        self.rng = rng
        self.noise = float(phantom.params.get("noise_hu", 10.0))
        self.metal: list[tuple[object, tuple]] = []  # painted metal parts and their streak patterns

    def box(self, lo, hi):
        """Numpy slices of the grid box that holds the physical box [lo, hi] (None: off the grid)."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.geom.physical_to_index(corners)[:, ::-1]  # numpy (z, y, x)
        shape = np.array(self.img.shape)
        lo_i = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, shape)
        hi_i = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 0, shape)
        if np.any(hi_i <= lo_i):
            return None
        return tuple(slice(a, b) for a, b in zip(lo_i, hi_i))

    def points(self, box) -> np.ndarray:
        kk, jj, ii = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
        return self.geom.index_to_physical(np.stack([ii, jj, kk], -1)).astype(np.float32)

    def paint(self, shape, hu: float, edge_mm: float = 0.5, metal: bool = False, noise: bool = True,
              streak_amp: float = 0.0, keep=None):
        """Paint ``shape`` (physical) at ``hu``; ``keep(points) -> bool mask`` protects voxels."""
        box = self.box(*_bounds(shape))
        if box is None:
            return
        pts = self.points(box)
        level = shape.level(pts)
        r_min = shape.radius if isinstance(shape, _Slab) else _min_radius(shape)
        alpha = np.clip((1.0 - level) * (r_min / max(edge_mm, 1e-3)) + 0.5, 0.0, 1.0)
        if keep is not None:
            alpha[keep(pts)] = 0.0
        if not alpha.any():
            return
        sub = self.img[box]
        value = np.full(sub.shape, hu, np.float32)
        if noise and not metal:
            value += self.rng.normal(0.0, self.noise, sub.shape).astype(np.float32)
        sub += alpha * (value - sub)
        if metal and streak_amp > 0:
            pattern = (int(self.rng.integers(6, 14)), int(self.rng.integers(3, 7)),
                       float(self.rng.uniform(0, 2 * np.pi)), streak_amp)
            self.metal.append((shape, pattern))

    def streaks(self, tandem_line=None):
        """Rays from every painted metal part, dark bands between parts (and to a metal tandem)."""
        per_slice: dict[int, list] = {}
        for shape, (n_rays, n_mod, phase, amp) in self.metal:
            box = self.box(*_bounds(shape))
            if box is None:
                continue
            pts = self.points(box)
            inside = shape.level(pts) < 1.0
            for kk in np.flatnonzero(inside.any(axis=(1, 2))):
                m = pts[kk][inside[kk]].mean(0)[:2]
                per_slice.setdefault(box[0].start + int(kk), []).append((m, n_rays, n_mod, phase, amp))
        if not per_slice:
            return
        nz, ny, nx = self.img.shape
        jj, ii = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        for k, found in per_slice.items():
            plane = self.geom.index_to_physical(np.stack([ii, jj, np.full_like(ii, k)], -1)).astype(np.float32)
            z_mid = float(plane[ny // 2, nx // 2, 2])
            xy = plane[..., :2]
            out = np.zeros((ny, nx), np.float32)
            for m, n_rays, n_mod, phase, amp in found:
                rel = xy - m
                r = np.sqrt((rel ** 2).sum(-1)) + 1.0
                phi = np.arctan2(rel[..., 1], rel[..., 0])
                out += amp * 0.5 * np.cos(n_rays * phi + phase) * np.cos(n_mod * phi) / (1.0 + r / 25.0)
            centres = [(f[0], f[4]) for f in found]
            if tandem_line is not None:
                p = _line_at_z(tandem_line, z_mid)
                if p is not None:
                    centres.append((p[:2], min(f[4] for f in found)))
            for a in range(len(centres)):
                for b in range(a + 1, len(centres)):
                    p0, p1 = centres[a][0], centres[b][0]
                    seg = p1 - p0
                    if np.linalg.norm(seg) < 1:
                        continue
                    t = np.clip(((xy - p0) @ seg) / (seg @ seg), 0, 1)
                    dist = np.sqrt(((xy - (p0 + t[..., None] * seg)) ** 2).sum(-1))
                    out -= 0.5 * min(centres[a][1], centres[b][1]) * np.exp(-(dist ** 2) / (2 * 4.0 ** 2))
            self.img[k] += out


class _Slab:
    """The couch: a box infinite along S, ``level`` < 1 inside (x within hx, y within hy)."""

    def __init__(self, center, hx, hy, z_range):
        self.center, self.hx, self.hy, self.z_range = np.asarray(center, float), hx, hy, z_range
        self.radius = min(hx, hy)

    def bounding_radius(self) -> float:
        return float(max(self.hx, self.hy))

    def level(self, pts):
        rel = pts - self.center
        return np.maximum(np.abs(rel[..., 0]) / self.hx, np.abs(rel[..., 1]) / self.hy)

    def bounds(self):
        lo = np.array([self.center[0] - self.hx, self.center[1] - self.hy, self.z_range[0]])
        hi = np.array([self.center[0] + self.hx, self.center[1] + self.hy, self.z_range[1]])
        return lo, hi


def _bounds(shape):
    """(min corner, max corner) of a shape's physical bounding box."""
    if hasattr(shape, "bounds"):
        return shape.bounds()
    if isinstance(shape, Tube):  # a long thin rod: its own box, not the sphere around it
        return np.minimum(shape.p0, shape.p1) - shape.radius, np.maximum(shape.p0, shape.p1) + shape.radius
    c, r = np.asarray(shape.center, float), shape.bounding_radius()
    return c - r, c + r


def _line_at_z(line, z: float):
    """Point of the tandem segment (p0, p1) at height z, or None outside it."""
    p0, p1 = line
    if abs(p1[2] - p0[2]) < 1e-6:
        return None
    t = (z - p0[2]) / (p1[2] - p0[2])
    return None if not 0 <= t <= 1 else p0 + t * (p1 - p0)


def _sphere(center, r) -> Blob:
    return Blob(np.asarray(center, float), np.array([r, r, r], float), np.eye(3), np.zeros((0, 3)), np.zeros(0))


def _tandem(params: dict):
    """The tandem as a physical segment (os - 90 mm .. tip) when the phantom has one."""
    if "applicator_os_lps" not in params:
        return None
    os_, tip = np.asarray(params["applicator_os_lps"]), np.asarray(params["applicator_tip_lps"])
    axis = np.asarray(params["applicator_axis_lps"])
    return os_ - 90 * axis, tip


def _near_tandem(params: dict, margin_mm: float):
    """A ``keep`` mask function: voxels within the tandem radius + margin stay as they are."""
    line = _tandem(params)
    if line is None:
        return None
    tube = Tube(line[0], line[1], 3.5 + margin_mm)
    return lambda pts: tube.level(pts) < 1.0


def _body(params):
    c = np.asarray(params.get("body_center_lps", [0.0, 0.0, 0.0]), float)
    return c, float(params.get("body_width_mm", 300)) / 2, float(params.get("body_depth_mm", 220)) / 2


def _os(params) -> np.ndarray:
    return np.asarray(params.get("applicator_os_lps", params.get("cervix_os_lps", [0.0, 0.0, -12.0])), float)


def _hip(cv: _Canvas, params: dict, side: int):
    """side +1: patient's left (+x in LPS), -1: right."""
    heads = params["femoral_heads_lps"]
    h = np.asarray(max(heads, key=lambda p: side * p[0]), float)
    u = cv.rng.uniform
    amp = u(150, 400)
    r_head = u(14, 16)
    cv.paint(_sphere(h, r_head + u(5, 7)), METAL, metal=True, streak_amp=amp)  # acetabular cup
    cv.paint(_sphere(h, r_head + 1.5), u(-100, -60), noise=True)  # polyethylene liner
    cv.paint(_sphere(h, r_head), METAL, metal=True, streak_amp=amp)  # femoral head
    neck_end = h + np.array([side * u(30, 40), u(-5, 5), -u(25, 35)])
    cv.paint(Tube(h, neck_end, u(6, 8)), METAL, metal=True, streak_amp=amp)
    stem_end = neck_end + np.array([side * u(0, 10), u(0, 10), -u(120, 150)])
    cv.paint(Tube(neck_end, stem_end, u(6, 8)), METAL, metal=True, streak_amp=amp)


def _spine(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    sac = np.asarray(params["sacrum_center_lps"], float)
    bc, _, ry = _body(params)
    y_back = min(sac[1] + 20.0, bc[1] + ry - 12.0)  # screw heads / rods: behind the sacrum, under the skin
    n = int(cv.rng.integers(2, 4))
    zs = sac[2] + u(-15, 5) + 32.0 * np.arange(n)
    amp = u(80, 200)
    for sx in (-1, 1):
        x = sx * u(18, 26)
        for z in zs:
            head = np.array([x, y_back, z])
            d = np.array([-sx * np.tan(np.radians(u(10, 20))), -1.0, u(-0.1, 0.1)])
            cv.paint(Tube(head, head + 45.0 * d / np.linalg.norm(d), 3.2), METAL, metal=True, streak_amp=amp)
        cv.paint(Tube(np.array([x, y_back + 3, zs[0] - 12]), np.array([x, y_back + 3, zs[-1] + 12]), 2.8), METAL,
                 metal=True, streak_amp=amp)


def _small_metal(cv: _Canvas, centers, radius, length, amp):
    for c in centers:
        d = cv.rng.normal(size=3)
        d /= np.linalg.norm(d)
        cv.paint(Tube(c - d * length / 2, c + d * length / 2, radius), METAL, metal=True, streak_amp=amp)


def _clips(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    bc, _, _ = _body(params)
    o = _os(params)
    n = int(cv.rng.integers(4, 9))
    centers = [np.array([cv.rng.choice([-1, 1]) * u(35, 70), bc[1] + u(-30, 40), o[2] + u(-30, 50)]) for _ in range(n)]
    _small_metal(cv, centers, 1.3, u(5, 9), u(30, 80))


def _fiducials(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    o = _os(params)
    axis = np.asarray(params.get("applicator_axis_lps", [0.0, 0.0, 1.0]), float)
    centers = []
    for _ in range(3):  # gold seeds in the cervix, around the canal the tandem runs in
        ang = u(0, 2 * np.pi)
        radial = rotation_matrix(0, 0, np.degrees(ang)) @ np.array([1.0, 0.0, 0.0])
        radial -= (radial @ axis) * axis
        centers.append(o + axis * u(-5, 25) + radial / np.linalg.norm(radial) * u(9, 18))
    _small_metal(cv, centers, u(1.0, 1.3), u(3, 5), u(30, 80))


def _contrast_bladder(cv: _Canvas, params: dict):
    bladder = cv.labels == 2
    if not bladder.any():
        return
    idx = np.argwhere(bladder)
    pts = cv.geom.index_to_physical(idx[:, ::-1].astype(float))
    # Contrast is denser than urine: it layers in the dependent (posterior, +y) part, supine patient.
    level = np.quantile(pts[:, 1], cv.rng.uniform(0.0, 0.6))
    sel = pts[:, 1] >= level
    keep = _near_tandem(params, 1.5)
    if keep is not None:
        sel &= ~keep(pts)
    hu = cv.rng.uniform(200, 1500)
    target = tuple(idx[sel].T)
    cv.img[target] = hu + cv.rng.normal(0, cv.noise, int(sel.sum()))


def _contrast_bowel(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    bc, rx, _ = _body(params)
    o = _os(params)
    keep = _near_tandem(params, 6.0)
    for _ in range(int(cv.rng.integers(2, 5))):  # small-bowel loops above the uterus
        p = np.array([cv.rng.choice([-1, 1]) * u(20, 70), bc[1] + u(-60, 10), o[2] + u(40, 80)])
        r = u(10, 15)
        hu = u(200, 1500)
        for _ in range(int(cv.rng.integers(3, 6))):
            step = cv.rng.normal(size=3)
            step *= u(20, 35) / np.linalg.norm(step)
            q = p + step
            q[0] = np.clip(q[0], -0.6 * rx, 0.6 * rx)
            cv.paint(Tube(p, q, r), hu, edge_mm=1.0, keep=keep)
            if cv.rng.random() < 0.3:
                cv.paint(_sphere(q + cv.rng.normal(0, 3, 3), r * 0.4), -900.0, keep=keep)  # gas bubble
            p = q
    if cv.rng.random() < 0.5:  # rectal contrast
        rect = cv.labels == 3
        idx = np.argwhere(rect & (cv.img > -500))
        cv.img[tuple(idx.T)] = u(200, 800) + cv.rng.normal(0, cv.noise, len(idx))


def _calcifications(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    bc, _, _ = _body(params)
    o = _os(params)
    axis = np.asarray(params.get("applicator_axis_lps", [0.0, 0.0, 1.0]), float)
    centers = []
    for _ in range(int(cv.rng.integers(3, 7))):  # phleboliths on the pelvic side walls
        centers.append(np.array([cv.rng.choice([-1, 1]) * u(40, 65), bc[1] + u(-10, 40), o[2] + u(-35, 10)]))
    for sx in (-1, 1):  # iliac artery plaques: a few along each vessel
        start = np.array([sx * u(30, 45), bc[1] + u(0, 30), o[2] + u(40, 70)])
        for k in range(int(cv.rng.integers(1, 4))):
            centers.append(start + np.array([sx * 4.0 * k, 2.0 * k, -12.0 * k]))
    fibroid = o + axis * u(35, 55) + np.array([cv.rng.choice([-1, 1]) * u(20, 30), 0, 0])  # calcified fibroid
    cv.paint(_sphere(fibroid, u(5, 8)), u(300, 900), edge_mm=1.0)
    for c in centers:
        cv.paint(_sphere(c, u(1.5, 4.0)), u(300, 1000), edge_mm=0.7)


def _table(cv: _Canvas, params: dict):
    u = cv.rng.uniform
    bc, rx, ry = _body(params)
    thick = u(40, 60)
    top = bc[1] + ry + u(0, 8)  # the couch surface, just behind the patient's back (+y = posterior)
    z0, z1 = _z_range(cv)
    center = np.array([bc[0], top + thick / 2, 0.0])
    cv.paint(_Slab(center, rx * 1.6, thick / 2, (z0 - 5, z1 + 5)), u(150, 400), edge_mm=0.5)  # carbon shell
    cv.paint(_Slab(center, rx * 1.6 - 3, thick / 2 - 3, (z0 - 5, z1 + 5)), u(-900, -800), edge_mm=0.5)  # foam
    for sx in (-1, 1):  # metal rails running the length of the couch (their streaks are left out)
        x = bc[0] + sx * rx * u(0.55, 0.8)
        cv.paint(Tube(np.array([x, center[1], z0 - 20]), np.array([x, center[1], z1 + 20]), u(4, 6)), u(2500, METAL),
                 metal=True)


def _z_range(cv: _Canvas):
    nz, ny, nx = cv.img.shape
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    z = cv.geom.index_to_physical(corners)[:, 2]
    return float(z.min()), float(z.max())


_PAINTERS = {
    "spinal_screws": _spine, "clips": _clips, "fiducials": _fiducials, "contrast_bladder": _contrast_bladder,
    "contrast_bowel": _contrast_bowel, "calcifications": _calcifications, "table": _table,
}


def add_distractors(phantom: Phantom, kinds, rng: np.random.Generator) -> Phantom:
    """A copy of ``phantom`` with the given distractors painted in (see the module docstring).

    Args:
        phantom: From :func:`phantom.make_phantom` (any grid).
        kinds: Names from ``KINDS`` (a string or a sequence).
        rng: Randomness for sizes, positions, HU and streaks.

    Returns:
        A new :class:`Phantom`: same labels, CT with the distractors, ``params["distractors"]``.
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown distractor kind(s) {unknown}; known: {', '.join(KINDS)}")
    cv = _Canvas(phantom, rng)
    # Contrast first (it replaces tissue), then solid things, then metal and its streaks.
    order = sorted(kinds, key=lambda k: (k not in ("contrast_bladder", "contrast_bowel"), k.startswith("hip")))
    for kind in order:
        if kind.startswith("hip"):
            sides = {"hip_left": (1,), "hip_right": (-1,), "hip_both": (-1, 1)}[kind]
            for side in sides:
                _hip(cv, phantom.params, side)
        else:
            _PAINTERS[kind](cv, phantom.params)
    metal_tandem = _tandem(phantom.params) if phantom.params.get("applicator_metal") else None
    cv.streaks(metal_tandem)
    ct = np.clip(np.rint(cv.img), -1024, 3071).astype(np.int16)
    params = dict(phantom.params, distractors=list(kinds))
    return Phantom(Volume(ct, phantom.ct.geometry), phantom.labels, params)


def pelvis_phantom(seed: int, applicator="auto", matrix: int = 192, slice_mm: float = 2.5,
                   below_os_mm: float = 85.0, above_os_mm: float = 75.0, direction=None) -> Phantom:
    """A phantom whose scan runs from ``below_os_mm`` under the cervical os (femoral heads included,
    where hip prostheses sit) to ``above_os_mm`` over it; any direction (the box follows it)."""
    anatomy = PhantomAnatomy(seed, applicator)
    os_ = np.asarray(anatomy.params["cervix_os_lps"], float)
    geom, (nz, ny, nx) = anatomy.default_grid(matrix, slice_mm, below_os_mm + above_os_mm, direction)
    d = geom.direction_matrix
    size = np.array([nx, ny, nz], float)
    centre = np.asarray(geom.origin) + d @ (np.asarray(geom.spacing) * (size - 1) / 2)
    centre[2] = os_[2] + (above_os_mm - below_os_mm) / 2
    origin = centre - d @ (np.asarray(geom.spacing) * (size - 1) / 2)
    return anatomy.sample(Geometry(geom.spacing, origin, geom.direction), (nz, ny, nx))
