"""How often the applicator localiser is on the tandem, per phantom style (the network's phantoms and seeds).

Usage::

    python scripts/localiser_survey.py -o out/localiser --styles v2 v3 v4 v5 v6 heldout --first 0 --count 40
    python scripts/localiser_survey.py -o out/localiser_blur --styles v2 v3 --count 24 --perturbation "blur 1px"
    python scripts/localiser_survey.py -o out/after --styles v2 v3 --count 24 --compare out/before/localiser_survey.json

Writes ``localiser_survey.json`` (every miss with its os and axis error, every fit's kind and
confidence) and ``localiser_survey.md``: on the tandem per style, and what the product does with the
fits (refused, or trusted on the tandem / elsewhere, by kind and full or partial confidence).
With ``--compare`` (a survey of the same phantoms by another version of the localiser), also
``localiser_compare.md``: the status counts of both and every phantom whose fit changed.
The work is in ``MnetImSegmentLib.research.localiser_survey``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MnetImSegment"))

from MnetImSegmentLib.research import localiser_survey as ls  # noqa: E402
from MnetImSegmentLib.research.generalisation import PERTURBATIONS  # noqa: E402
from MnetImSegmentLib.research.phantom_styles import STYLES  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    ap.add_argument("--first", type=int, default=0, help="first seed offset (the evaluation rows use 0-7)")
    ap.add_argument("--count", type=int, default=16, help="phantoms per style")
    ap.add_argument("--matrix", type=int, default=256)
    ap.add_argument("--perturbation", choices=PERTURBATIONS, default=None,
                    help="apply this perturbation of the generalisation table to every phantom")
    ap.add_argument("--compare", type=Path, default=None, metavar="SURVEY_JSON",
                    help="an earlier localiser_survey.json of the same phantoms: list every fit that changed")
    args = ap.parse_args(argv)
    before = None
    if args.compare is not None:
        try:
            before = json.loads(args.compare.read_text())
            ls.check_comparable(before, args.matrix, args.perturbation)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"error: cannot compare with {args.compare}: {e}", file=sys.stderr)
            return 2
    results = ls.survey(args.styles, args.first, args.count, args.matrix, log=lambda s: print(s, flush=True),
                        perturbation=args.perturbation)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "localiser_survey.json").write_text(json.dumps(results, indent=1))
    table = ls.markdown_table(results)
    (args.out / "localiser_survey.md").write_text(table + "\n")
    print(table)
    if before is not None:
        diff = ls.compare(before, results)
        text = ls.compare_table(diff)
        (args.out / "localiser_compare.md").write_text(text + "\n")
        print(f"\nCompared with {args.compare}:\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
