"""Paired comparison of two generalisation evaluations (the same rows on the same seeds).

    python scripts/compare_candidates.py BASE CANDIDATE [--names 0.3.0 v9a]

BASE and CANDIDATE are each a ``generalisation.json``, a candidate JSON of ``docs/`` or the output
folder of ``scripts/evaluate_candidate.sh``. Prints, per row both measured, both means, the mean of the
per-phantom differences with its standard error, and on how many phantoms the candidate is better.
"""

from __future__ import annotations

import argparse
import sys

from MnetImSegmentLib.research import generalisation as gen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("candidate")
    ap.add_argument("--names", nargs=2, default=("base", "candidate"), metavar=("BASE", "CANDIDATE"))
    args = ap.parse_args(argv)
    try:
        rows = gen.paired_comparison(gen.read_results(args.base), gen.read_results(args.candidate))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("error: the two evaluations share no row.", file=sys.stderr)
        return 2
    print(gen.comparison_table(rows, *args.names), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
