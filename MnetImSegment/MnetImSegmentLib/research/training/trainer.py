"""The training loop of the paper, resumable and seeded.

Recipe (Huang et al. 2023, "Training Details"): Adam, initial learning rate 1e-3 "decayed by a
factor of 0.1 for each of the first three epochs" (``lr_milestones``: the epochs after which the
rate is multiplied by ``lr_gamma``; the paper's reading is (1, 2, 3)), deep-supervision loss with
alpha 0.1 / beta 0.9, early stopping on the validation volumetric Dice, and the binarisation
threshold chosen where the validation volumetric Dice is best.

An "epoch" here is ``windows_per_epoch`` sampled windows (the paper's epoch is one pass over 3770
slices); the default of 0 means one pass over the training slices that lie inside the ROIs.

A run folder holds ``config.json``, ``splits.json`` (the manifest, each split's scan ids and phantom
styles: an unfinished run's export reads it), ``log.csv`` (one row per epoch), ``checkpoint.pt`` (last state,
for ``resume``), ``best.safetensors`` (best validation Dice; its metadata records the epoch, the Dice
and the threshold), ``tensorboard/`` (the same scalars for TensorBoard, when the ``tensorboard``
package is installed) and, once finished, ``weights/`` (the exported weights folder with its model
card) and ``summary.json``. A finished run folder is never overwritten.

Started by ``torchrun`` the same loop trains with DistributedDataParallel (``distributed.py``); in
a single process it is exactly the one-device loop (same random draws, same weights).
"""

from __future__ import annotations

import csv
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ...core.errors import DatasetError, WeightsError
from ...core.files import atomic_path, write_text
from ...engine.roi import RoiSpec
from ...engine.weights import load_weights, read_card
from ...engine.windows import InputSpec, make_windows
from ..manifest import read_manifest, split_records, split_size_warnings, style_counts
from ..metrics import volumetric_dice
from . import distributed as dist_
from .data import (ATLAS_FILE, PreparedScan, WindowSampler, attach_prior, ctv_atlas_of, prepare_scan, save_atlas,
                   scan_weights_for)

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.10, 0.91, 0.05))


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to ``config.json`` and the model card)."""

    model: str = "Mnet_Im"
    model_overrides: dict = field(default_factory=dict)
    epochs: int = 30
    windows_per_epoch: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    lr_milestones: tuple = (1, 2, 3)
    lr_gamma: float = 0.1
    patience: int = 5
    alpha: float = 0.1
    beta: float = 0.9
    scale_weights: Optional[tuple] = None
    positive_fraction: float = 0.7
    jitter_px: int = 16
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_threads: int = 0
    max_minutes: float = 0.0
    augment: str = "full"  # none | basic | full (training.augment); runs before 0.3 used "basic"
    roi: dict = field(default_factory=lambda: RoiSpec().to_dict())
    input: dict = field(default_factory=lambda: InputSpec().to_dict())
    init_weights: str = ""  # fine-tuning: a weights folder whose tensors start the training ("" = random)
    style_weights: Optional[dict] = None  # manifest style -> how often its scans are drawn (others: 1)
    ctv_camouflage: float = 0.0  # share of windows whose CTV is made iso-dense (data.camouflage_ctv)
    fat_fill: float = 0.0  # share of windows whose fat around the CTV is filled (data.fill_fat_around_ctv)
    ctv_reveal: float = 0.0  # share of windows whose CTV is shifted by 20-80 HU (data.reveal_ctv)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        for option in ("ctv_camouflage", "fat_fill", "ctv_reveal"):
            if not d[option]:  # off: configs and cards stay as before the option existed
                del d[option]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The configuration a run folder's ``config.json`` holds."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise DatasetError(f"Unknown training option(s) {', '.join(unknown)} (written by a newer MnetImSegment?).")
        d = dict(d)
        d.setdefault("augment", "basic")  # runs written before the option existed trained with the basic set
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        if d.get("scale_weights") is not None:
            d["scale_weights"] = tuple(d["scale_weights"])
        return cls(**d)


def check_training_options(config: TrainConfig) -> Optional[dict]:
    """Check what a run could only find out later (ROI size vs the network, fine-tuning weights), cheaply.

    Returns:
        The parent model of ``config.init_weights`` (or None).

    Raises:
        DatasetError: The ROI size does not suit the model.
        WeightsError: ``init_weights`` is not valid weights for this network and input.
    """
    checker = Trainer("", "", config, progress=False)
    checker._check_prior_bias()
    checker._check_roi_size()
    return checker._check_init_weights()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: lr * gamma ** (number of milestones <= epoch)."""
    return config.lr * config.lr_gamma ** sum(1 for m in config.lr_milestones if epoch >= m)


