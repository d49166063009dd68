"""How visible is each phantom's CTV edge? Boundary contrast-to-noise per generator style (issue 11).

A label the image does not show cannot be learnt. For each phantom: the median HU of the 3 mm shell
just inside the CTV and of the 3 mm ring just outside it (soft-tissue voxels, -300..400 HU, so metal
streaks and gas do not count), their difference, and that difference over the generator's noise SD
(``noise_hu``): the per-voxel boundary CNR. Run it on a new generator style before training on it.

    PYTHONPATH=MnetImSegment python scripts/ctv_boundary_contrast.py --styles v2 v3 heldout -n 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MnetImSegment"))

from MnetImSegmentLib.research.phantom_styles import make_phantom_style  # noqa: E402

SEED_BASE = {"v2": 600000, "v3": 610000, "v4": 620000, "v5": 630000, "v6": 640000, "heldout": 910000}  # away from training and evaluation seeds


def boundary_rings(mask: np.ndarray, spacing, mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(inner shell, outer ring) of ``mask`` (z, y, x), ``mm`` thick, on a grid of ``spacing`` (x, y, z)."""
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing])
    radius = [max(1, int(round(mm / s))) for s in spacing]
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(img, radius)) > 0
    dilated = sitk.GetArrayFromImage(sitk.BinaryDilate(img, radius)) > 0
    return mask & ~eroded, dilated & ~mask


def boundary_contrast(ph) -> dict:
    """Inside/outside medians, their difference and the CNR of one phantom's CTV edge."""
    ct, ctv = ph.ct.array, ph.labels.array == 1
    inner, outer = boundary_rings(ctv, ph.ct.geometry.spacing)
    tissue = (ct > -300) & (ct < 400)
    hu_in, hu_out = float(np.median(ct[inner & tissue])), float(np.median(ct[outer & tissue]))
    noise = float(ph.params.get("noise_hu", np.nan))
    return {"mode": ph.params.get("ctv_mode", "-"), "hu_in": hu_in, "hu_out": hu_out,
            "contrast_hu": abs(hu_in - hu_out), "noise_hu": noise, "cnr": abs(hu_in - hu_out) / noise,
            "ctv_ml": float(ctv.sum() * np.prod(ph.ct.geometry.spacing) / 1000)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="+", default=["v2", "v3", "heldout"])
    ap.add_argument("-n", type=int, default=4, help="phantoms per style")
    ap.add_argument("--matrix", type=int, default=192)
    args = ap.parse_args(argv)
    print("style    seed    mode      in HU  out HU  |d| HU  noise  CNR    CTV ml")
    for style in args.styles:
        cnrs = []
        for seed in range(SEED_BASE.get(style, 600000), SEED_BASE.get(style, 600000) + args.n):
            r = boundary_contrast(make_phantom_style(style, seed, matrix=args.matrix))
            cnrs.append(r["cnr"])
            print(f"{style:8} {seed:6d}  {r['mode']:8} {r['hu_in']:6.0f} {r['hu_out']:7.0f} {r['contrast_hu']:7.0f} "
                  f"{r['noise_hu']:6.0f} {r['cnr']:5.2f} {r['ctv_ml']:7.0f}", flush=True)
        print(f"{style}: CNR median {np.median(cnrs):.2f}, {sum(c < 1 for c in cnrs)}/{len(cnrs)} below 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
