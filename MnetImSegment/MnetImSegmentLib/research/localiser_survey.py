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

    def summary(self) -> dict:
        n = len(self.seeds)
        return {"style": self.style, "n": n, "on_tandem": int(sum(self.on_tandem)),
                "percent": round(100.0 * sum(self.on_tandem) / max(n, 1), 1), "seeds": self.seeds, "misses": self.misses,
                "fits": self.fits}


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
