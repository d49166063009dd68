"""nnU-Net-style augmentation of 2.5D training windows, through MONAI's transforms (research extra).

Levels (``TrainConfig.augment``, ``mnetim train --augment``, recorded in the model card):

* ``none``: centred crop, nothing else (validation-like);
* ``basic``: what training did before 0.3: random in-plane shift of the crop, left-right mirror, HU
  offset and gain, Gaussian noise (``WindowSampler``);
* ``full`` (default for new runs): ``basic`` plus, with nnU-Net v2's default probabilities,
  rotation (p 0.2, +-45 deg: CT pelvises lie within a few degrees of axial, nnU-Net's +-180 deg
  would teach poses that never occur), scaling 0.7-1.4 (p 0.2), elastic deformation (p 0.2),
  Gaussian blur (p 0.2), brightness x0.75-1.25 (p 0.15), contrast x0.75-1.25 about the mean
  (p 0.15), low-resolution simulation x0.5-1 (p 0.25), gamma 0.7-1.5 (p 0.3) and inverted gamma
  (p 0.1), noise (p 0.1).

The window (5 slices as channels) and its middle-slice label go through the same spatial
transforms in one call (MONAI dictionary transforms share the random draw across keys); the
label is resampled bilinearly and thresholded at 0.5, which keeps thin CTV edges better than
nearest-neighbour. Anterior-posterior and cranio-caudal mirroring are not used: bladder-anterior
and rectum-posterior is the anatomy the network must rely on.

Why MONAI: a 1.7 MB pure-Python wheel whose only dependencies are torch and numpy (already
inference dependencies), maintained, with every nnU-Net transform needed for 2D dictionaries.
TorchIO (34 MB with its 8 extra dependencies incl. scipy/nibabel) works on 3D subjects through
SimpleITK resampling, and batchgeneratorsv2 pulls batchgenerators, scikit-image and more.
"""

from __future__ import annotations

import numpy as np

from ...core.errors import DatasetError

AUGMENT_LEVELS = ("none", "basic", "full")

# (name, probability): the nnU-Net v2 defaults this module follows (tests check them).
FULL_PROBABILITIES = {"rotate": 0.2, "scale": 0.2, "elastic": 0.2, "blur": 0.2, "brightness": 0.15,
                      "contrast": 0.15, "low_resolution": 0.25, "gamma": 0.3, "inverted_gamma": 0.1, "noise": 0.1}


def check_level(level: str) -> str:
    if level not in AUGMENT_LEVELS:
        raise DatasetError(f"Augmentation level '{level}' is not one of {', '.join(AUGMENT_LEVELS)}.")
    return level


class FullAugmentation:
    """The ``full`` level's extra transforms on one (window, label) pair.

    Args:
        seed: Seeds MONAI's random state (reseeded per batch by the sampler for reproducibility).
        probabilities: Override of :data:`FULL_PROBABILITIES` (tests use 0/1 to isolate transforms).
    """

    def __init__(self, seed: int = 0, probabilities: dict | None = None):
        try:
            import monai.transforms as T
            from monai.data import set_track_meta
        except ImportError as exc:  # research extra not installed
            raise DatasetError("Augmentation 'full' needs MONAI: pip install 'MnetImSegment[research]' "
                               "(or train with --augment basic).") from exc
        set_track_meta(False)  # plain tensors, no metadata bookkeeping per window (a MONAI-wide setting)
        p = dict(FULL_PROBABILITIES, **(probabilities or {}))
        self.probabilities = p
        keys = ("image", "label")
        # Outside the window both image and label continue their border, so they stay consistent there.
        spatial = dict(keys=keys, mode=("bilinear", "bilinear"), padding_mode="border")
        self.transform = T.Compose([
            T.RandAffined(prob=p["rotate"], rotate_range=np.pi / 4, **spatial),
            T.RandZoomd(keys=keys, prob=p["scale"], min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "bilinear"),
                        padding_mode="edge", keep_size=True),  # isotropic, as nnU-Net
            T.Rand2DElasticd(prob=p["elastic"], spacing=(16, 16), magnitude_range=(0.5, 2.0), **spatial),
            T.RandGaussianSmoothd(keys="image", prob=p["blur"], sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0)),
            T.RandScaleIntensityd(keys="image", prob=p["brightness"], factors=0.25),
            T.RandScaleIntensityFixedMeand(keys="image", prob=p["contrast"], factors=0.25, preserve_range=True),
            T.RandSimulateLowResolutiond(keys="image", prob=p["low_resolution"], zoom_range=(0.5, 1.0),
                                         upsample_mode="bilinear"),
            T.RandAdjustContrastd(keys="image", prob=p["gamma"], gamma=(0.7, 1.5), retain_stats=True),
            T.RandAdjustContrastd(keys="image", prob=p["inverted_gamma"], gamma=(0.7, 1.5), invert_image=True,
                                  retain_stats=True),
            T.RandGaussianNoised(keys="image", prob=p["noise"], std=0.02),
        ])
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_state(seed=int(seed) % (2**32 - 1))

    def __call__(self, window: np.ndarray, label: np.ndarray, prior: np.ndarray | None = None):
        """(slices, H, W) window in [0, 1] and (H, W) 0/1 label -> transformed pair (label still 0/1).

        With ``prior`` (an (H, W) applicator prior) -> (window, label, prior): the prior rides as a
        second label channel, so it is warped exactly like the label and never intensity-augmented.
        """
        import torch

        lab = np.ascontiguousarray(label, np.float32)[None]
        if prior is not None:
            lab = np.concatenate([lab, np.ascontiguousarray(prior, np.float32)[None]])
        out = self.transform({"image": torch.from_numpy(np.ascontiguousarray(window, np.float32)),
                              "label": torch.from_numpy(lab)})
        image = np.clip(np.asarray(out["image"], np.float32), -0.5, 1.5)
        labels = np.asarray(out["label"], np.float32)
        binary = (labels[0] >= 0.5).astype(np.float32)
        if prior is None:
            return image, binary
        return image, binary, np.clip(labels[1], 0.0, 1.0)