def predict_prepared(model, scan: PreparedScan, size_px, input_spec: InputSpec, device: str,
                     batch_size: int = 16) -> np.ndarray:
    """Probabilities on the centre crop of a prepared scan (all its ROI slices)."""
    import torch


    h, w = int(size_px[1]), int(size_px[0])
    H, W = scan.image.shape[1:]
    oy, ox = (H - h) // 2, (W - w) // 2
    stack = scan.image[:, oy:oy + h, ox:ox + w].astype(np.float32)
    prior = None if scan.prior is None else scan.prior[:, oy:oy + h, ox:ox + w].astype(np.float32)
    out = np.empty(stack.shape, np.float32)
    model.eval()
    with torch.inference_mode():
        for b0 in range(0, len(stack), batch_size):
            c = np.arange(b0, min(b0 + batch_size, len(stack)))
            x = torch.from_numpy(make_windows(stack, c, input_spec.slices_per_window, prior)).to(device)
            out[c] = torch.sigmoid(model(x).float())[:, 0].cpu().numpy()
    return out


def validate(model, scans: list[PreparedScan], size_px, input_spec: InputSpec, device: str) -> dict:
    """Mean volumetric Dice over scans for each candidate threshold; the best one."""
    h, w = int(size_px[1]), int(size_px[0])
    per_t = {t: [] for t in THRESHOLDS}
    for scan in scans:
        prob = predict_prepared(model, scan, size_px, input_spec, device)
        H, W = scan.mask.shape[1:]
        truth = scan.mask[:, (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]
        for t in THRESHOLDS:
            per_t[t].append(volumetric_dice(prob >= t, truth))
    means = {t: float(np.mean(v)) for t, v in per_t.items()}
    best = max(means, key=lambda t: (means[t], -abs(t - 0.5)))
    return {"dice": means[best], "threshold": best, "dice_at_0.5": means[0.5]}


class Trainer:
    """Train one model on a manifest into a run folder (see module docstring).

    Args:
        manifest: The CSV manifest (see ``data.py``).
        run_dir: The run folder: new, or holding an unfinished run of the same configuration (resume).
        config: What to train.
        progress: Show a progress bar.
        tensorboard: Also write TensorBoard scalars to ``run_dir/tensorboard``. ``None`` (default):
            when the ``tensorboard`` package is installed. Logging only; the training is the same.
    """

    def __init__(self, manifest, run_dir, config: TrainConfig, progress: bool = True,
                 tensorboard: Optional[bool] = None):
        self.manifest = Path(manifest)
        self.run_dir = Path(run_dir)
        self.config = config
        self.progress = progress
        self.tensorboard = tensorboard
        self.warnings: list = []  # split-size warnings, also in the summary
        self.parent: Optional[dict] = None  # the model fine-tuned from (init_weights), for the card
        self.atlas = None  # the CTV atlas of an "atlas" prior run, built from its training split

    # -- run folder -------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> Optional[dict]:
        d = self.run_dir
        if (d / "summary.json").exists():
            raise DatasetError(f"'{d}' holds a finished training run; choose a new run folder (nothing was overwritten).")
        if (d / "checkpoint.pt").exists():
            if not resume:
                raise DatasetError(f"'{d}' holds an unfinished run; pass --resume to continue it or choose a new folder.")
            return self._same_config_or_fail()
        if (d / "config.json").exists() and _EARLY_FILES >= {p.name for p in d.iterdir() if not p.name.startswith(".")}:
            # The run stopped before finishing its first epoch: nothing of value to keep, restart it.
            if not resume:
                raise DatasetError(f"'{d}' holds a run that stopped before its first epoch ended; pass --resume "
                                   "to start it again or choose a new folder.")
            self._same_config_or_fail()
            return None
        if d.exists() and any(d.iterdir()):
            raise DatasetError(f"'{d}' is not empty and holds no training run; choose a new run folder.")
        return None

    def _same_config_or_fail(self) -> dict:
        """The saved configuration, updated with safe changes; refuses others, naming them."""
        saved = json.loads((self.run_dir / "config.json").read_text())
        wanted = json.loads(json.dumps(self.config.to_dict()))
        changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        unsafe = [k for k in changed if k not in RESUME_SAFE_OPTIONS]
        if unsafe:
            detail = "; ".join(f"{k}: {saved.get(k)!r} then, {wanted.get(k)!r} now" for k in unsafe)
            raise DatasetError(f"'{self.run_dir}' was started with other options ({detail}); resume with the same "
                               f"values (only {', '.join(sorted(RESUME_SAFE_OPTIONS))} may change on --resume).")
        return wanted  # safe changes (more epochs, another device): run() writes them to config.json

    def _check_roi_size(self) -> None:
        """Refuse an ROI the network cannot take before anything is written or read."""
        import torch

        from ...models import build_model  # torch

        cfg = self.config
        size = RoiSpec.from_dict(cfg.roi).size_px
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            multiple = build_model(cfg.model, in_channels=InputSpec.from_dict(cfg.input).channels,
                                   **cfg.model_overrides).size_multiple
        if any(int(n) < multiple or int(n) % multiple for n in size):
            suggestion = max(multiple, int(size[0]) // multiple * multiple)
            raise DatasetError(f"The ROI size {size[0]} x {size[1]} px is not a multiple of {multiple}, which "
                               f"{cfg.model} needs; choose e.g. --roi-size {suggestion}.")

    def _check_prior_bias(self) -> None:
        cfg = self.config
        if not cfg.model_overrides.get("prior_bias"):
            return
        from ...models import MNET_FAMILY  # torch

        if cfg.model not in MNET_FAMILY:
            raise DatasetError(f"The prior bias is an option of the M-Net family ({', '.join(MNET_FAMILY)}), "
                               f"not of {cfg.model}.")
        if InputSpec.from_dict(cfg.input).applicator_prior == "none":
            raise DatasetError("The prior bias adds the prior channel's logit to the output, and this run has no "
                               "prior channel; train with --applicator-prior atlas.")

    def _check_init_weights(self) -> Optional[dict]:
        """The parent model of a fine-tuning run (name, version, SHA-256), checked against this run's options.

        Raises:
            WeightsError: The folder is not valid weights, or its network or input differ from this run's.
        """
        cfg = self.config
        if not cfg.init_weights:
            return None
        from ...models import model_config  # torch

        card = read_card(cfg.init_weights)
        if card.member_thresholds is not None:
            raise WeightsError(f"'{cfg.init_weights}' is an ensemble of {len(card.member_thresholds)} networks; fine-tune "
                               "one of its members' weights folders (mnetim ensemble combines them again).")
        spec = InputSpec.from_dict(cfg.input)
        plain = lambda d: json.loads(json.dumps(d))  # noqa: E731  (tuples and lists compare equal)
        mine = plain(model_config(cfg.model, in_channels=spec.channels, **cfg.model_overrides))
        # A parent without the applicator prior may start a run with one: its new input channel starts at zero.
        widening = card.input_spec.applicator_prior == "none" and spec.applicator_prior != "none"
        if widening:
            mine["in_channels"] = card.input_spec.channels
            spec = replace(spec, applicator_prior="none")
        # One prior channel may replace another (the tandem tube -> the CTV atlas): same channel, new content.
        elif "none" not in (card.input_spec.applicator_prior, spec.applicator_prior):
            spec = replace(spec, applicator_prior=card.input_spec.applicator_prior)
        # Metal-artefact reduction changes the images, not the network: fine-tuning adapts the parent to it.
        spec = replace(spec, metal_reduction=card.input_spec.metal_reduction)
        theirs = dict(card.config)
        if "prior_bias" in mine:
            # Cards from before the prior bias existed lack the field: theirs is off. A parent without the
            # bias may start a run with it (its weight starts at 1, the other tensors are the parent's).
            theirs["prior_bias"] = bool(theirs.get("prior_bias", False)) or bool(mine["prior_bias"])
        if card.architecture != cfg.model or theirs != mine:
            raise WeightsError(f"'{cfg.init_weights}' holds {card.architecture} with another configuration than "
                               f"this run's {cfg.model}; fine-tune with the same --model and --model-options.")
        theirs_roi, mine_roi = plain(card.roi_spec.to_dict()), plain(RoiSpec.from_dict(cfg.roi).to_dict())
        if plain(card.input_spec.to_dict()) != plain(spec.to_dict()) or theirs_roi != mine_roi:
            size, spacing = theirs_roi["size_px"][0], theirs_roi["spacing_mm"][0]
            raise WeightsError(f"'{cfg.init_weights}' was trained on another input (ROI {size} px at {spacing} mm, "
                               f"HU window {card.input_spec.hu_window}); fine-tune with --roi-size {size} "
                               f"--roi-spacing {spacing}.")
        return {"name": card.raw["name"], "version": card.raw["version"],
                "tensors_sha256": card.raw.get("tensors_sha256", ""), "folder": str(cfg.init_weights)}

    def run(self, resume: bool = False) -> Optional[dict]:
        """Train; return the summary (on rank 0; ``None`` on the other ranks of a torchrun job).

        Args:
            resume: Continue the unfinished run in ``run_dir`` (same configuration required).

        Raises:
            DatasetError: The run folder holds a finished run, another configuration, or unrelated
                files; the manifest or the data are unusable.
        """
        import torch

        from ...models import build_model, model_config  # torch
        from ..losses import DeepSupervisionLoss  # torch

        cfg = self.config
        ctx = dist_.setup(cfg.device)
        main = ctx.is_main
        problem = None
        if main:
            try:
                self._check_run_dir(resume)
                self._check_prior_bias()
                self._check_roi_size()
                self.parent = self._check_init_weights()
            except (DatasetError, WeightsError) as exc:
                problem = str(exc)
        problem = dist_.broadcast_object(ctx, problem)  # every rank fails with rank 0's message
        if problem:
            raise DatasetError(problem)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2), overwrite=True)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        device = ctx.device
        roi_spec, input_spec = RoiSpec.from_dict(cfg.roi), InputSpec.from_dict(cfg.input)

        records = read_manifest(self.manifest)
        splits = split_records(records, seed=cfg.seed)
        if not splits["train"] or not splits["val"]:
            raise DatasetError("Training needs at least one training and one validation scan.")
        scan_weights = scan_weights_for(splits["train"], cfg.style_weights)  # refuse a typo before the slow part
        self.warnings = split_size_warnings(splits)
        if main:  # so that exporting an unfinished run can still say what it was trained on
            write_text(self.run_dir / SPLITS_FILE, json.dumps(split_description(self.manifest, splits), indent=2),
                       overwrite=True)
        say = _say if (self.progress and main) else (lambda line: None)
        for line in self.warnings:
            say(f"warning: {line}")
        say(f"preparing {len(splits['train'])} training and {len(splits['val'])} validation scan(s) "
            f"(ROI crops; {len(splits['test'])} test scan(s) are kept for the end)...")
        t_prep = time.perf_counter()
        # Only rank 0 validates, so only it needs the validation scans.
        prepared = {s: [prepare_scan(r, roi_spec, input_spec, cfg.jitter_px) for r in splits[s]]
                    for s in (("train", "val") if main else ("train",))}
        self.atlas = None
        if input_spec.applicator_prior == "atlas":
            # Built from the training split only (never the validation or test scans), the same on every rank.
            self.atlas = ctv_atlas_of(prepared["train"])
            for scan in (s for split in prepared.values() for s in split):
                attach_prior(scan, input_spec, self.atlas)
            if main:
                save_atlas(self.run_dir / ATLAS_FILE, self.atlas)
            say(f"CTV atlas: {self.atlas.scans} training scan(s) with a trusted applicator fit")
        t_prep = time.perf_counter() - t_prep
        if main and not any(s.mask.any() for s in prepared["val"]):
            raise DatasetError("No validation scan contains CTV (inside its ROI crop): the threshold and early "
                               "stopping would be chosen on nothing; put scans with CTV in the validation split.")
        sampler = WindowSampler(prepared["train"], roi_spec.size_px, input_spec.slices_per_window,
                                cfg.positive_fraction, input_spec.hu_window[1] - input_spec.hu_window[0],
                                augment=cfg.augment, seed=cfg.seed, scan_weights=scan_weights,
                                ctv_camouflage=cfg.ctv_camouflage, fat_fill=cfg.fat_fill, ctv_reveal=cfg.ctv_reveal,
                                hu_window_low=input_spec.hu_window[0])
        n_train_slices = sum(s.image.shape[0] for s in prepared["train"])
        windows_per_epoch = cfg.windows_per_epoch or n_train_slices
        steps = max(1, windows_per_epoch // (cfg.batch_size * ctx.world_size))

        model = build_model(cfg.model, in_channels=input_spec.channels, **cfg.model_overrides).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        loss_fn = DeepSupervisionLoss(cfg.alpha, cfg.beta, cfg.scale_weights)
        use_amp = cfg.amp and device.startswith("cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        # Each rank draws its own windows; rank 0 draws what a one-process run draws.
        rng = np.random.default_rng(cfg.seed + ctx.rank)
        state = {"epoch": 0, "best_dice": -1.0, "best_epoch": -1, "best_threshold": 0.5, "bad_epochs": 0,
                 "seconds": 0.0}
        ckpt = self.run_dir / "checkpoint.pt"
        if cfg.init_weights and not (resume and ckpt.exists()):
            load_widened(model, load_weights(cfg.init_weights)[0].state_dict())
        if resume and ckpt.exists():
            saved = torch.load(ckpt, map_location=device, weights_only=False)
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            state = saved["state"]
            rng_states = saved.get("rng_ranks") or [saved["rng"]]
            if ctx.rank < len(rng_states) and len(rng_states) == ctx.world_size:
                rng.bit_generator.state = rng_states[ctx.rank]
            elif ctx.rank == 0:
                rng.bit_generator.state = saved["rng"]
            else:  # resumed with more processes than saved: a fresh, still distinct stream
                rng = np.random.default_rng([cfg.seed + ctx.rank, state["epoch"]])
            torch.set_rng_state(saved["torch_rng"].cpu())  # map_location moved it to the GPU on CUDA
            if use_amp and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])  # else AMP restarts from its initial loss scale

        net = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.startswith("cuda") else None)

        log = writer = board = None
        if main:
            log_path = self.run_dir / "log.csv"
            new_log = not log_path.exists()
            log = open(log_path, "a", newline="")
            writer = csv.writer(log)
            if new_log:
                writer.writerow(["epoch", "lr", "train_loss", "val_dice", "val_threshold", "val_dice_at_0.5", "seconds"])
            board = _tensorboard_writer(self.run_dir / "tensorboard", self.tensorboard)
        started = time.perf_counter() - state["seconds"]
        bar = _progress_bar(cfg.epochs, state["epoch"], self.progress and main)
        stopped = state.get("stopped_by", "epochs")
        while state["epoch"] < cfg.epochs and "stopped_by" not in state:
            epoch = state["epoch"]
            lr = lr_at(cfg, epoch)
            for group in optimiser.param_groups:
                group["lr"] = lr
            net.train()
            losses = []
            t_epoch = time.perf_counter()
            step_bar = _step_bar(steps * cfg.batch_size, epoch + 1, cfg.epochs, self.progress and main)
            for _ in range(steps):
                x, y = sampler.batch(rng, cfg.batch_size)
                x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                optimiser.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    outputs = net(x)
                loss = loss_fn(outputs, y)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                losses.append(loss.item())
                step_bar.update(cfg.batch_size)
                step_bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            step_bar.close()
            train_loss = dist_.mean_over_ranks(ctx, float(np.mean(losses)))
            rng_states = dist_.gather_objects(ctx, rng.bit_generator.state) if ctx.distributed else None
            decision = None
            if main:
                # The unwrapped model: a DDP forward on one rank alone would wait for the others.
                val = validate(model, prepared["val"], roi_spec.size_px, input_spec, device)
                state["epoch"] = epoch + 1
                state["seconds"] = time.perf_counter() - started
                improved = val["dice"] > state["best_dice"]
                if improved:
                    state.update(best_dice=val["dice"], best_epoch=epoch + 1, best_threshold=val["threshold"], bad_epochs=0)
                    _save_tensors(model, self.run_dir / "best.safetensors",
                                  {"epoch": epoch + 1, "val_dice": val["dice"], "threshold": val["threshold"]})
                else:
                    state["bad_epochs"] += 1
                writer.writerow([epoch + 1, f"{lr:.3g}", f"{train_loss:.5f}", f"{val['dice']:.4f}",
                                 val["threshold"], f"{val['dice_at_0.5']:.4f}", f"{state['seconds']:.1f}"])
                log.flush()
                if board is not None:
                    _board_epoch(board, epoch + 1, lr, train_loss, val, state, time.perf_counter() - t_epoch)
                if state["bad_epochs"] >= cfg.patience:
                    decision = "early stopping"
                elif cfg.max_minutes and state["seconds"] > 60 * cfg.max_minutes:
                    decision = "time budget"
                if decision:
                    # Kept in the checkpoint so a resumed run does not train past its stop.
                    state["stopped_by"] = decision
                ckpt_data = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": state,
                             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
                if rng_states is not None:
                    ckpt_data["rng_ranks"] = rng_states
                if use_amp:
                    ckpt_data["scaler"] = scaler.state_dict()
                with atomic_path(ckpt, overwrite=True) as tmp:  # a kill mid-save keeps the last good checkpoint
                    torch.save(ckpt_data, tmp)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}", val_dice=f"{val['dice']:.3f}", best=f"{state['best_dice']:.3f}")
            # All ranks leave the loop at the same epoch, on rank 0's decision.
            decision, state_epoch = dist_.broadcast_object(ctx, (decision, state["epoch"]))
            state["epoch"] = state_epoch
            if decision:
                stopped = decision
                break
        bar.close()
        if not main:
            self.model = model.eval()
            self.splits = splits
            return None
        log.close()
        if board is not None:
            board.close()

        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(self.run_dir / "best.safetensors"), device=device))
        summary = {
            "stopped_by": stopped, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
            "val_dice": round(state["best_dice"], 4), "threshold": state["best_threshold"],
            "train_seconds": round(state["seconds"], 1), "prepare_seconds": round(t_prep, 1),
            "steps_per_epoch": steps, "batch_size": cfg.batch_size,
            "scans": {s: [r.scan_id for r in splits[s]] for s in splits},
            "train_slices_in_roi": n_train_slices, "device": device,
            "model_config": model_config(cfg.model, in_channels=input_spec.channels, **cfg.model_overrides),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "cpu_threads": torch.get_num_threads()},
        }
        if self.warnings:
            summary["warnings"] = list(self.warnings)
        if self.parent:
            summary["parent_model"] = self.parent
        if ctx.distributed:
            summary["distributed"] = ctx.to_dict()
        self.model = model.eval()
        self.splits = splits
        return summary


