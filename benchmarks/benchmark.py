"""Benchmark: one clinical-size CT end to end, the network against this machine's GEMM rate, and
the optimised path against a naive reference path, all measured in ONE run so ratios are fair.

    python benchmarks/benchmark.py [--weights DIR] [--slices 120] [--matrix 512] [--out FILE.json]

Prints one JSON object (and writes it with --out). Figures:
* ``cli``: wall seconds of ``mnetim segment CT -o OUT.seg.nrrd`` in a fresh process (process start,
  imports, read, ROI, network, paste-back, write), its per-stage seconds and its peak RSS;
* ``network``: slices/s at the model's input size, GFLOP per slice counted with torch's FLOP counter,
  achieved GFLOP/s, this machine's fp32 GEMM GFLOP/s (2048^3 matmul, same threads) and their ratio;
* ``reference``: a naive path in the same process (eager, batch 1, NCHW, every slice of the volume)
  with its seconds, the speed-up of the optimised path and the Dice between the two masks;
* ``levers``: network seconds with each lever on/off (batch size, channels_last, folded batch norm);
* ``scaling``: network cost versus slice count and crop size;
* ``batch``: CTs per minute of ``mnetim segment`` over a folder, 1 and 2 threads;
* ``slicer``: the Slicer logic's total seconds and its own overhead (MRML conversions, closed
  surface) as a share of the total, when slicer-core is installed;
* ``metal_reduction``: seconds of NMAR / LI-MAR (``engine.metal_reduction``, used by weights trained
  with ``--metal-reduction``) on this CT's ROI, first call (builds the projector) and warm, against
  the network's seconds; the sparse projector against the ``grid_sample`` one it reproduces; and, for
  weights that use it, the whole CLI and ``Segmenter.segment`` with it and with it switched off in a
  copy of the card, interleaved (the speed bar of issue 11: within 20 % of the same path without it);
* ``gpu`` (on a CUDA machine): network slices/s with mixed precision and a whole CT after model load.
This is a measurement tool, not a test: numbers vary with the machine's load; compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def gemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def flops_per_slice(model, size) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, model.in_channels, size[1], size[0])
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def time_network(model, n_slices: int, size, batch: int, channels_last: bool, repeats: int = 2) -> float:
    """Seconds to push ``n_slices`` windows through the model (best of ``repeats``)."""
    import torch

    x = torch.rand(n_slices, model.in_channels, size[1], size[0])
    m = model.to(memory_format=torch.channels_last) if channels_last else model.to(memory_format=torch.contiguous_format)
    best = float("inf")
    with torch.inference_mode():
        m(x[:batch].contiguous(memory_format=torch.channels_last) if channels_last else x[:batch])  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            for b0 in range(0, n_slices, batch):
                xb = x[b0:b0 + batch]
                m(xb.contiguous(memory_format=torch.channels_last) if channels_last else xb)
            best = min(best, time.perf_counter() - t)
    return best


def dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def run_cli(ct: Path, out: Path, weights, threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "MnetImSegmentLib.cli", "segment", str(ct), "-o", str(out), "--json",
           "--device", "cpu", "--overwrite"]
    if weights:
        cmd += ["--weights", str(weights)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"mnetim segment failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report.update(wall_seconds=round(wall, 3), peak_rss_mb=round(max(peak, before) / 1024, 1))
    return report


def slicer_overhead(volume, weights) -> dict:
    """The Slicer logic on a real MRML scene (slicer-core): total seconds and its own share."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers.slicer_scene import add_volume, new_scene  # needs slicer-core (a test extra)

        from MnetImSegmentLib.logic import MnetImSegmentLogic
    except Exception as exc:
        return {"skipped": f"slicer-core not available ({type(exc).__name__}: {exc})"}
    scene = new_scene()
    node = add_volume(scene, volume)
    logic = MnetImSegmentLogic()
    logic.process(node, device="cpu", weights=weights)  # warm: model load and first-call costs
    runs = []
    for _ in range(3):  # the median run of three: single runs on a shared machine are noisy
        t = time.perf_counter()
        prepared = logic.prepareInput(node)
        t_prepare = time.perf_counter() - t
        run = logic.runEngine(prepared, weights=weights, device="cpu")
        t_engine = time.perf_counter() - t - t_prepare
        logic.createOutput(node, run)
        total = time.perf_counter() - t
        runs.append({"total_seconds": round(total, 3), "engine_seconds": round(t_engine, 3),
                     "mrml_in_seconds": round(t_prepare, 3),
                     "mrml_out_seconds": round(total - t_prepare - t_engine, 3),
                     "overhead_fraction": round((total - t_engine) / total, 3)})
    return sorted(runs, key=lambda r: r["overhead_fraction"])[1]


