"""Replay the training lineage of the shipped demo weights (Mnet_Im_phantom_demo 0.3.3) from nothing.

The demo weights were not trained in one run: each candidate of issue 11 was fine-tuned from the one before
(docs/generalisation.md), and the card records only the last command and its parent's checksum.
This script is that whole chain, phantoms to weights, with the commands the model cards recorded:

    0.2.0 (v2) -> v3 -> v4 -> v5 -> v6 -> v6p (+ tandem prior) -> v6m (+ NMAR) -> v6n = 0.3.0
    -> v9a (+ CTV atlas, prior bias) -> v10a (+ style v3) = 0.3.1
    -> v12a (+ style v7) -> v12b -> v12c;  0.3.2 = the ensemble of v10a and v12c (mnetim ensemble)
    -> v13a (+ CTV reveal);  0.3.3 = the ensemble of v10a and v13a

Stages whose output exists are skipped, so an interrupted replay continues where it stopped.
Most stages are bounded by ``--max-minutes``, so on another machine they end at another epoch: this
reproduces the recipe, not the tensors (the shipped card's checksum will differ). About 15 hours on
the project's 2-core CPU; a GPU makes the time budgets cover many more epochs.

    python scripts/train_demo_weights.py --root data/recipe             # run every missing stage
    python scripts/train_demo_weights.py --root data/recipe --dry-run   # check the commands, print them
    python scripts/train_demo_weights.py --root data/recipe --until v6  # stop after a stage
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

INTENDED_USE = ("Demonstration and testing only. Trained on synthetic phantoms: NOT FOR CLINICAL USE. Clinical use "
                "requires training on the institution's own data with mnetim train and local validation.")

# Phantom sets: folder -> `mnetim phantom` options (the cards' data recipes).
PHANTOMS = {
    "phantoms_v2": "--count 100 --seed 1000",
    "phantoms_v3mix": "--count 150 --style v3:0.7,v2:0.3 --seed 1000 --workers 2",
    "phantoms_v4mix": "--count 150 --style v4:0.75,v2:0.25 --seed 2000 --workers 2",
    "phantoms_v5": "--count 120 --style v5 --seed 3000 --workers 2",
    "phantoms_v6": "--count 120 --style v6 --seed 4000 --workers 2",
    "phantoms_v3": "--count 100 --style v3 --seed 5000 --workers 2",
    "phantoms_v7": "--count 100 --style v7 --seed 7000 --workers 2",
}
# Training sets made of several phantom sets: one manifest whose paths point into each folder.
MIXES = {"mix_v5": ("phantoms_v5", "phantoms_v4mix"), "mix_v6": ("phantoms_v6", "phantoms_v5", "phantoms_v4mix"),
         "mix_v10": ("phantoms_v6", "phantoms_v5", "phantoms_v4mix", "phantoms_v3"),
         "mix_v12": ("phantoms_v6", "phantoms_v5", "phantoms_v4mix", "phantoms_v3", "phantoms_v7")}

COMMON = "--seed 0 --threads 2 --roi-size 80 --roi-spacing 1.6 --patience 50"
FULL = COMMON + " --augment full"
MIX_V6 = "--style-weights v6:1,v2:2,v4:0.5,v5:0.3"
ATLAS_V12 = "--applicator-prior atlas --prior-bias --metal-reduction normalised --ctv-camouflage 0.3"
FULL_V12 = FULL + " --windows-per-epoch 2000"

# (stage, training set, parent stage or None, version, options). Options as the cards recorded them.
STAGES = [
    ("v2", "phantoms_v2", None, "0.2.0",
     "--epochs 50 --windows-per-epoch 3000 --lr-milestones 32 42 47 --max-minutes 80 " + COMMON),
    ("v3", "phantoms_v3mix", "v2", "0.3.0",
     "--epochs 27 --windows-per-epoch 2000 --lr-milestones 24 30 34 --max-minutes 80 " + FULL),
    ("v4", "phantoms_v4mix", "v3", "0.3.0",
     "--epochs 45 --windows-per-epoch 2000 --lr 0.0005 --lr-milestones 32 40 --max-minutes 100 " + FULL),
    ("v5", "mix_v5", "v4", "0.3.0",
     "--epochs 34 --windows-per-epoch 2000 --lr 0.0005 --lr-milestones 24 30 --max-minutes 100 " + FULL),
    ("v6", "mix_v6", "v5", "0.3.0",
     MIX_V6 + " --epochs 34 --windows-per-epoch 2000 --lr 0.0005 --lr-milestones 26 31 --max-minutes 92 " + FULL),
    ("v6p", "mix_v6", "v6", "0.3.0",
     "--applicator-prior tandem " + MIX_V6 +
     " --epochs 34 --windows-per-epoch 2000 --lr 0.0005 --lr-milestones 26 31 --max-minutes 30 " + FULL),
    ("v6m", "mix_v6", "v6p", "0.3.0",
     "--applicator-prior tandem --metal-reduction normalised " + MIX_V6 +
     " --epochs 20 --windows-per-epoch 2000 --lr 0.0005 --lr-milestones 14 18 --max-minutes 80 " + FULL),
    ("v6n", "mix_v6", "v6m", "0.3.0",
     "--applicator-prior tandem --metal-reduction normalised --style-weights v6:1,v2:2,v4:1,v5:0.3"
     " --epochs 14 --windows-per-epoch 2000 --lr 0.0002 --lr-milestones 10 12 --max-minutes 38 " + FULL),
    # 0.3.1: the CTV atlas in the tandem's frame as the prior channel, the network predicting a
    # correction to it (--prior-bias), then style v3 (CTVs often iso-dense) back in the mix.
    ("v9a", "mix_v6", "v6n", "0.3.1",
     "--applicator-prior atlas --prior-bias --metal-reduction normalised --ctv-camouflage 0.3"
     " --style-weights v6:1,v2:2,v4:2,v5:0.3 --epochs 20 --windows-per-epoch 2000 --lr 0.0002 --lr-milestones 12 16"
     " --max-minutes 42 " + FULL),
    ("v10a", "mix_v10", "v9a", "0.3.1",
     "--applicator-prior atlas --prior-bias --metal-reduction normalised --ctv-camouflage 0.3"
     " --style-weights v6:1,v2:2,v4:2,v5:0.3,v3:1.5 --epochs 12 --windows-per-epoch 2000 --lr 0.0001 --lr-milestones 8 11"
     " --max-minutes 32 " + FULL.replace("--seed 0", "--seed 7")),
    # Style v7 (quiet surroundings) in the mix, then lower learning rates (docs/generalisation.md, sessions 15-16).
    ("v12a", "mix_v12", "v10a", "0.3.2", ATLAS_V12 + " --style-weights v6:1,v2:2,v4:2,v5:0.3,v3:1.5,v7:2 --epochs 12"
     " --lr 0.0001 --lr-milestones 8 11 --max-minutes 22 " + FULL_V12.replace("--seed 0", "--seed 12")),
    ("v12b", "mix_v12", "v12a", "0.3.2", ATLAS_V12 + " --style-weights v6:1,v2:2,v4:2.5,v5:0.6,v3:1.5,v7:2 --epochs 10"
     " --lr 0.00005 --lr-milestones 6 9 --max-minutes 30 " + FULL_V12.replace("--seed 0", "--seed 13")),
    ("v12c", "mix_v12", "v12b", "0.3.2", ATLAS_V12 + " --style-weights v6:1,v2:2,v4:2.5,v5:1.5,v3:1.5,v7:2 --epochs 8"
     " --lr 0.00005 --lr-milestones 5 7 --max-minutes 25 " + FULL_V12.replace("--seed 0", "--seed 14")),
    # 0.3.3's second member: CTVs made plainly brighter or darker in 40 % of the windows (session 21).
    ("v13a", "mix_v12", "v12c", "0.3.3", ATLAS_V12 + " --ctv-reveal 0.4 --style-weights v6:1,v2:2,v4:2.5,v5:1.5,v3:1.5,v7:2"
     " --epochs 8 --lr 0.0001 --lr-milestones 5 7 --max-minutes 28 " + FULL_V12.replace("--seed 0", "--seed 21")),
]
# The shipped weights: the networks of these stages voting (mnetim ensemble, session 20), measured on the test
# split of this training set, which none of them trained or validated on (manifest split column).
ENSEMBLE = (("v10a", "v13a"), "mix_v12", "0.3.3")


ENSEMBLE_STAGE = "ensemble"  # the last step of the recipe: --until accepts it like a training stage


def training_stages(until: str) -> list:
    """The training stages up to ``until`` (every one for the ensemble step)."""
    names = [s[0] for s in STAGES]
    if until == ENSEMBLE_STAGE:
        return list(STAGES)
    if until not in names:
        raise SystemExit(f"unknown stage '{until}' (stages: {', '.join(names + [ENSEMBLE_STAGE])})")
    return STAGES[:names.index(until) + 1]


def stage_sets(until: str) -> set:
    needed = set()
    for name, data, *_ in training_stages(until):
        needed.update(MIXES.get(data, (data,)))
    return needed


def phantom_argv(root: Path, folder: str) -> list:
    return ["phantom", "-o", str(root / folder)] + shlex.split(PHANTOMS[folder])


def train_argv(root: Path, stage) -> list:
    name, data, parent, version, options = stage
    argv = ["train", str(root / data / "manifest.csv"), "-o", str(root / f"run_{name}")]
    if parent is not None:
        argv += ["--init-weights", str(root / f"run_{parent}" / "weights")]
    argv += shlex.split(options)
    description = {"kind": "synthetic brachytherapy CT phantoms (MnetImSegmentLib.research)",
                   "recipe": f"scripts/train_demo_weights.py, stage {name}: {data}"
                             + (f" = {' + '.join(MIXES[data])}" if data in MIXES else f" = mnetim phantom {PHANTOMS[data]}"),
                   "never trained on": "the held-out style (MnetImSegmentLib.research.phantom_heldout)"}
    return argv + ["--name", "Mnet_Im_phantom_demo", "--version", version, "--intended-use", INTENDED_USE,
                   "--data-description", json.dumps(description)]


def ensemble_argv(root: Path) -> list:
    members, data, version = ENSEMBLE
    return (["ensemble"] + [str(root / f"run_{m}" / "weights") for m in members]
            + ["-o", str(root / "run_ensemble" / "weights"), "--name", "Mnet_Im_phantom_demo", "--version", version,
               "--intended-use", INTENDED_USE, "--test-manifest", str(root / data / "test.csv")])


def write_test_manifest(root: Path, mix: str) -> None:
    """The scans of a training set's test split (manifest split column), as their own manifest beside it."""
    from MnetImSegmentLib.research.manifest import read_manifest, write_manifest

    records = [r for r in read_manifest(root / mix / "manifest.csv") if r.split == "test"]
    write_manifest(root / mix / "test.csv", records)


