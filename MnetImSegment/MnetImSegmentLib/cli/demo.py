"""``mnetim demo``: segment a phantom CT with the shipped weights; overlay PNG and Dice."""

from __future__ import annotations

from pathlib import Path

from ..research.demo import run_demo
from .options import add_device, add_json, emit


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="segment a phantom CT with the shipped weights; write an overlay PNG and the Dice")
    d.add_argument("-o", "--output", default="out/demo")
    d.add_argument("--weights")
    add_device(d)
    d.add_argument("--seed", type=int, default=20231)
    add_json(d)
    d.set_defaults(func=run)


def run(args) -> int:
    report = run_demo(Path(args.output), weights=args.weights, device=args.device, seed=args.seed)
    emit(args, report, lambda: [
        f"CTV {report['ctv_ml']:.1f} ml, Dice vs phantom truth {report['dice']:.3f}, "
        f"{report['seconds']:.1f} s on {report['device']}",
        f"segmentation: {report['segmentation']}",
        f"overlay:      {report['overlay']}",
    ])
    return 0