def gpu_figures(volume, weights, n_roi: int, size) -> dict:
    """CUDA: network slices/s with mixed precision (large batch) and a whole CT after model load."""
    import torch

    from MnetImSegmentLib.engine.inference import Segmenter

    seg = Segmenter(weights, device="cuda", batch_size=64)
    x = torch.rand(1024, seg.model.in_channels, size[1], size[0], device="cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for b0 in range(0, 256, 64):
            seg.model(x[b0:b0 + 64])
        torch.cuda.synchronize()
        t = time.perf_counter()
        for b0 in range(0, len(x), 256):
            seg.model(x[b0:b0 + 256])
        torch.cuda.synchronize()
        t_net = time.perf_counter() - t
    seg.segment(volume)  # warm
    t = time.perf_counter()
    seg.segment(volume)
    t_ct = time.perf_counter() - t
    return {"device_name": torch.cuda.get_device_name(0), "amp_dtype": str(dtype),
            "network_slices_per_second": round(len(x) / t_net, 1), "whole_ct_seconds": round(t_ct, 3),
            "roi_slices": n_roi}


def metal_reduction_cost(seg, ct_path: Path, volume, weights, tmp: Path, repeats: int = 3) -> dict:
    """End-to-end seconds with the weights' metal-artefact reduction and with it switched off, interleaved."""
    import shutil

    from MnetImSegmentLib.engine.inference import Segmenter

    if seg.card.input_spec.metal_reduction == "none":
        return {"weights_use_it": False}
    off = tmp / "weights_without_mar"
    shutil.copytree(weights or _default_weights(), off, dirs_exist_ok=True)
    card = json.loads((off / "model.json").read_text())
    del card["input"]["metal_reduction"]
    (off / "model.json").write_text(json.dumps(card, indent=1))
    paths = {"with": weights or _default_weights(), "without": off}
    walls = {k: [] for k in paths}
    for _ in range(repeats):
        for k, w in paths.items():
            walls[k].append(run_cli(ct_path, tmp / f"mar_{k}.seg.nrrd", w)["wall_seconds"])
    warm = {}
    for k, w in paths.items():
        s = Segmenter(w, device="cpu")
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            s.segment(volume)
            times.append(time.perf_counter() - t)
        warm[k] = min(times[1:])
    cli = {k: min(v) for k, v in walls.items()}
    return {"weights_use_it": True, "cli_wall_seconds": {k: round(v, 3) for k, v in cli.items()},
            "cli_ratio": round(cli["with"] / cli["without"], 3),
            "segment_warm_seconds": {k: round(v, 3) for k, v in warm.items()},
            "segment_warm_ratio": round(warm["with"] / warm["without"], 3)}


def metal_reduction_figures(seg, volume, network_seconds: float) -> dict:
    """NMAR / LI-MAR on the CT's ROI against the network, and the sparse projector against grid_sample."""
    import torch

    from MnetImSegmentLib.engine import projection
    from MnetImSegmentLib.engine.metal_reduction import METAL_THRESHOLD_HU, reduce_metal_artifacts
    from MnetImSegmentLib.engine.quality import check_scope
    from MnetImSegmentLib.engine.roi import crop, locate_roi

    fit = check_scope(volume, seg.card.quality_spec, None).fit
    cropped = crop(volume, locate_roi(volume, seg.card.roi_spec, fit=fit), seg.card.roi_spec)
    hu, spacing = cropped.array, cropped.geometry.spacing[:2]
    out = {"metal_slices": int((hu >= METAL_THRESHOLD_HU).any(axis=(1, 2)).sum()), "roi_slices": int(hu.shape[0])}
    projection.projector.cache_clear()
    for method in ("normalised", "linear"):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            reduce_metal_artifacts(hu, spacing, method)
            times.append(time.perf_counter() - t)
        out[method] = {"first_seconds": round(times[0], 3), "warm_seconds": round(min(times[1:]), 3),
                       "warm_vs_network": round(min(times[1:]) / network_seconds, 3)}
    n = 114
    p = projection.projector(n, n)
    images = torch.rand(40, n, n)
    t = time.perf_counter()
    projection.radon(images, projection.rotation_grids(n, p.angles), 1.0)
    t_grid = time.perf_counter() - t
    t = time.perf_counter()
    p.project(images, 1.0)
    t_sparse = time.perf_counter() - t
    out["projector_40_slices"] = {"grid_sample_seconds": round(t_grid, 4), "sparse_seconds": round(t_sparse, 4),
                                  "speedup": round(t_grid / t_sparse, 1)}
    return out


def main(argv=None) -> dict:
    import torch

    from MnetImSegmentLib import __version__
    from MnetImSegmentLib.engine.inference import Segmenter, fold_batchnorm, reference_segment
    from MnetImSegmentLib.engine.io import write_image
    from MnetImSegmentLib.research.phantom import make_phantom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--slices", type=int, default=120)
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--seed", type=int, default=20231)
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true", help="skip the scaling and batch sections")
    args = p.parse_args(argv)

    result: dict = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "platform": platform.platform(), "processor": platform.processor(),
                                "python": platform.python_version(), "torch": torch.__version__,
                                "mnetimsegment": __version__}}
    tmp = Path(tempfile.mkdtemp(prefix="mnetim-bench-"))
    # 0.9 x 0.9 x 2.5 mm, 512 x 512 x 120: the clinical size the targets are stated for.
    fov_matrix = args.matrix
    ph = make_phantom(args.seed, matrix=fov_matrix, slice_mm=2.5, z_extent_mm=2.5 * args.slices)
    ct_path = tmp / "ct.nii.gz"
    write_image(ph.ct, ct_path)
    result["input"] = {"shape_zyx": list(ph.ct.shape), "spacing_xyz_mm": [round(s, 3) for s in ph.ct.geometry.spacing]}

    # 1. The CLI end to end in a fresh process (what a user waits for).
    runs = [run_cli(ct_path, tmp / "out.seg.nrrd", args.weights) for _ in range(2)]
    cli = min(runs, key=lambda r: r["wall_seconds"])
    result["cli"] = {"wall_seconds": cli["wall_seconds"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     "stage_seconds": cli["stage_seconds"], "roi": cli["roi"], "ctv_ml": cli["ctv_ml"]}

    # 2. The network against the machine's GEMM rate, same process, same threads.
    seg = Segmenter(args.weights, device="cpu")
    card = seg.card
    size = card.roi_spec.size_px
    n_roi = cli["roi"]["slice_range"][1] - cli["roi"]["slice_range"][0] + 1
    gflop = flops_per_slice(seg.model, size)
    gemm = gemm_gflops()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=seg.precision == "bf16"):
        t_net = time_network(seg.model, n_roi, size, seg.batch_size, seg.channels_last)
    t_net_fp32 = time_network(seg.model, n_roi, size, seg.batch_size, seg.channels_last)
    achieved = gflop * n_roi / t_net
    result["network"] = {"input_size": list(size), "roi_slices": n_roi, "batch": seg.batch_size,
                         "seconds": round(t_net, 3), "slices_per_second": round(n_roi / t_net, 1),
                         "seconds_fp32": round(t_net_fp32, 3),
                         "achieved_gflops_fp32": round(gflop * n_roi / t_net_fp32, 1),
                         "efficiency_vs_gemm_fp32": round(gflop * n_roi / t_net_fp32 / gemm, 3),
                         "gflop_per_slice": round(gflop, 3), "achieved_gflops": round(achieved, 1),
                         "gemm_gflops": round(gemm, 1), "efficiency_vs_gemm": round(achieved / gemm, 3),
                         "folded_batchnorm": seg.folded, "precision": seg.precision}

    # 3. Optimised vs naive reference path, same process.
    t = time.perf_counter()
    fast = seg.segment(ph.ct)
    t_fast = time.perf_counter() - t
    from MnetImSegmentLib.engine.weights import load_weights

    ref_model, _ = load_weights(args.weights or _default_weights())
    t = time.perf_counter()
    ref_mask = reference_segment(ref_model, card, ph.ct)
    t_ref = time.perf_counter() - t
    truth = ph.mask().array
    result["reference"] = {"optimised_seconds": round(t_fast, 3), "reference_seconds": round(t_ref, 3),
                           "speedup": round(t_ref / t_fast, 2), "dice_optimised_vs_reference": round(dice(fast.mask.array, ref_mask), 5),
                           "identical": bool(np.array_equal(fast.mask.array, ref_mask)),
                           "dice_vs_truth": round(dice(fast.mask.array, truth), 4)}

    # 4. Levers, one at a time from the shipped configuration.
    plain, _ = load_weights(args.weights or _default_weights())
    folded = fold_batchnorm(load_weights(args.weights or _default_weights())[0])
    levers = {}
    for name, model, batch, cl in [("batch1_nchw", plain, 1, False), ("batch16_nchw", plain, 16, False),
                                   ("batch16_channels_last", plain, 16, True), ("batch32_channels_last", plain, 32, True),
                                   ("batch16_channels_last_folded_bn", folded, 16, True)]:
        levers[name] = round(time_network(model, n_roi, size, batch, cl), 3)
    result["levers_network_seconds"] = levers

    if not args.quick:
        scaling = {"slices": {}, "crop": {}}
        for n in (20, 40, 80):
            scaling["slices"][n] = round(time_network(seg.model, n, size, 16, True, repeats=1), 3)
        for s in (96, 128, 160):
            scaling["crop"][s] = round(time_network(seg.model, 40, (s, s), 16, True, repeats=1), 3)
        result["scaling_network_seconds"] = scaling
        # Many CTs: one process, the model loaded once, 1 and 2 threads.
        folder = tmp / "batch"
        folder.mkdir()
        for i in range(3):
            write_image(make_phantom(args.seed + 1 + i, matrix=fov_matrix, slice_mm=2.5, z_extent_mm=200).ct,
                        folder / f"ct{i}.nii.gz")
        batch = {}
        for threads in (1, 2):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = tmp / f"segs{threads}"
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "MnetImSegmentLib.cli", "segment", str(folder), "-o", str(out),
                            "--json", "--device", "cpu"] + (["--weights", args.weights] if args.weights else []),
                           check=True, capture_output=True, env=env)
            batch[f"{threads}_threads_cts_per_minute"] = round(3 / (time.perf_counter() - t) * 60, 2)
        result["batch"] = batch

    result["metal_reduction"] = metal_reduction_figures(seg, ph.ct, t_net)
    result["metal_reduction"]["end_to_end"] = metal_reduction_cost(seg, ct_path, ph.ct, args.weights, tmp)
    result["slicer"] = slicer_overhead(ph.ct, args.weights)
    if torch.cuda.is_available():
        result["gpu"] = gpu_figures(ph.ct, args.weights, n_roi, size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


def _default_weights():
    from MnetImSegmentLib.engine.weights import default_weights_dir

    return default_weights_dir()


if __name__ == "__main__":
    main()
