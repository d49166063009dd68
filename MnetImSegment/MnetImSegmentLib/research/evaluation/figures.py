"""Figures: box plots of the metrics, best/worst overlays, and the demo's three-view overlay.

Every figure is a bare matplotlib ``Figure`` rendered with Agg: pyplot's global state (its backend)
is never touched, so drawing is safe inside Slicer or a notebook with another backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ...core.errors import DatasetError
from ...engine.io import read_image
from ..metrics import METRIC_DEFINITIONS, METRICS
from .cases import describe_grid
from .report import unit_of


# Soft-tissue window for the overlays (level 40 HU, width 400 HU).
_CT_WINDOW = (-160.0, 240.0)
_ORANGE = (1.0, 0.55, 0.0)
_GREEN = "#00e000"

@dataclass
class Snapshot:
    """What the overlay figure needs of one case: a window of its middle CTV slice."""

    z: int
    window: tuple[slice, slice]
    truth: np.ndarray
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    spacing_yx: tuple[float, float] = (1.0, 1.0)
    grid: Optional[tuple] = None  # (shape, Geometry) of the truth, to check the CT against



def middle_slice(truth: np.ndarray, spacing_zyx) -> Snapshot:
    """The middle slice of the CTV's extent and a window around it (CTV box plus a margin of 20 mm)."""
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    ys, xs = np.nonzero(truth[z])
    margin_y, margin_x = int(math.ceil(20.0 / sy)), int(math.ceil(20.0 / sx))
    window = (slice(max(0, ys.min() - margin_y), min(truth.shape[1], ys.max() + 1 + margin_y)),
              slice(max(0, xs.min() - margin_x), min(truth.shape[2], xs.max() + 1 + margin_x)))
    return Snapshot(z, window, truth[z][window].copy(), spacing_yx=(sy, sx))


def _new_figure(width_in: float, height_in: float):
    # A bare Figure renders with Agg and never touches pyplot's global state (safe inside Slicer or a
    # notebook with another backend).
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")


