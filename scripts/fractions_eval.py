"""Fractions (issue 14): mean Dice of the propagated prior, the network and the fusion on phantom pairs.

    python scripts/fractions_eval.py [--pairs 20] [--matrix 256] [--cache DIR] [--build-only --seeds ...]

Pairs are fraction 1 -> 2 of phantom seeds 1..N (calibration uses other seeds: 1001..). Writes
docs/fractions_table.md, docs/fractions_dice.png and, with --timing, the timing on a 512 x 512 x 120 pair.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MnetImSegment"))

from MnetImSegmentLib.engine.fractions import FUSION_SIGMA_MM, FUSION_WEIGHT  # noqa: E402
from MnetImSegmentLib.research.fractions_eval import build_pair, score_pair  # noqa: E402


def segmenter():
    from MnetImSegmentLib.engine.inference import Segmenter

    return Segmenter(None, device="cpu")


def timing(threads: int = 2) -> dict:
    """Registration + fusion on a 512 x 512 x 120 phantom pair (network excluded: it runs anyway)."""
    import SimpleITK as sitk

    from MnetImSegmentLib.core.volume import Volume
    from MnetImSegmentLib.engine.fractions import fuse, propagate_prior
    from MnetImSegmentLib.research.fractions_phantom import make_fraction_series

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    first, second = make_fraction_series(3, 2, matrix=512, slice_mm=1.25, z_extent_mm=150)
    ct = second.phantom.ct
    prob = np.zeros(ct.shape, np.float32)  # a network-like map: the truth, softened
    prob[second.phantom.mask().array > 0] = 0.8
    t0 = time.perf_counter()
    prop = propagate_prior(first.phantom.ct, first.phantom.mask(), ct, first.anchors, second.anchors)
    t1 = time.perf_counter()
    fuse(Volume(prob, ct.geometry), prop.mask, 0.5)
    t2 = time.perf_counter()
    return {"shape_zyx": list(ct.shape), "registration_resampling_s": round(t1 - t0, 3),
            "fusion_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3), "threads": threads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--cache", default=os.environ.get("MNETIM_FRACTIONS_CACHE", "/tmp/mnetim_fraction_pairs"))
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    seeds = list(range(args.first_seed, args.first_seed + args.pairs))
    seg = segmenter()
    pairs = []
    for s in seeds:
        pairs.append(build_pair(s, args.matrix, seg, args.cache))
        print(f"pair {s} ready", flush=True)
    if args.build_only:
        return 0
    rows = [score_pair(p, FUSION_WEIGHT, FUSION_SIGMA_MM) for p in pairs]
    table = {k: float(np.mean([r[k] for r in rows])) for k in ("prior", "network", "fused")}
    std = {k: float(np.std([r[k] for r in rows])) for k in ("prior", "network", "fused")}
    wins = sum(r["fused"] > max(r["prior"], r["network"]) for r in rows)
    out = Path(args.out)
    lines = ["| contour | mean Dice | sd |", "|---|---|---|"]
    lines += [f"| {name} | {table[k]:.3f} | {std[k]:.3f} |" for k, name in
              (("prior", "propagated prior alone"), ("network", "network alone (demo weights)"), ("fused", "fused"))]
    lines.append("")
    lines.append(f"{len(rows)} pairs (seeds {seeds[0]}-{seeds[-1]}, matrix {args.matrix}); fused better than both "
                 f"on {wins}/{len(rows)}; weight {FUSION_WEIGHT}, sigma {FUSION_SIGMA_MM} mm; registration "
                 f"{np.mean([float(p['registration_s']) for p in pairs]):.2f} s mean (shared CPU), applicator residual "
                 f"{np.nanmean([float(p['residual_mm']) for p in pairs]):.2f} mm mean.")
    lines.append("")
    lines.append("| seed | metal | prior | network | fused | Dice prior vs network | follows prior |")
    lines.append("|---|---|---|---|---|---|---|")
    for s, p, r in zip(seeds, pairs, rows):
        lines.append(f"| {s} | {'yes' if int(p['metal']) else 'no'} | {r['prior']:.3f} | {r['network']:.3f} | "
                     f"{r['fused']:.3f} | {r['agreement']:.3f} | {r['follows_prior']:.2f} |")
    if args.timing:
        t = timing()
        lines += ["", f"Timing, 512 x 512 x 120-class pair ({t['shape_zyx']}), {t['threads']} threads: registration + "
                  f"resampling {t['registration_resampling_s']} s, fusion {t['fusion_s']} s, total {t['total_s']} s."]
    (out / "fractions_table.md").write_text("\n".join(lines) + "\n")
    _figure(rows, seeds, out / "fractions_dice.png")
    print("\n".join(lines))
    return 0


def _figure(rows, seeds, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=110)
    ax = fig.add_subplot(1, 2, 1)
    x = np.arange(len(rows))
    for k, marker in (("prior", "s"), ("network", "o"), ("fused", "^")):
        ax.plot(x, [r[k] for r in rows], marker, label=k)
    ax.set_xticks(x, [str(s) for s in seeds], fontsize=6)
    ax.set_xlabel("phantom seed (fraction 1 -> 2)")
    ax.set_ylabel("Dice to fraction 2 truth")
    ax.legend(fontsize=7)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.boxplot([[r[k] for r in rows] for k in ("prior", "network", "fused")])
    ax2.set_xticks([1, 2, 3], ["prior", "network", "fused"])
    ax2.set_title("Dice, all pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