# Options that change neither the data, the network nor the optimiser's state: a resumed run may
# take new values (train longer, on another device, with another time budget).
RESUME_SAFE_OPTIONS = frozenset({"epochs", "patience", "max_minutes", "device", "num_threads"})

# Files a run writes before its first checkpoint; a folder holding only these (and the hidden
# temporary files of interrupted atomic writes) can be restarted.
SPLITS_FILE = "splits.json"
_EARLY_FILES = {"config.json", "log.csv", "best.safetensors", "best.tmp", "tensorboard", ATLAS_FILE, SPLITS_FILE}


def split_description(manifest, splits: dict) -> dict:
    """What ``splits.json`` records: the manifest, and each split's scan ids and phantom-style counts."""
    return {"manifest": str(Path(manifest).resolve()),
            "scans": {s: [r.scan_id for r in records] for s, records in splits.items()},
            "styles": {s: style_counts(records) for s, records in splits.items()}}


# Tensors a model may have that its parent lacks (MNetConfig.prior_bias); every other one must come from the parent.
GROWN_TENSORS = ("prior_weight",)


def load_widened(model, parent_state: dict) -> None:
    """Load a parent's tensors into ``model``; input convolutions the model has more input channels for
    (the applicator prior) get the parent's weights for the old channels and zeros for the new ones,
    so the widened model computes exactly what the parent did until training moves those zeros.
    """
    import torch

    own = model.state_dict()
    # The prior bias's weight is new to a parent without it: it keeps its initial value.
    state = {k: own[k] for k in GROWN_TENSORS if k in own and k not in parent_state}
    for key, value in parent_state.items():
        target = own.get(key)
        if target is not None and value.ndim >= 2 and target.shape != value.shape \
                and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:] \
                and target.shape[1] > value.shape[1]:
            wide = torch.zeros_like(target)
            wide[:, : value.shape[1]] = value
            value = wide
        state[key] = value
    model.load_state_dict(state)


