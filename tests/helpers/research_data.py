"""Tiny phantom datasets and models for the training / experiment tests (fast on a 2-core CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

# A small Mnet_Im: the same graph as the paper's, ~1/16 of the channels.
TINY_MNET = dict(features=(8, 16, 32, 64, 128), input_branch_channels=(8, 8, 8, 8))
TINY_UNET_MO = dict(features=(8, 16, 32, 64, 128))
PHANTOM = dict(matrix=128, slice_mm=2.5, z_extent_mm=60)


def write_dataset(folder: Path, seeds, patients=None, splits=None, fmt: str = ".nii.gz") -> Path:
    """Phantom CTs + label maps and a manifest; returns the manifest path.

    Args:
        folder: New folder.
        seeds: One phantom per seed.
        patients: Patient id per seed (default: one patient per scan).
        splits: Split per seed (default: no split column values, i.e. split by the trainer).
    """
    from MnetImSegmentLib.engine.io import write_image, write_labelmap
    from MnetImSegmentLib.research.phantom import make_phantom

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, seed in enumerate(seeds):
        ph = make_phantom(seed, **PHANTOM)
        write_image(ph.ct, folder / f"ct{seed}{fmt}", overwrite=True)
        write_labelmap(ph.labels, folder / f"lab{seed}{fmt}", overwrite=True)
        rows.append([f"ct{seed}{fmt}", f"lab{seed}{fmt}", patients[i] if patients else f"P{seed}", f"S{seed}",
                     splits[i] if splits else ""])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "mask", "patient_id", "scan_id", "split"])
        w.writerows(rows)
    return manifest


def tiny_config(**changes):
    """A TrainConfig that trains a tiny Mnet_Im for a few seconds on CPU."""
    from MnetImSegmentLib.research.training import TrainConfig

    base = dict(model="Mnet_Im", model_overrides=dict(TINY_MNET), epochs=2, windows_per_epoch=16, batch_size=4,
                lr_milestones=(1,), patience=5, device="cpu", num_threads=1, jitter_px=8)
    base.update(changes)
    return TrainConfig(**base)
