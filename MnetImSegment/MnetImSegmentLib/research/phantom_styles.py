"""Phantom generator styles and training mixes (``mnetim phantom --style``).

* ``v2``: the original generator (``phantom.py``; the demo's and ``make demo``'s default);
* ``v3``: domain-randomised (``phantom_v3.py``): template anatomy, wide per-structure HU, physical
  metal artefacts, random acquisition;
* ``v4``: v3 with the CTV tied to what the image shows (the visible cervix inside the CTV and
  scaled with it, a parametrium edge of at least 25 HU), wider tissue levels, fat-free pelvises;
* ``v5``: v4's anatomy rendered SynthSeg-style (``phantom_v5.py``): independent random tissue
  intensities, an envelope around the CTV that is darker, brighter or missing, random lumps, and
  harsher metal artefacts (photon starvation, inconsistent rays, severity x0.6-2.5);
* ``v6``: v5 with the CTV's edge contrast bounded as in v4, noise capped at 25 HU, and whole
  inconsistent views that back-project to straight streaks through the metal (``phantom_v6.py``);
* ``v7``: v4's anatomy with quiet surroundings, no fat and no parametrium edge near the CTV
  (``phantom_v3.PhantomV7``): the CTV's own edge, or the applicator frame, is all there is;
* ``heldout``: a structurally different generator (``phantom_heldout.py``) used ONLY to measure
  generalisation; never part of a training mix.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from .phantom import make_phantom
from .phantom_heldout import make_phantom_heldout
from .phantom_v3 import make_phantom_v3, make_phantom_v4, make_phantom_v7
from .phantom_v5 import make_phantom_v5
from .phantom_v6 import make_phantom_v6

STYLES = ("v2", "v3", "v4", "v5", "v6", "v7", "heldout")
TRAINING_STYLES = ("v2", "v3", "v4", "v5", "v6", "v7")
HELDOUT_STYLE = "heldout"
_MAKERS = {"v3": make_phantom_v3, "v4": make_phantom_v4, "v5": make_phantom_v5, "v6": make_phantom_v6, "v7": make_phantom_v7,
           HELDOUT_STYLE: make_phantom_heldout}


def make_phantom_style(style: str, seed: int, matrix=None, slice_mm=None, z_extent_mm=None, direction=None):
    """One phantom of ``style`` (a :class:`phantom.Phantom`; ``params["style"]`` names the style)."""
    if style == "v2":
        ph = make_phantom(seed, matrix=matrix, slice_mm=slice_mm, z_extent_mm=z_extent_mm, direction=direction)
        ph.params["style"] = "v2"
        return ph
    maker = _MAKERS.get(style)
    if maker is not None:
        return maker(seed, matrix=matrix, slice_mm=slice_mm, z_extent_mm=z_extent_mm, direction=direction)
    raise InputError(f"Unknown phantom style '{style}'; choose among {', '.join(STYLES)}.")


def parse_style_mix(text: str) -> list[tuple[str, float]]:
    """``"v3"``, ``"v3,v2"`` (equal shares) or ``"v3:0.7,v2:0.3"`` -> [(style, share)], shares summing to 1.

    Raises:
        InputError: Unknown style, bad share, or the held-out style mixed with training styles.
    """
    items = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, _, share = part.partition(":")
        name = name.strip()
        if name not in STYLES:
            raise InputError(f"Unknown phantom style '{name}'; choose among {', '.join(STYLES)}.")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            raise InputError(f"Phantom style share '{share}' for '{name}' is not a number.") from None
        if value <= 0:
            raise InputError(f"Phantom style share for '{name}' must be positive, got {value}.")
        items.append((name, value))
    if not items:
        raise InputError("No phantom style given.")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise InputError(f"Phantom style listed twice in '{text}'.")
    if HELDOUT_STYLE in names and len(names) > 1:
        raise InputError("The held-out style measures generalisation only; write it as its own dataset, not mixed "
                         "with training styles.")
    total = sum(v for _, v in items)
    return [(n, v / total) for n, v in items]


def assign_styles(count: int, mix: list[tuple[str, float]], seed: int = 0) -> list[str]:
    """Styles for ``count`` phantoms in the mix's proportions (largest remainder), in a seeded random order."""
    exact = np.array([share * count for _, share in mix])
    n = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - n))[: count - n.sum()]:
        n[i] += 1
    styles = [name for (name, _), k in zip(mix, n) for _ in range(k)]
    np.random.default_rng([seed, 5]).shuffle(styles)
    return styles
