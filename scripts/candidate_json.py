"""Keep a measured candidate's raw values: docs/generalisation_<version>_<name>_candidate.json.

Every issue-11 candidate is measured with ``scripts/evaluate_candidate.sh`` (style rows, perturbations,
held-out ablation in three sub-folders); this merges them with the run's card excerpt and training log,
so a candidate that is not shipped still leaves its per-seed numbers for ``scripts/compare_candidates.py``.

    python scripts/candidate_json.py v12b data/run_v12b out/gen_v12b "what was trained, and the verdict"
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MnetImSegment"))

from MnetImSegmentLib.core.files import write_text  # noqa: E402
from MnetImSegmentLib.research.generalisation import read_results  # noqa: E402

SETTINGS = ("n_per_row", "matrix", "slice_mm", "z_extent_mm", "perturb_style", "seed_base", "device")
CARD_KEYS = ("name", "version", "input", "training", "validation", "test", "threshold")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the candidate's short name (v12b)")
    p.add_argument("run", type=Path, help="its training run folder (holds weights/ and log.csv)")
    p.add_argument("results", type=Path, help="the evaluate_candidate.sh output folder")
    p.add_argument("what", help="one sentence: what was trained and the verdict")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where to write (default: docs)")
    args = p.parse_args(argv)
    try:
        card = json.loads((args.run / "weights" / "model.json").read_text())
        trained = sorted(card["training"]["data"].get("styles", {}))
        parts = {f: json.loads(f.read_text()) for f in sorted(args.results.rglob("generalisation.json"))}
        settings = next((d for f, d in parts.items() if f.parent.name == "styles"), next(iter(parts.values())))
        rows = read_results(args.results)["rows"]
        with open(args.run / "log.csv", newline="") as f:
            log = list(csv.DictReader(f))
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise SystemExit(f"cannot read the candidate's run or results: {exc!r}") from None
    doc = {"what": args.what,
           "weights": {"name": card["name"], "version": card["version"], "folder": str(args.run / "weights"),
                       "trained_styles": trained},
           **{k: settings[k] for k in SETTINGS if k in settings},
           "seconds": round(sum(d.get("seconds", 0) for d in parts.values()), 1), "rows": rows,
           "card_excerpt": {k: card[k] for k in CARD_KEYS if k in card}, "training_log": log}
    sizes = sorted({len(r["seeds"]) for r in doc["rows"]})
    if len(sizes) > 1:  # e.g. style rows on 16 seeds, perturbations on 8: each row carries its own n
        doc["n_per_row"] = sizes
    out = args.docs / f"generalisation_{card['version']}_{args.name}_candidate.json"
    write_text(out, json.dumps(doc, indent=1) + "\n", overwrite=True)  # read back before it is reported
    print(f"wrote {out} ({len(doc['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