def _save_tensors(model, path: Path, info: Optional[dict] = None) -> None:
    """Write the weights atomically; ``info`` (epoch, Dice, threshold) goes into the file's metadata."""
    from safetensors.torch import save_file

    metadata = {k: str(v) for k, v in (info or {}).items()} or None
    with atomic_path(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=metadata)


def _tensorboard_writer(folder: Path, wanted: Optional[bool]):
    """A SummaryWriter, or None when not wanted or (for the default ``None``) not installed."""
    if wanted is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if wanted:
            raise DatasetError("TensorBoard logging was requested but the 'tensorboard' package is not installed "
                               "(pip install tensorboard).") from None
        return None
    return SummaryWriter(log_dir=str(folder))


def _board_epoch(board, epoch: int, lr: float, train_loss: float, val: dict, state: dict, seconds: float) -> None:
    """The scalars of one epoch: the columns of log.csv plus the best-so-far Dice."""
    board.add_scalar("train/loss", train_loss, epoch)
    board.add_scalar("train/lr", lr, epoch)
    board.add_scalar("train/epoch_seconds", seconds, epoch)
    board.add_scalar("val/dice", val["dice"], epoch)
    board.add_scalar("val/threshold", val["threshold"], epoch)
    board.add_scalar("val/dice_at_0.5", val["dice_at_0.5"], epoch)
    board.add_scalar("val/best_dice", state["best_dice"], epoch)
    board.flush()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _step_bar(windows: int, epoch: int, epochs: int, enabled: bool):
    """Windows within one epoch: rate (windows/s) and ETA from the first batches on."""
    from tqdm import tqdm

    return tqdm(total=windows, desc=f"epoch {epoch}/{epochs}", unit="window", disable=not enabled,
                leave=False, dynamic_ncols=True, mininterval=1.0)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="epochs", unit="epoch", disable=not enabled, dynamic_ncols=True)
