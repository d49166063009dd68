"""How often the applicator localiser is on the tandem, per phantom style (research code).

The network's ROI and its applicator prior are placed by :func:`engine.applicator.locate_applicator`;
where the localiser is off, no network can draw the CTV. The distractor and hip-prosthesis tests
(``tests/test_applicator.py``) use v2 phantoms; this survey runs the styles the network is trained
and evaluated on (v3-v6: interstitial needles, plastic parts of any density, harsh artefacts), on the
evaluation grid and seeds of :mod:`.generalisation`, so that a change to the localiser is measured
on the same phantoms as the network.

"On the tandem": found (confidence >= 0.5), os within ``OS_TOL_MM`` and axis within
``AXIS_TOL_DEG`` of the phantom's truth (:func:`on_tandem`; ``tests/test_applicator.py`` uses the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..engine.applicator import locate_applicator
from ..engine.quality import QualitySpec
from .generalisation import PERTURBATIONS, SEED_BASE, generate, perturb

OS_TOL_MM, AXIS_TOL_DEG = 10.0, 15.0
FULL_CONFIDENCE = QualitySpec().min_plastic_confidence  # under it a plastic fit is warned


def truth(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's true os and tandem direction (LPS): v3 and later record ``os_lps``, v2 ``applicator_os_lps``."""
    if "os_lps" in params:
        return np.asarray(params["os_lps"], float), np.asarray(params["tandem_axis_lps"], float)
    return np.asarray(params["applicator_os_lps"], float), np.asarray(params["applicator_axis_lps"], float)


def errors(fit, params: dict) -> tuple[float, float]:
    """(os error mm, axis error deg) of a fit against the truth; inf when nothing was returned."""
    if fit.os_lps is None:
        return float("inf"), float("inf")
    os_, axis = truth(params)
    cos = float(np.clip(np.dot(fit.axis_lps, axis) / np.linalg.norm(axis), -1.0, 1.0))
    return float(np.linalg.norm(np.asarray(fit.os_lps) - os_)), float(np.degrees(np.arccos(cos)))


def on_tandem(fit, params: dict) -> bool:
    """Found, os within ``OS_TOL_MM`` and axis within ``AXIS_TOL_DEG`` of the phantom's truth."""
    os_err, angle = errors(fit, params)
    return bool(fit.found and os_err <= OS_TOL_MM and angle <= AXIS_TOL_DEG)


@dataclass
class StyleRow:
    style: str
    seeds: list = field(default_factory=list)
    on_tandem: list = field(default_factory=list)
    misses: list = field(default_factory=list)
    fits: list = field(default_factory=list)  # (kind, confidence, found) of every phantom, for the trust table
    phantoms: list = field(default_factory=list)  # every phantom's fit (os in LPS mm) and errors, for :func:`compare`

    def summary(self) -> dict:
        n = len(self.seeds)
        return {"style": self.style, "n": n, "on_tandem": int(sum(self.on_tandem)),
                "percent": round(100.0 * sum(self.on_tandem) / max(n, 1), 1), "seeds": self.seeds, "misses": self.misses,
                "fits": self.fits, "phantoms": self.phantoms}


def trust(results: dict) -> dict:
    """What the product does with each fit, over all rows: a fit under 0.5 is refused (out of scope);
    a trusted one is on the tandem or elsewhere, counted by kind and by full (>= ``FULL_CONFIDENCE``)
    or partial confidence. Being on the tandem is not enough: a confident fit elsewhere puts the ROI
    in the wrong place, which is worse than a refusal (session 18)."""
    out: dict = {"refused": 0}
    for row in results["rows"]:
        for (kind, confidence, found), ok in zip(row.get("fits", []), _hits(row)):
            if not found:
                out["refused"] += 1
                continue
            band = f"{kind}, {'>=' if confidence >= FULL_CONFIDENCE else '<'} {FULL_CONFIDENCE:g}"
            cell = out.setdefault(band, {"on_tandem": 0, "elsewhere": 0})
            cell["on_tandem" if ok else "elsewhere"] += 1
    return out


def _hits(row: dict) -> list:
    missed = {m["seed"] for m in row["misses"]}
    return [seed not in missed for seed in row["seeds"]]


def survey(styles, first: int = 0, count: int = 8, matrix: int = 256,
           log: Optional[Callable[[str], None]] = None, perturbation: Optional[str] = None) -> dict:
    """The localiser on ``count`` phantoms per style (seeds ``SEED_BASE[style] + first ...``).

    ``perturbation``: one of :data:`.generalisation.PERTURBATIONS`, applied to every phantom as the
    perturbation table does (e.g. ``"blur 1px"``, a soft reconstruction kernel), so that the same
    seeds can be compared with and without it.
    """
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{perturbation}': one of {', '.join(PERTURBATIONS)}")
    log = log or (lambda s: None)
    rows = []
    for style in styles:
        row = StyleRow(style)
        for i in range(first, first + count):
            seed = SEED_BASE[style] + i
            ph = generate(style, seed, matrix)
            if perturbation is not None:
                ph = perturb(perturbation, style, seed, matrix, ph)
            fit = locate_applicator(ph.ct)
            os_err, angle = errors(fit, ph.params)
            ok = on_tandem(fit, ph.params)
            row.seeds.append(seed)
            row.on_tandem.append(ok)
            row.fits.append((fit.kind, round(float(fit.confidence), 3), bool(fit.found)))
            p = ph.params
            what = {"seed": seed, "applicator": p.get("applicator"), "material": p.get("applicator_material"),
                    "needles": p.get("needles"), "needle_material": p.get("needle_material") or None,
                    "found_kind": fit.kind, "confidence": round(float(fit.confidence), 2),
                    "os_error_mm": round(os_err, 1), "axis_error_deg": round(angle, 1)}
            if not ok:
                row.misses.append(what)
            row.phantoms.append(dict(what, found=bool(fit.found), on_tandem=ok,
                                     os_lps=None if fit.os_lps is None else [round(float(v), 1) for v in fit.os_lps]))
            log(f"{style} seed {seed}: {'on the tandem' if ok else 'MISSED'} {what}")
        rows.append(row)
    return {"first_seed_offset": first, "per_style": count, "matrix": matrix, "perturbation": perturbation,
            "tolerance": {"os_mm": OS_TOL_MM, "axis_deg": AXIS_TOL_DEG}, "rows": [r.summary() for r in rows]}


