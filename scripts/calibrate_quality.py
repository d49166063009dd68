"""Calibrate and check the trust thresholds of ``engine/quality.py`` (issue 12); prints the table.

Scope checks (no network) on held-out phantoms of several styles -- the v2 generator with and
without distractors, metal and plastic applicators, on the default and a 192 px pelvis grid -- and
on out-of-scope cases (chest, head, water cylinder, MR-like, pelvis without applicator, hip
prosthesis without applicator). With ``--network N`` the first N in-scope phantoms are also
segmented (the demo weights, or ``--weights DIR``) and the result checks are counted.

    PYTHONPATH=MnetImSegment python scripts/calibrate_quality.py --n 14 --network 7
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from MnetImSegmentLib.core.errors import InputError
from MnetImSegmentLib.engine.inference import check_ct
from MnetImSegmentLib.engine.quality import QualitySpec, check_scope
from MnetImSegmentLib.research.distractors import KINDS as DISTRACTORS, add_distractors, pelvis_phantom
from MnetImSegmentLib.research.metrics import volumetric_dice
from MnetImSegmentLib.research.phantom import make_phantom
from MnetImSegmentLib.research.phantom_styles import make_phantom_style
from MnetImSegmentLib.research.scope_phantoms import make_scope_case

SEED0 = 900_000  # held out: the demo weights were trained on small seeds
FIELDS = ("air_hu", "fat_hu", "soft_tissue_hu", "fat_fraction", "soft_tissue_fraction", "lung_fraction",
          "body_width_mm", "applicator_confidence")


def in_scope(i: int):
    """Phantom i of the held-out set: seven styles in turn (v3, v4 and the held-out generator from phantom_styles)."""
    seed = SEED0 + i
    style = i % 7
    if style >= 4:
        name = ("v3", "v4", "heldout")[style - 4]
        return name, make_phantom_style(name, seed, matrix=192)
    rng = np.random.default_rng(seed)
    if style == 0:
        return "v2", make_phantom(seed, matrix=192)
    if style == 1:
        return "v2+distractors", add_distractors(pelvis_phantom(seed), list(rng.choice(DISTRACTORS, 3, replace=False)), rng)
    if style == 2:
        return "v2 plastic+table", add_distractors(pelvis_phantom(seed, applicator="plastic"), ["table"], rng)
    return "v2 metal+hip", add_distractors(pelvis_phantom(seed, applicator="metal"), ["hip_left"], rng)


def out_of_scope(i: int):
    seed = SEED0 + 500 + i
    kinds = ("chest", "head", "water", "mr_like", "no_applicator", "hip_only")
    kind = kinds[i % len(kinds)]
    if kind == "no_applicator":
        return kind, make_phantom(seed, matrix=192, applicator=None).ct
    if kind == "hip_only":
        rng = np.random.default_rng(seed)
        return kind, add_distractors(pelvis_phantom(seed, applicator=None), ["hip_both"], rng).ct
    return kind, make_scope_case(kind, seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="in-scope phantoms (and as many out-of-scope cases)")
    p.add_argument("--network", type=int, default=0, help="segment this many in-scope phantoms")
    p.add_argument("--weights", default=None, help="weights folder for --network (default: the shipped demo weights)")
    args = p.parse_args()
    spec = QualitySpec()
    rows = []
    for i in range(args.n):
        style, ph = in_scope(i)
        rows.append(("in", style, check_scope(ph.ct, spec), ph))
    for i in range(args.n):
        kind, vol = out_of_scope(i)
        try:
            check_ct(vol)
            rep = check_scope(vol, spec)
        except InputError as exc:  # the basic CT check refuses first
            rep = type("R", (), {"refusals": [str(exc)], "values": {}})()
        rows.append(("out", kind, rep, None))
    print(f"{'set':4} {'style/kind':18} {'refused':7} " + " ".join(f"{f[:12]:>12}" for f in FIELDS) + "  reasons")
    for where, style, rep, _ in rows:
        vals = " ".join(f"{rep.values.get(f, float('nan')) if rep.values.get(f) is not None else float('nan'):12.3f}" for f in FIELDS)
        print(f"{where:4} {style:18} {str(bool(rep.refusals)):7} {vals}  {'; '.join(r[:40] for r in rep.refusals)}")
    ins = [r for r in rows if r[0] == "in"]
    outs = [r for r in rows if r[0] == "out"]
    print(f"\nin-scope refused: {sum(bool(r[2].refusals) for r in ins)}/{len(ins)}; "
          f"out-of-scope refused: {sum(bool(r[2].refusals) for r in outs)}/{len(outs)}")
    if args.network:
        from MnetImSegmentLib.engine.inference import Segmenter

        seg = Segmenter(args.weights, device="cpu")
        warned, dices = 0, []
        print(f"\n{'style':18} {'dice':>5} {'ml':>7} {'os_mm':>6} {'encl':>5} {'dis':>6} {'unc':>6} {'low':>4} {'atlas':>5} {'qual_s':>6} {'net_s':>6}  warnings")
        for _, style, rep, ph in ins[: args.network]:
            t = time.perf_counter()
            r = seg.segment(ph.ct, roi_center=None if not rep.refusals else rep.fit.os_lps or (0, 0, 0))
            q = r.quality
            warned += bool(r.warnings)
            dice = volumetric_dice(r.mask.array, ph.mask().array)
            dices.append((dice, bool(r.warnings)))
            print(f"{style:18} {dice:5.3f} {q['ctv_ml']:7.1f} {q.get('os_to_ctv_mm', float('nan')):6.1f} "
                  f"{q.get('tandem_enclosed', float('nan')):5.2f} {q['max_slice_disagreement']:6.3f} "
                  f"{q['max_slice_uncertain']:6.3f} {len(q['low_confidence_slices']):4d} "
                  f"{q['atlas_agreement'] if q.get('atlas_agreement') is not None else float('nan'):5.2f} {r.seconds['quality']:6.2f} "
                  f"{r.seconds['network']:6.2f}  {'; '.join(r.warnings)}")
        print(f"\nin-scope warned or refused after the network: {warned}/{args.network}")
        for flag in (False, True):
            d = [x for x, w in dices if w == flag]
            if d:
                print(f"{'warned' if flag else 'not warned'}: {len(d)} cases, Dice mean {np.mean(d):.3f}, min {np.min(d):.3f}")


if __name__ == "__main__":
    main()
