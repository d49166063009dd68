"""Phantom style "v6": v5 with a visible CTV edge, capped noise and whole-view streaks (research code).

The v5 candidate (session 6) showed two things (``docs/generalisation.md``):

* v5's own labels were half guesses: its CTV edge CNR had a median of 1.08, 5 of 10 below 1,
  because random tissue levels and a missing envelope often left the CTV iso-dense with its
  surroundings, and the noise went up to 35 HU. A label the image does not show cannot be learnt.
* the streaks still fell short: on the held-out scans the v5 candidate scored 0.54 without their
  streaks and 0.14 with them. Real streaks from a steel tandem and ovoids are straight lines
  through the metal crossing the field of view, a few hundred HU strong; v5's physics gave fine
  texture of 35-72 HU SD.

v6 keeps v5's anatomy (v4's) and its SynthSeg intensities, lumps and photon starvation, and:

* bounds the CTV's edge as v4 does: an envelope at least ``max(25 HU, 1.2 noise SD)`` darker or
  brighter; with no envelope, the CTV itself moves that far from the pelvic tissue it borders;
* caps the noise at 25 HU;
* adds whole inconsistent views (``ArtifactSettings.view_errors``: patient motion or a detector
  glitch during a few views), which filtered back-projection turns into straight bands and lines
  through the metal along those views. Still errors in projection data, never lines painted on
  the image: the held-out generator's streaks stay unseen.
"""

from __future__ import annotations

import numpy as np

from .metal_artifacts import ArtifactSettings
from .phantom_v5 import PhantomV5

CTV_RANGE_HU = (-150.0, 250.0)
MAX_EDGE_GAP_HU = 120.0


class PhantomV6(PhantomV5):
    """Style "v6": v5 with a bounded CTV edge contrast, noise <= 25 HU and whole-view streaks."""

    style = "v6"
    stream = 6
    noise_range_hu = (4.0, 25.0)

    @staticmethod
    def min_envelope_gap_hu(noise_hu: float) -> float:
        return max(25.0, 1.2 * noise_hu)  # v4's rule

    def __init__(self, seed: int):
        super().__init__(seed)
        rng = np.random.default_rng([seed, self.stream, 1])
        p, roles = self.params, self.roles
        if p["ctv_envelope"] == "none":
            self._separate_ctv_from(roles["parametrium"].hu, self.min_envelope_gap_hu(p["noise_hu"]), rng)
            p["parametrium_contrast_hu"] = float(roles["parametrium"].hu - roles["ctv"].hu)
        streaky = bool(rng.random() < 0.75)
        p.update(view_errors=int(rng.integers(2, 13)) if streaky else 0,
                 view_error_sd=float(np.exp(rng.uniform(np.log(0.2), np.log(1.5)))) if streaky else 0.0)

    def _separate_ctv_from(self, neighbour_hu: float, need_hu: float, rng) -> None:
        """Move the CTV at least ``need_hu`` away from ``neighbour_hu`` (staying in ``CTV_RANGE_HU``)."""
        ctv = self.roles["ctv"]
        if abs(ctv.hu - neighbour_hu) >= need_hu:
            return
        room = {+1: CTV_RANGE_HU[1] - neighbour_hu, -1: neighbour_hu - CTV_RANGE_HU[0]}
        signs = [s for s, r in room.items() if r >= need_hu] or [max(room, key=room.get)]
        sign = signs[int(rng.integers(len(signs)))]
        gap = rng.uniform(need_hu, max(need_hu, min(MAX_EDGE_GAP_HU, room[sign])))
        ctv.hu = float(neighbour_hu + sign * gap)

    def artifact_settings(self) -> ArtifactSettings:
        settings = super().artifact_settings()
        settings.view_errors = self.params["view_errors"]
        settings.view_error_sd = self.params["view_error_sd"]
        return settings


make_phantom_v6 = PhantomV6.make  # one v6 phantom (see the module docstring)