def markdown_table(results: dict) -> str:
    lines = ["| style | on the tandem | % |", "|---|---:|---:|"]
    total = hits = 0
    for r in results["rows"]:
        lines.append(f"| {r['style']} | {r['on_tandem']}/{r['n']} | {r['percent']:.0f} |")
        total, hits = total + r["n"], hits + r["on_tandem"]
    lines.append(f"| all | {hits}/{total} | {100.0 * hits / max(total, 1):.0f} |")
    counts = trust(results)
    lines += ["", "| trusted fit (confidence >= 0.5) | on the tandem | elsewhere |", "|---|---:|---:|"]
    lines += [f"| {band} | {c['on_tandem']} | {c['elsewhere']} |" for band, c in sorted(counts.items()) if band != "refused"]
    lines.append(f"| refused (no fit trusted) | {counts['refused']} | |")
    return "\n".join(lines)


def _status(ph: dict) -> str:
    return "refused" if not ph["found"] else ("on the tandem" if ph["on_tandem"] else "elsewhere")


def _records(results: dict, which: str) -> dict:
    out = {}
    for row in results["rows"]:
        if "phantoms" not in row:
            raise ValueError(f"the {which} survey has no per-phantom fits (written before session 19): run it again")
        out.update({(row["style"], ph["seed"]): ph for ph in row["phantoms"]})
    return out


def check_comparable(before: dict, matrix: int, perturbation: Optional[str]) -> None:
    """Raise ``ValueError`` unless ``before`` is a survey of phantoms on this grid (``matrix``) with
    this ``perturbation``, with per-phantom records (surveys written before session 19 have none)."""
    for key, value in (("matrix", matrix), ("perturbation", perturbation)):
        if before.get(key) != value:
            raise ValueError(f"the surveys differ in {key} ({before.get(key)} vs {value}): not the same phantoms")
    _records(before, "first")


def compare(before: dict, after: dict, moved_mm: float = 0.5) -> dict:
    """Fit by fit, what changed between two surveys of the same phantoms (e.g. two versions of the
    localiser): every phantom whose status (on the tandem / elsewhere / refused), kind or os (by more
    than ``moved_mm``) changed, and the status counts of both on the phantoms they share.

    Raises ``ValueError`` when the surveys are not comparable (:func:`check_comparable`)."""
    check_comparable(before, after.get("matrix"), after.get("perturbation"))
    a, b = _records(before, "first"), _records(after, "second")
    shared = sorted(set(a) & set(b))
    counts = {w: {s: 0 for s in ("on the tandem", "elsewhere", "refused")} for w in ("before", "after")}
    changes = []
    for key in shared:
        x, y = a[key], b[key]
        counts["before"][_status(x)] += 1
        counts["after"][_status(y)] += 1
        moved = (x["os_lps"] is None) != (y["os_lps"] is None) or (
            x["os_lps"] is not None and float(np.linalg.norm(np.subtract(x["os_lps"], y["os_lps"]))) > moved_mm)
        if _status(x) != _status(y) or x["found_kind"] != y["found_kind"] or moved:
            changes.append({"style": key[0], "seed": key[1], "before": x, "after": y})
    return {"n": len(shared), "counts": counts, "changes": changes}


def compare_table(diff: dict) -> str:
    """Markdown: the status counts before and after, then one line per changed phantom."""
    c = diff["counts"]
    lines = [f"| {diff['n']} phantoms | on the tandem | elsewhere | refused |", "|---|---:|---:|---:|"]
    lines += [f"| {w} | {c[w]['on the tandem']} | {c[w]['elsewhere']} | {c[w]['refused']} |" for w in ("before", "after")]
    lines += ["", "| style | seed | before | after |", "|---|---:|---|---|"]

    def cell(ph):
        err = "" if not ph["found"] else f", os {ph['os_error_mm']} mm, axis {ph['axis_error_deg']} deg"
        return f"{_status(ph)}: {ph['found_kind']} {ph['confidence']}{err}"

    lines += [f"| {ch['style']} | {ch['seed']} | {cell(ch['before'])} | {cell(ch['after'])} |" for ch in diff["changes"]]
    if not diff["changes"]:
        lines.append("| - | - | no fit changed | |")
    return "\n".join(lines)
