"""Writing an evaluation's results: per-case CSV, summary CSV and Markdown, all published atomically."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ...core.errors import OutputError
from ...core.files import publish_files
from ..metrics import DEFAULT_TOLERANCE_MM, EMPTY_MASK_CONVENTION, METRIC_DEFINITIONS, METRICS, TOLERANCE_RATIONALE

REPORT_FILES = ("per_case.csv", "summary.csv", "summary.md", "boxplots.png", "best_worst.png", "per_slice.csv",
                "evaluation.json")
N_EXTREMES = 5  # the paper's Figure 3 shows the five worst and the five best cases
VARIANCE_NOTE = ("± is the sample standard deviation (SD, n - 1 denominator) over cases; summary.csv also has "
                 "the sample variance (the paper's Table 1 reports variance)")


def listing(cases, n: int = 3) -> str:
    names = sorted(cases)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


# --------------------------------------------------------------------------- output folder
def check_out_dir(out_dir: Path, overwrite: bool) -> list[str]:
    """Refuse a folder holding results (unless overwrite); return the files the last run recorded."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"The output '{out_dir}' is a file; give a folder.")
    existing = [f for f in REPORT_FILES if (out_dir / f).exists()]
    if existing and not overwrite:
        raise OutputError(f"'{out_dir}' already holds evaluation results ({', '.join(existing)}); choose a new folder "
                          "or pass --overwrite (only those result files are replaced).")
    previous = []
    if (out_dir / "evaluation.json").is_file():
        try:
            previous = [f for f in json.loads((out_dir / "evaluation.json").read_text(encoding="utf-8")).get("files", [])
                        if f in REPORT_FILES]
        except (OSError, ValueError, AttributeError):
            previous = []
    return previous


def publish(out_dir: Path, render, previous: list[str]) -> list[str]:
    """Render into a temporary folder inside ``out_dir``, then move each file into place.

    Results of the previous run that this one does not produce would be stale: only those the
    previous run recorded as its own are removed.
    """
    return publish_files(out_dir, render, previous, prefix=".mnetim-evaluate-")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            f.write("\n")
            return
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([_fmt(v) for v in row.values()])


def unit_of(metric: str, units: str) -> str:
    unit = METRIC_DEFINITIONS[metric]["unit"] if metric in METRIC_DEFINITIONS else (
        "mm" if metric.startswith(("asd", "hd95")) else "fraction")
    return "voxel" if unit == "mm" and units == "voxel" else unit


def write_summary_csv(path: Path, summary, units: str, tolerance: float) -> None:
    rows = []
    for model, metrics in summary.items():
        for metric, s in metrics.items():
            rows.append({"model": model, "metric": metric, "unit": unit_of(metric, units), **s,
                         "tolerance": tolerance, "tolerance_unit": "voxel" if units == "voxel" else "mm"})
    write_csv(path, rows)


def json_number_dict(stats: dict) -> dict:
    return {k: (v if isinstance(v, int) or math.isfinite(v) else None) for k, v in stats.items()}


def summary_markdown(summary, models, cases, missing, empty_predictions, tolerance, units, reference,
                      slice_summary) -> str:
    tol_unit = "voxel" if units == "voxel" else "mm"
    header = [f"{METRIC_DEFINITIONS[m]['name']}" + (f" ({unit_of(m, units)})" if unit_of(m, units) != "fraction" else "")
              for m in METRICS]

    def table(stat_fn, stat, source):
        lines = ["| Model | n | " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(METRICS)]
        for model in models:
            cells = []
            for metric in METRICS:
                s = source[model][metric]
                text = stat_fn(s)
                if s[stat] == best_of_src(source, metric, stat):
                    text = f"**{text}**"
                if s["n_infinite"]:
                    text += f" ({s['n_infinite']} inf)"
                cells.append(text)
            n = max(source[model][m]["n"] + source[model][m]["n_infinite"] for m in METRICS)
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def best_of_src(source, metric, stat):
        values = {m: source[m][metric][stat] for m in models if math.isfinite(source[m][metric][stat])}
        if len(models) < 2 or not values:
            return None
        return (min if METRIC_DEFINITIONS[metric]["better"] == "lower" else max)(values.values())

    num = lambda v: "-" if not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
    out = [f"# Evaluation: {', '.join(models)}", "",
           f"{len(cases)} case(s); surface tolerance tau = {tolerance:g} {tol_unit}; distances in {tol_unit}.", "",
           "## Mean ± SD (the paper's Table 1 gives mean ± variance: see summary.csv)", "",
           table(lambda s: f"{num(s['mean'])} ± {num(s['std'])}", "mean", summary), "",
           "## Median (as the paper's Table 2)", "",
           table(lambda s: num(s["median"]), "median", summary), ""]
    if slice_summary is not None:
        out += ["## Per-slice (2D) mean ± SD, over every slice holding CTV in the truth or the prediction", "",
                table(lambda s: f"{num(s['mean'])} ± {num(s['std'])}", "mean", slice_summary), ""]
    out += ["## Definitions", ""]
    for metric in METRICS:
        d = METRIC_DEFINITIONS[metric]
        out.append(f"- **{d['name']}** ({d['title']}, {unit_of(metric, units)}, {d['better']} is better): "
                   f"{d['definition']}.")
    why = f" ({TOLERANCE_RATIONALE})" if units == "mm" and tolerance == DEFAULT_TOLERANCE_MM else ""
    unit_text = ("millimetres (voxel spacing of each scan)" if units == "mm"
                 else "voxels (spacing taken as 1 in every axis)")
    out += ["", f"- Tolerance: tau = {tolerance:g} {tol_unit}{why}.",
            f"- Units: {unit_text}.",
            f"- Empty masks: {EMPTY_MASK_CONVENTION}. Infinite distances are left out of the ASD/HD95 statistics "
            "(counted as 'inf' in the tables); Dice, SO and SD count those cases as 0.",
            "- Volumes: per_case.csv has truth_ml, pred_ml, vol_diff_ml (prediction - truth) and vol_diff_pct "
            "(of the truth volume) per case; 'Dice' is the volumetric Dice (machine key 'vd'), not a volume difference.",
            f"- {VARIANCE_NOTE[0].upper() + VARIANCE_NOTE[1:]}; bold marks the best model per column.",
            f"- best_worst.png: the {N_EXTREMES} lowest- and {N_EXTREMES} highest-Dice cases of '{reference}'."]
    notes = []
    for model in models:
        if empty_predictions[model]:
            notes.append(f"- '{model}': empty prediction for {len(empty_predictions[model])} case(s): "
                         f"{', '.join(empty_predictions[model])}.")
        if missing[model]["no_prediction"]:
            notes.append(f"- '{model}': no prediction for {len(missing[model]['no_prediction'])} truth case(s), "
                         f"not scored: {', '.join(missing[model]['no_prediction'])}.")
        if missing[model]["no_truth"]:
            notes.append(f"- '{model}': {len(missing[model]['no_truth'])} prediction(s) without truth, not scored: "
                         f"{', '.join(missing[model]['no_truth'])}.")
    if notes:
        out += ["", "## Warnings", ""] + notes
    return "\n".join(out) + "\n"