def write_mix(root: Path, mix: str) -> None:
    """One manifest of several phantom sets (each read and checked), its paths pointing into their folders."""
    from MnetImSegmentLib.research.manifest import read_manifest, write_manifest

    records = [r for folder in MIXES[mix] for r in read_manifest(root / folder / "manifest.csv")]
    (root / mix).mkdir(parents=True, exist_ok=True)
    write_manifest(root / mix / "manifest.csv", records)


def check(argvs: list) -> None:
    """Parse every command with the real CLI parser: a recipe that no longer parses fails here, not hours in."""
    from MnetImSegmentLib.cli import build_parser

    parser = build_parser()
    for argv in argvs:
        parser.parse_args(argv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/recipe", help="folder for the phantoms and runs (default: data/recipe)")
    p.add_argument("--until", default=ENSEMBLE_STAGE, help="last stage to run (default: all, then the ensemble)")
    p.add_argument("--dry-run", action="store_true", help="check and print the commands; run nothing")
    args = p.parse_args(argv)
    root = Path(args.root)
    needed = stage_sets(args.until)
    stages = training_stages(args.until)
    phantoms = [phantom_argv(root, folder) for folder in PHANTOMS if folder in needed]
    trainings = [train_argv(root, stage) for stage in stages]
    ensemble = [ensemble_argv(root)] if args.until == ENSEMBLE_STAGE else []
    check(phantoms + trainings + ensemble)
    if args.dry_run:
        for argv in phantoms + trainings + ensemble:
            print("mnetim " + shlex.join(argv))
        return 0
    mnetim = [sys.executable, "-m", "MnetImSegmentLib.cli"]
    for folder, argv in zip([f for f in PHANTOMS if f in needed], phantoms):
        if not (root / folder / "manifest.csv").exists():
            subprocess.run(mnetim + argv, check=True)
    for mix in MIXES:
        if set(MIXES[mix]) <= needed and not (root / mix / "manifest.csv").exists():
            write_mix(root, mix)
    for stage, argv in zip(stages, trainings):
        run = root / f"run_{stage[0]}"
        if not (run / "weights" / "model.json").exists():
            resume = ["--resume"] if (run / "checkpoint.pt").exists() else []  # an interrupted stage continues
            print(f"stage {stage[0]}: mnetim {shlex.join(argv[:4])} ...", flush=True)
            subprocess.run(mnetim + argv + resume, check=True)
    if not ensemble:
        print(f"done: {root / f'run_{stages[-1][0]}' / 'weights'}")
        return 0
    if not (root / "run_ensemble" / "weights" / "model.json").exists():
        write_test_manifest(root, ENSEMBLE[1])
        print("ensemble: mnetim " + shlex.join(ensemble[0][:3]) + " ...", flush=True)
        subprocess.run(mnetim + ensemble[0], check=True)
    print(f"done: {root / 'run_ensemble' / 'weights'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