def boxplots(path: Path, rows, models, units, tolerance) -> None:
    fig = _new_figure(2.2 + 2.3 * len(METRICS) + 0.25 * len(models) * len(METRICS), 4.2)
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        data, means, notes = [], [], []
        for model in models:
            v = np.asarray([r[metric] for r in rows if r["model"] == model], float)
            finite = v[np.isfinite(v)]
            data.append(finite)
            means.append(finite.mean() if finite.size else np.nan)
            notes.append(int(v.size - finite.size))
        ax.boxplot(data, showfliers=True, widths=0.6, medianprops={"color": "black"},
                   flierprops={"marker": "+", "markeredgecolor": "0.35"})
        ax.plot(range(1, len(models) + 1), means, "o", color="red", markersize=5, zorder=3, label="mean")
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models, rotation=45 if len(models) > 2 else 0, ha="right" if len(models) > 2 else "center",
                           fontsize=8)
        d = METRIC_DEFINITIONS[metric]
        unit = unit_of(metric, units)
        ax.set_title(d["name"] + (f" ({unit})" if unit != "fraction" else ""), fontsize=10)
        for i, n in enumerate(notes):
            if n:
                ax.annotate(f"{n} inf", (i + 1, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                            fontsize=7, color="red")
        ax.grid(axis="y", alpha=0.3)
    tol_unit = "voxel" if units == "voxel" else "mm"
    fig.suptitle(f"Red dots: means. SO/SD at tau = {tolerance:g} {tol_unit}.", fontsize=9)
    fig.savefig(path)


def _ct_slice(path: Path, case: str, snap: Snapshot) -> np.ndarray:
    ct = read_image(path)
    shape, geometry = snap.grid
    if ct.shape != shape or not ct.geometry.allclose(geometry, atol=1e-3):
        raise DatasetError(f"Case '{case}': the CT grid ({describe_grid(ct.shape, ct.geometry)}) differs from the truth grid "
                           f"({describe_grid(shape, geometry)}); the overlay would be misregistered.")
    return ct.array[snap.z][snap.window].astype(np.float32)


def _draw_panel(ax, snap: Snapshot, pred: np.ndarray, image: Optional[np.ndarray], title: str) -> None:
    h, w = snap.truth.shape
    sy, sx = snap.spacing_yx
    extent = (0, w * sx, h * sy, 0)  # millimetres, so anisotropic pixels keep their true shape
    if image is not None:
        ax.imshow(image, cmap="gray", vmin=_CT_WINDOW[0], vmax=_CT_WINDOW[1], extent=extent, interpolation="nearest")
    else:
        ax.imshow(np.zeros((h, w)), cmap="gray", vmin=0, vmax=1, extent=extent)
    overlay = np.zeros((h, w, 4))
    overlay[pred] = (*_ORANGE, 0.6)
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    if snap.truth.any() and not snap.truth.all():
        # Contour through pixel centres: x = (i + 0.5) * sx, y = (j + 0.5) * sy.
        xs, ys = (np.arange(w) + 0.5) * sx, (np.arange(h) + 0.5) * sy
        ax.contour(xs, ys, snap.truth.astype(float), levels=[0.5], colors=[_GREEN], linewidths=1.3)
    ax.set_xlim(0, w * sx)
    ax.set_ylim(h * sy, 0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def best_worst_overlays(path: Path, worst, best, models, snapshots, rows, images) -> None:
    vd = {(r["model"], r["case_id"]): r["vd"] for r in rows}
    picked = worst + best
    ct = {case: _ct_slice(images[case], case, snapshots[case]) for case in picked if case in images}
    if len(models) == 1:
        # One model: the worst cases on the first row, the best on the second.
        model = models[0]
        ncols = max(len(worst), len(best), 1)
        nrows = 1 + bool(best)
        fig = _new_figure(2.3 * ncols, 2.5 * nrows + 0.3)
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        for r, group in enumerate([worst, best][:nrows]):
            for c in range(ncols):
                ax = axes[r, c]
                if c >= len(group):
                    ax.set_axis_off()
                    continue
                case = group[c]
                snap = snapshots[case]
                _draw_panel(ax, snap, snap.pred[model], ct.get(case), f"{case} (z {snap.z})\nDice {vd[(model, case)]:.3f}")
            axes[r, 0].set_ylabel("lowest Dice" if r == 0 else "highest Dice", fontsize=9)
    else:
        fig = _new_figure(2.1 * len(models) + 0.8, 2.2 * len(picked) + 0.3)
        axes = fig.subplots(len(picked), len(models), squeeze=False)
        for r, case in enumerate(picked):
            snap = snapshots[case]
            for c, model in enumerate(models):
                _draw_panel(axes[r, c], snap, snap.pred[model], ct.get(case),
                            (f"{model}\n" if r == 0 else "") + f"Dice {vd[(model, case)]:.3f}")
            axes[r, 0].set_ylabel(f"{case}\n{'low' if case in worst else 'high'}", fontsize=8)
    fig.suptitle("prediction: orange fill; truth: green contour" + ("" if ct else " (no CT given)"), fontsize=9)
    fig.savefig(path)


def render_overlay(ct: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, spacing_xyz, path: Path,
                   title: str = "") -> Path:
    """The demo's picture: axial / coronal / sagittal views through the CTV centre, in the array's own orientation.

    Prediction filled orange, truth outlined green, soft-tissue window -200..300 HU.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    ref = pred if pred.any() else (truth if truth is not None and truth.any() else None)
    if ref is not None:
        z, y, x = (int(round(c)) for c in np.argwhere(ref).mean(0))
    else:
        z, y, x = (s // 2 for s in ct.shape)
    sx, sy, sz = spacing_xyz
    views = [
        ("axial", ct[z], pred[z], None if truth is None else truth[z], sy / sx),
        ("coronal", ct[:, y, :], pred[:, y, :], None if truth is None else truth[:, y, :], sz / sx),
        ("sagittal", ct[:, :, x], pred[:, :, x], None if truth is None else truth[:, :, x], sz / sy),
    ]
    orange = ListedColormap(["#ff8c00"])
    fig = Figure(figsize=(15, 5.4))
    axes = fig.subplots(1, 3)
    for ax, (name, img, p, t, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=-200, vmax=300, aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_where(p == 0, p), cmap=orange, vmin=0, vmax=1, alpha=0.5, aspect=aspect,
                  interpolation="nearest")
        if t is not None and t.any():
            ax.contour(t.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        if name != "axial":
            ax.invert_yaxis()  # superior up
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title + "\norange: Mnet_Im prediction, green: phantom truth (synthetic data, not for clinical use)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
