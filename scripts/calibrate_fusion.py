"""Calibrate the fusion of prior and network (FUSION_WEIGHT, FUSION_SIGMA_MM in engine/fractions.py).

    python scripts/calibrate_fusion.py [--pairs 8] [--first-seed 1001] [--matrix 256] [--cache DIR]

Grid search of the logit weight w and the distance scale sigma on phantom pairs whose seeds are
disjoint from the evaluation's (scripts/fractions_eval.py uses 1..20). Prints a markdown table of
mean fused Dice (and the prior's and network's for reference) and writes it to
docs/fractions_calibration.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MnetImSegment"))

from MnetImSegmentLib.research.fractions_eval import build_pair, score_pair  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
SIGMAS_MM = (3.0, 6.0, 10.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=1001)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--cache", default=os.environ.get("MNETIM_FRACTIONS_CACHE", "/tmp/mnetim_fraction_pairs"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "fractions_calibration.md"))
    args = ap.parse_args(argv)
    from MnetImSegmentLib.engine.inference import Segmenter

    seg = Segmenter(None, device="cpu")
    seeds = range(args.first_seed, args.first_seed + args.pairs)
    pairs = [build_pair(s, args.matrix, seg, args.cache) for s in seeds]
    base = [score_pair(p, 0.0, 1.0) for p in pairs]
    lines = [f"Calibration pairs: seeds {seeds[0]}-{seeds[-1]}, matrix {args.matrix}; prior alone "
             f"{np.mean([b['prior'] for b in base]):.3f}, network alone {np.mean([b['network'] for b in base]):.3f} "
             "(mean Dice). Mean fused Dice:", "",
             "| w \\ sigma (mm) | " + " | ".join(f"{s:g}" for s in SIGMAS_MM) + " |",
             "|---|" + "---|" * len(SIGMAS_MM)]
    best = (-1.0, None)
    for w in WEIGHTS:
        cells = []
        for s in SIGMAS_MM:
            d = float(np.mean([score_pair(p, w, s)["fused"] for p in pairs]))
            cells.append(f"{d:.3f}")
            if d > best[0]:
                best = (d, (w, s))
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Best: w = {best[1][0]:g}, sigma = {best[1][1]:g} mm (mean fused Dice {best[0]:.3f})."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
