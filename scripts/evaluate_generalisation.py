"""Dice of a weights folder on unseen phantom styles and on the perturbation table of issue 11.

Usage::

    python scripts/evaluate_generalisation.py model_weights/Mnet_Im_phantom_demo -o out/gen -n 3 --matrix 256

Writes ``generalisation.json`` and ``generalisation.md`` into the output folder; with ``--card-out
FILE`` also a copy of the weights' model card with the results under ``"generalisation"`` (the
shipped card is never changed). The work is in ``MnetImSegmentLib.research.generalisation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MnetImSegment"))

from MnetImSegmentLib.research import generalisation as gen  # noqa: E402
from MnetImSegmentLib.research.phantom_styles import TRAINING_STYLES  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("-n", type=int, default=3, help="phantoms per row")
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--perturb-style", default="v2", choices=TRAINING_STYLES)
    ap.add_argument("--rows", nargs="*", help="only these rows (style or perturbation names)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heldout-ablation", action="store_true",
                    help="instead: the held-out style as generated, without its streaks, with a visible CTV, and both")
    ap.add_argument("--visible-ctv", action="store_true",
                    help="instead: the training styles as made and with the CTV 60 HU brighter and darker "
                         "(does the network follow a CTV it can see?)")
    ap.add_argument("--card-out", type=Path, help="write the card with a 'generalisation' entry here")
    args = ap.parse_args(argv)
    if args.heldout_ablation or args.visible_ctv:
        ablation = gen.heldout_ablation if args.heldout_ablation else gen.visible_ctv_ablation
        results = ablation(args.weights, n=args.n, matrix=args.matrix, device=args.device,
                           log=lambda s: print(s, flush=True))
        gen.write_results(results, args.out)
        print(gen.markdown_table(results))
        return 0
    styles = [s for s in gen.STYLE_ROWS if not args.rows or s in args.rows]
    perts = [p for p in gen.PERTURBATIONS if not args.rows or p in args.rows]
    results = gen.evaluate_generalisation(args.weights, n=args.n, matrix=args.matrix, perturb_style=args.perturb_style,
                                          styles=styles, perturbations=perts, device=args.device,
                                          log=lambda s: print(s, flush=True))
    gen.write_results(results, args.out)
    print(gen.markdown_table(results))
    if args.card_out:
        card = json.loads((args.weights / "model.json").read_text())
        args.card_out.write_text(json.dumps(gen.add_to_card(card, results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
