"""Re-derive MnetImSegmentLib/research/phantom_templates.json from the two real brachytherapy structure sets.

The table holds only measurements (centroid offsets from the external os, principal axes, volumes,
16 spherical-harmonic coefficients of each structure's radial function, the tandem axis, ovoid
and needle tip offsets) of the public pyTG43 example structure sets RS.PDR.dcm and RS.rotated.dcm,
which the project may read from ../shared/data but never commits.

Usage: python scripts/derive_phantom_templates.py [FOLDER] [-o OUTPUT.json]
(FOLDER default: ../shared/data/real-rt-samples/brachy-cervix-rtstruct next to the repository).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MnetImSegment"))

from MnetImSegmentLib.research.phantom_templates import TEMPLATE_FILE, fit_structure  # noqa: E402
from MnetImSegmentLib.dicomrt.rasterize import grid_from_contours, rasterize_rois  # noqa: E402
from MnetImSegmentLib.dicomrt.structure_set import read_structure_set  # noqa: E402

NAMES = {"CTV": r"^(hr-?)?ctv$", "bladder": r"^bladder$", "rectum": r"^rectum$", "sigmoid": r"^sigmoid$"}
SOURCES = {"RS.PDR.dcm": "pyTG43 example RS.PDR.dcm (tandem + ovoids, Varian)",
           "RS.rotated.dcm": "pyTG43 example RS.rotated.dcm (tandem + ovoid + 4 needles, HR-CTV)"}


def _path(roi) -> np.ndarray:
    return np.concatenate([c.points for c in roi.contours])


def measure(path: Path) -> dict:
    ss = read_structure_set(path)
    by_name = {r.name.strip().lower(): r for r in ss.rois}
    tandem = _path(by_name["tandem"])
    ovoids = [_path(r) for n, r in by_name.items() if re.fullmatch(r"(left|right) ovoid", n)]
    needles = [_path(r) for n, r in by_name.items() if n.startswith("applicator")]
    # External os: where the ovoids' superior ends meet the tandem (the flange sits there).
    ovoid_tips = np.array([o[np.argmax(o[:, 2])] for o in ovoids])
    target = ovoid_tips.mean(0)
    os_point = tandem[np.argmin(((tandem - target) ** 2).sum(1))]
    tip = tandem[np.argmax(tandem[:, 2])]
    axis = (tip - os_point) / np.linalg.norm(tip - os_point)
    entry = {"source": SOURCES.get(path.name, path.name),
             "tandem_axis": [round(float(v), 4) for v in axis],
             "tandem_length_above_os_mm": round(float(np.linalg.norm(tip - os_point)), 1),
             "ovoid_tips_mm": [[round(float(v), 1) for v in t - os_point] for t in ovoid_tips],
             "needle_tips_mm": [[round(float(v), 1) for v in n[np.argmax(n[:, 2])] - os_point] for n in needles],
             "structures": {}}
    for name, pattern in NAMES.items():
        rois = [r for n, r in by_name.items() if re.fullmatch(pattern, n) and r.closed_contours]
        if not rois:
            continue
        geom, shape = grid_from_contours(rois, spacing_mm=1.0, align_to_contours=False)
        mask, _ = rasterize_rois(rois, geom, shape, max_spread_mm=10.0, check_self_intersection=False)
        k, j, i = np.nonzero(mask)
        pts = geom.index_to_physical(np.stack([i, j, k], 1).astype(float))
        entry["structures"][name] = fit_structure(pts, os_point, float(np.prod(geom.spacing)) / 1000.0)
    return entry


def _default_folder() -> Path:
    """../shared next to the clone (or next to the folder of worktrees)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        folder = base / "shared/data/real-rt-samples/brachy-cervix-rtstruct"
        if folder.is_dir():
            return folder
    return ROOT.parent / "shared/data/real-rt-samples/brachy-cervix-rtstruct"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(_default_folder()))
    p.add_argument("-o", "--output", default=str(TEMPLATE_FILE))
    args = p.parse_args(argv)
    folder = Path(args.folder)
    files = [folder / n for n in SOURCES if (folder / n).is_file()]
    if not files:
        print(f"no structure sets in {folder}", file=sys.stderr)
        return 1
    table = {"note": "Measurements (not contours) of the public pyTG43 example cervix brachytherapy structure sets; "
                     "re-derive with scripts/derive_phantom_templates.py. Offsets in LPS mm from the external os; "
                     "axes_mm columns = principal directions x 2 SD; sh = real spherical harmonics (degree <= 3) "
                     "of the radial function in the whitened frame.",
             "templates": [measure(f) for f in files]}
    Path(args.output).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    for t in table["templates"]:
        print(t["source"], {k: v["volume_ml"] for k, v in t["structures"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
