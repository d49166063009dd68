"""Phantom style "v5": v4's anatomy rendered SynthSeg-style (research code: training data).

Session 6 measured why every model so far scores ~0 on the held-out style
(``generalisation.heldout_ablation``, 8 scans): the v4-trained network scored 0.03 on them as
generated, 0.30 with their streaks switched off, 0.06 with their CTV made visible, and 0.60 with
both. Two things v4 taught it that a clinic's CT need not obey:

* "the CTV is the brighter tissue inside a darker envelope": v4's parametrium is darker than
  the CTV in 80 % of pelvises and always there;
* "metal artefacts are mild": v4's physical simulation gave streaks of SD 12-39 HU within 40 mm
  of the tandem; the held-out scans have 22-95 HU, and steel applicators on real CT do too.

v5 keeps v4's anatomy (same labels, same random stream for it: a v5 phantom of a seed has the
v4 phantom's geometry) and randomises what it looks like, from its own random stream:

* intensities: in 70 % of pelvises every soft-tissue and fat structure gets an independent HU
  in -150..200 (SynthSeg: the CTV is defined by its shape and place, not its grey level); the
  CTV's envelope is darker or brighter with equal odds, or missing (30 %: it takes the level of
  the tissue around it); bone, gas, contrast and the applicator keep their physical values, the
  applicator being the one thing every clinic's CT shows;
* background shapes: 2-9 random lumps (-200..400 HU) scattered in the pelvis, under the organs;
* scanner: noise 4-35 HU with grain 0.4-4 px, shading up to 40 HU;
* metal artefacts: v3's physics with photon counts down to 3e3 (starvation), inconsistent rays
  through metal (scatter, non-linearity, motion: ``ArtifactSettings.ray_error_sd``) and an
  overall severity x0.6-2.5 (``ArtifactSettings.gain``).

What v5 does NOT borrow from the held-out generator (so that row still measures something): no
superellipsoids or bead chains, no sinusoidal texture, no painted lines; its streaks come from
errors in projection data, reconstructed by filtered back-projection.
"""

from __future__ import annotations

import numpy as np

from .metal_artifacts import ArtifactSettings
from .phantom_v3 import FastBlob, Layer3, PhantomV4

SOFT_RANGE_HU = (-150.0, 200.0)  # any soft tissue or fat, enhanced or not
LUMP_RANGE_HU = (-200.0, 400.0)


def _is_tissue(layer: Layer3) -> bool:
    """A soft-tissue or fat layer v5 may re-draw: not metal, applicator, gas, bone or contrast."""
    return layer.deform and not layer.metal and -200.0 < layer.hu < 120.0


class PhantomV5(PhantomV4):
    """Style "v5": v4's anatomy, SynthSeg-style intensities, random lumps, harsher metal artefacts."""

    style = "v5"

    stream = 5  # this style's own random stream: ``default_rng([seed, stream])``
    noise_range_hu = (4.0, 35.0)

    def __init__(self, seed: int):
        super().__init__(seed)
        rng = np.random.default_rng([seed, self.stream])
        p = self.params
        roles = self.roles
        synth = bool(rng.random() < 0.7)
        if synth:
            for layer in self.layers:
                if _is_tissue(layer):
                    layer.hu = float(rng.uniform(*SOFT_RANGE_HU))
        ctv_hu = roles["ctv"].hu
        envelope = rng.choice(["darker", "brighter", "none"], p=[0.35, 0.35, 0.3])
        noise_hu = float(rng.uniform(*self.noise_range_hu))
        if envelope == "none":  # the CTV borders whatever tissue surrounds the parametrium
            roles["parametrium"].hu = roles["pelvic_fat"].hu  # the pelvic tissue level (fat, or soft if fat-free)
        else:
            gap = rng.uniform(self.min_envelope_gap_hu(noise_hu), 120.0)
            roles["parametrium"].hu = float(ctv_hu + (gap if envelope == "brighter" else -gap))
        self._add_lumps(rng)
        p.update(synth_intensities=synth, ctv_envelope=str(envelope), noise_hu=noise_hu,
                 noise_grain_px=float(rng.uniform(0.4, 4.0)), bias_hu=float(rng.uniform(0, 40)),
                 photons=float(np.exp(rng.uniform(np.log(3e3), np.log(5e5)))),
                 ray_error_sd=float(rng.uniform(0.0, 0.08)), artifact_gain=float(rng.uniform(0.6, 2.5)),
                 parametrium_contrast_hu=float(roles["parametrium"].hu - ctv_hu))

    @staticmethod
    def min_envelope_gap_hu(noise_hu: float) -> float:
        """Smallest HU difference between the CTV and a darker or brighter envelope."""
        return max(20.0, noise_hu)

    def _add_lumps(self, rng) -> None:
        """Random lumps in the pelvis, painted before the uterus so that organs and the CTV win."""
        at = next(i for i, layer in enumerate(self.layers) if layer is self.roles["parametrium"])
        rx, ry = self.body_radii
        c = self.ctv_center
        lumps = []
        for _ in range(int(rng.integers(2, 10))):
            centre = [self.body_center[0] + rng.uniform(-0.6, 0.6) * rx, self.body_center[1] + rng.uniform(-0.6, 0.6) * ry,
                      c[2] + rng.uniform(-70, 70)]
            radii = rng.uniform(8, 35, 3)
            lumps.append(Layer3(FastBlob.make(rng, centre, radii, bump_amp=0.25), float(rng.uniform(*LUMP_RANGE_HU))))
        self.layers[at:at] = lumps
        self.params["lumps"] = len(lumps)

    def artifact_settings(self) -> ArtifactSettings:
        p = self.params
        return ArtifactSettings(photons=p["photons"], ray_error_sd=p["ray_error_sd"], gain=p["artifact_gain"])


make_phantom_v5 = PhantomV5.make  # one v5 phantom (see the module docstring)
