"""Training additions: TensorBoard, resume, threshold selection, bad input, DDP (torchrun), export."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from MnetImSegmentLib.core.errors import DatasetError, WeightsError
from MnetImSegmentLib.research.manifest import read_manifest, write_manifest
from MnetImSegmentLib.research.training import Trainer
from MnetImSegmentLib.research.training.data import DatasetWarning

from helpers.research_data import write_dataset, tiny_config

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 phantoms: 4 train, 1 val, 1 test."""
    return write_dataset(tmp_path_factory.mktemp("ds"), range(10, 16), splits=["train"] * 4 + ["val", "test"])


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_tensors(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# --------------------------------------------------------------------------- TensorBoard, determinism
def test_tensorboard_is_logging_only_and_writes_scalars(dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config()
    Trainer(dataset, tmp_path / "on", cfg, progress=False, tensorboard=True).run()
    Trainer(dataset, tmp_path / "off", cfg, progress=False, tensorboard=False).run()
    assert not (tmp_path / "off" / "tensorboard").exists()
    # Same data, seed and device: logging must not change a single weight.
    assert _same_tensors(_weights(tmp_path / "on" / "best.safetensors"), _weights(tmp_path / "off" / "best.safetensors"))
    assert _without_seconds(_log_rows(tmp_path / "on")) == _without_seconds(_log_rows(tmp_path / "off"))

    events = EventAccumulator(str(tmp_path / "on" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/dice", "val/threshold", "val/best_dice"} <= tags
    dice = [e.value for e in events.Scalars("val/dice")]
    assert dice == pytest.approx([float(r["val_dice"]) for r in _log_rows(tmp_path / "on")], abs=1e-4)


def test_tensorboard_default_follows_installation(dataset, tmp_path):
    try:
        import tensorboard  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    Trainer(dataset, tmp_path / "run", tiny_config(epochs=1), progress=False).run()
    assert (tmp_path / "run" / "tensorboard").exists() == installed


# --------------------------------------------------------------------------- resume and run folders
def test_resume_after_interruption_equals_uninterrupted_run(dataset, tmp_path, monkeypatch):
    import MnetImSegmentLib.research.training.trainer as trainer_mod

    cfg = tiny_config(epochs=3, lr_milestones=(1, 2))
    Trainer(dataset, tmp_path / "straight", cfg, progress=False).run()

    real_validate, calls = trainer_mod.validate, []

    def crash_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "validate", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(dataset, tmp_path / "cut", cfg, progress=False).run()
    monkeypatch.setattr(trainer_mod, "validate", real_validate)
    assert len(_log_rows(tmp_path / "cut")) == 1
    with pytest.raises(DatasetError, match="--resume"):
        Trainer(dataset, tmp_path / "cut", cfg, progress=False).run()
    Trainer(dataset, tmp_path / "cut", cfg, progress=False).run(resume=True)

    assert _same_tensors(_weights(tmp_path / "straight" / "best.safetensors"), _weights(tmp_path / "cut" / "best.safetensors"))
    assert _without_seconds(_log_rows(tmp_path / "straight")) == _without_seconds(_log_rows(tmp_path / "cut"))


def test_run_folder_refusals(dataset, tmp_path):
    cfg = tiny_config(epochs=1)
    run = tmp_path / "run"
    Trainer(dataset, run, cfg, progress=False).run()
    with pytest.raises(DatasetError, match=r"other options \(lr: 0.001 then, 0.002 now\).*epochs"):
        Trainer(dataset, run, tiny_config(epochs=1, lr=2e-3), progress=False).run(resume=True)
    # More epochs is a safe change: the run continues where it stopped.
    more = Trainer(dataset, run, tiny_config(epochs=2), progress=False).run(resume=True)
    assert more["epochs_run"] == 2 and len(_log_rows(run)) == 2
    # 1 validation and 1 test patient: both splits are flagged, pointing to crossval.
    assert len(more["warnings"]) == 2 and all("mnetim crossval" in w for w in more["warnings"])
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    (run / "summary.json").write_text("{}")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for resume in (False, True):
        with pytest.raises(DatasetError, match="finished training run"):
            Trainer(dataset, run, cfg, progress=False).run(resume=resume)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing touched

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        Trainer(dataset, other, cfg, progress=False).run(resume=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_run_that_died_before_its_first_epoch_restarts_with_resume(dataset, tmp_path):
    cfg = tiny_config(epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "log.csv").write_text("epoch,lr,train_loss,val_dice,val_threshold,val_dice_at_0.5,seconds\n")
    with pytest.raises(DatasetError, match="before its first epoch"):
        Trainer(dataset, run, cfg, progress=False).run()
    summary = Trainer(dataset, run, cfg, progress=False).run(resume=True)
    assert summary["epochs_run"] == 1 and len(_log_rows(run)) == 1


def test_resumed_run_does_not_train_past_its_stop(dataset, tmp_path):
    cfg = tiny_config(epochs=5, max_minutes=1e-6)  # the time budget ends the run after epoch 1
    run = tmp_path / "run"
    first = Trainer(dataset, run, cfg, progress=False).run()
    assert first["stopped_by"] == "time budget" and first["epochs_run"] == 1
    again = Trainer(dataset, run, cfg, progress=False).run(resume=True)
    assert again["stopped_by"] == "time budget" and again["epochs_run"] == 1
    assert len(_log_rows(run)) == 1


# --------------------------------------------------------------------------- threshold selection
class _FixedProbability(torch.nn.Module):
    """Returns logits of a fixed probability map for every window (to test threshold selection)."""

    def __init__(self, prob: np.ndarray):
        super().__init__()
        p = torch.from_numpy(prob.astype(np.float32)).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("logits", torch.log(p / (1 - p)))

    def forward(self, x):
        return self.logits.expand(x.shape[0], 1, *self.logits.shape)


def test_validation_picks_the_threshold_of_best_dice_nearest_half():
    from MnetImSegmentLib.engine.windows import InputSpec
    from MnetImSegmentLib.research.training.data import PreparedScan
    from MnetImSegmentLib.research.training.trainer import validate

    n = 32
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    truth = (r < 6).astype(np.uint8)
    prob = np.where(r < 6, 0.72, np.where(r < 9, 0.52, 0.1))  # perfect for thresholds in (0.52, 0.72]
    scan = PreparedScan("s", np.zeros((3, n, n), np.float16), np.repeat(truth[None], 3, 0), roi=None,
                        spacing_mm=(1.0, 1.0, 1.0))
    result = validate(_FixedProbability(prob), [scan], (n, n), InputSpec(), "cpu")
    assert result["dice"] == pytest.approx(1.0)
    assert result["threshold"] == 0.55  # of the perfect thresholds 0.55 ... 0.70, the one nearest 0.5
    assert result["dice_at_0.5"] < 1.0


def test_card_threshold_is_the_validation_choice(dataset, tmp_path):
    from safetensors import safe_open

    from MnetImSegmentLib.engine.weights import read_card
    from MnetImSegmentLib.research.training.export import train_and_export

    run = tmp_path / "run"
    summary = train_and_export(dataset, run, tiny_config(epochs=2), name="t", progress=False)
    card = read_card(run / "weights").raw
    best_row = _log_rows(run)[summary["best_epoch"] - 1]
    assert card["threshold"] == summary["threshold"] == float(best_row["val_threshold"])
    assert "validation" in card["threshold_selection"]
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert float(meta["threshold"]) == card["threshold"] and int(meta["epoch"]) == summary["best_epoch"]
    assert card["test"]["scans"] and card["test"]["volumetric_dice_mean"] is not None


# --------------------------------------------------------------------------- bad input
def _rewrite_mask(manifest: Path, scan_index: int, fn) -> None:
    from MnetImSegmentLib.engine.io import read_image, write_labelmap

    rec = read_manifest(manifest)[scan_index]
    vol = read_image(rec.mask)
    write_labelmap(fn(vol), rec.mask, overwrite=True)


def test_mask_grid_differs_from_image(tmp_path):
    from MnetImSegmentLib.core.volume import Geometry
    from MnetImSegmentLib.research.training.data import read_volume_pair

    manifest = write_dataset(tmp_path / "ds", [10])

    def shifted(v):
        g = v.geometry
        return type(v)(v.array, Geometry(g.spacing, tuple(o + 5.0 for o in g.origin), g.direction))

    _rewrite_mask(manifest, 0, shifted)
    with pytest.raises(DatasetError, match="mask grid .* differs from image grid"):
        read_volume_pair(read_manifest(manifest)[0])


def test_scan_without_ctv_is_kept_with_a_warning_but_no_ctv_at_all_is_an_error(tmp_path):
    manifest = write_dataset(tmp_path / "ds", range(10, 15), splits=["train"] * 3 + ["val", "test"])
    _rewrite_mask(manifest, 0, lambda v: v.with_array(np.zeros_like(v.array)))
    with pytest.warns(DatasetWarning, match="holds no CTV; the scan is kept as a negative example"):
        Trainer(manifest, tmp_path / "run1", tiny_config(epochs=1), progress=False).run()
    for i in (1, 2):
        _rewrite_mask(manifest, i, lambda v: v.with_array(np.zeros_like(v.array)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="No training slice contains any CTV"):
            Trainer(manifest, tmp_path / "run2", tiny_config(epochs=1), progress=False).run()


def test_validation_split_without_ctv_is_an_error(tmp_path):
    manifest = write_dataset(tmp_path / "ds", range(10, 13), splits=["train", "val", "test"])
    _rewrite_mask(manifest, 1, lambda v: v.with_array(np.zeros_like(v.array)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="No validation scan contains CTV"):
            Trainer(manifest, tmp_path / "run", tiny_config(epochs=1), progress=False).run()


def test_manifest_naming_a_missing_file(tmp_path):
    manifest = write_dataset(tmp_path / "ds", [10, 11])
    (tmp_path / "ds" / "lab11.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"line 3 names a missing file: .*lab11\.nii\.gz"):
        read_manifest(manifest)


def test_patient_in_two_splits(tmp_path):
    manifest = write_dataset(tmp_path / "ds", [10, 11, 12], patients=["A", "A", "B"], splits=["train", "test", "val"])
    with pytest.raises(DatasetError, match="patient 'A' has scans in several splits"):
        read_manifest(manifest)


# --------------------------------------------------------------------------- export
def test_export_finished_run_loads_in_segment(dataset, tmp_path):
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.engine.weights import read_card
    from MnetImSegmentLib.research.phantom import make_phantom
    from MnetImSegmentLib.research.training.export import export_run, train_and_export

    run = tmp_path / "run"
    train_and_export(dataset, run, tiny_config(epochs=1), name="orig", version="0.0.1", progress=False)
    out = export_run(run, tmp_path / "w", version="2.0.0", intended_use="Testing only.")
    card, original = read_card(out).raw, read_card(run / "weights").raw
    assert (card["name"], card["version"], card["intended_use"]) == ("orig", "2.0.0", "Testing only.")
    assert card["threshold"] == original["threshold"] and card["test"] == original["test"]
    assert card["exported_from"]["best_epoch"] == 1
    result = Segmenter(out, device="cpu").segment(make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=60).ct)
    assert result.mask.shape[1:] == (128, 128) and result.threshold == card["threshold"]
    with pytest.raises(WeightsError, match="already holds files"):
        export_run(run, out)


def test_export_unfinished_run_and_old_runs_without_metadata(dataset, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    import MnetImSegmentLib.research.training.trainer as trainer_mod
    from MnetImSegmentLib.engine.weights import load_weights
    from MnetImSegmentLib.research.training.export import export_run

    real_validate, calls = trainer_mod.validate, []

    def crash_on_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "validate", crash_on_third_epoch)
    # Phantom styles in the manifest: the run folder must keep them for the card (the manifest may be gone).
    styled = tmp_path / "styled" / "manifest.csv"
    styled.parent.mkdir()
    write_manifest(styled, [dataclasses.replace(r, style="v4" if i % 2 else "v2")
                            for i, r in enumerate(read_manifest(dataset))])
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(styled, run, tiny_config(epochs=4), progress=False).run()
    rows = _log_rows(run)
    best = max(rows, key=lambda r: float(r["val_dice"]))
    model, card = load_weights(export_run(run, tmp_path / "w1"))
    assert card.threshold == float(best["val_threshold"])
    assert card.raw["training"]["stopped_by"].startswith("not finished")
    assert card.raw["training"]["data"] == {"manifest": str(styled.resolve()), "styles": {"v2": 2, "v4": 2}}
    assert card.raw["training"]["scans"] == {"train": 4, "val": 1, "test": 1}
    assert card.raw["validation"]["scans"] == 1

    # A split record edited by hand is refused in one sentence, and nothing is written.
    record = (run / "splits.json").read_text()
    (run / "splits.json").write_text("{}")
    with pytest.raises(DatasetError, match="not the split record"):
        export_run(run, tmp_path / "w_bad")
    assert not (tmp_path / "w_bad").exists()
    # A run from before the split record: the card says where to look instead of guessing styles.
    (run / "splits.json").unlink()
    _, card_old = load_weights(export_run(run, tmp_path / "w_old"))
    assert card_old.raw["training"]["data"] == {"manifest": "see config.json"}
    (run / "splits.json").write_text(record)

    # A best.safetensors written before the metadata existed: the threshold comes from log.csv.
    tensors = load_file(str(run / "best.safetensors"))
    save_file(tensors, str(run / "best.safetensors"))
    _, card2 = load_weights(export_run(run, tmp_path / "w2"))
    assert card2.threshold == card.threshold


def test_export_refuses_what_is_not_a_run(tmp_path):
    from MnetImSegmentLib.research.training.export import export_run

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a training run folder"):
        export_run(tmp_path / "empty", tmp_path / "w")
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- DDP with torchrun (CPU, gloo)
DRIVER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
from helpers.research_data import tiny_config
from MnetImSegmentLib.research.training import trainer as T
from MnetImSegmentLib.research.training.export import train_and_export
manifest, run, out = sys.argv[1:4]
captured = {{}}
real_run = T.Trainer.run
def run_and_keep(self, resume=False):
    summary = real_run(self, resume)
    captured["model"] = {{k: v.detach().clone() for k, v in self.model.state_dict().items()}}
    return summary
T.Trainer.run = run_and_keep
summary = train_and_export(manifest, run, tiny_config(epochs=3, max_minutes=float(sys.argv[4])), name="ddp", progress=False)
rank = int(os.environ["RANK"])
torch.save(captured["model"], os.path.join(out, f"model{{rank}}.pt"))
json.dump({{"world": int(os.environ["WORLD_SIZE"]), "summary": summary}}, open(os.path.join(out, f"rank{{rank}}.json"), "w"))
"""


@pytest.mark.parametrize("max_minutes", [0.0, 1e-6], ids=["all-epochs", "time-budget"])
def test_ddp_two_cpu_processes_with_torchrun(dataset, tmp_path, max_minutes):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(HERE)))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
           str(dataset), str(tmp_path / "run"), str(out), str(max_minutes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["summary"] == r1["summary"]  # every rank returns rank 0's summary
    s = r0["summary"]
    assert s["distributed"] == {"world_size": 2, "backend": "gloo"}
    # 16 windows per epoch shared by 2 ranks of batch 4: 2 steps each.
    assert s["steps_per_epoch"] == 2
    expected_epochs = 3 if max_minutes == 0 else 1
    assert s["epochs_run"] == expected_epochs and len(_log_rows(tmp_path / "run")) == expected_epochs
    assert s["stopped_by"] == ("epochs" if max_minutes == 0 else "time budget")
    assert (tmp_path / "run" / "weights" / "model.json").is_file()

    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["rng_ranks"][0] != ckpt["rng_ranks"][1]  # different windows
    # Rank 1's weights after the last step equal rank 0's last checkpoint: DDP kept them identical.
    # (Batch-norm running statistics are excluded: DDP copies rank 0's at each forward, so after
    # the last forward each rank holds its own update.)
    last1 = torch.load(out / "model1.pt")
    weights = [k for k in last1 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    differ = [k for k in weights if not torch.allclose(last1[k].float(), ckpt["model"][k].float(), atol=1e-6)]
    assert weights and not differ


def test_roi_size_and_spacing_from_the_command_line(dataset, tmp_path, capsys):
    """``--roi-size``/``--roi-spacing`` reach the card and the Segmenter; a size the network cannot take is
    refused in one sentence before anything is written."""
    from MnetImSegmentLib.cli import main
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.engine.weights import read_card
    from MnetImSegmentLib.research.phantom import make_phantom

    from helpers.research_data import TINY_MNET

    common = ["train", str(dataset), "--epochs", "1", "--windows-per-epoch", "8", "--batch-size", "4",
              "--lr-milestones", "1", "--device", "cpu", "--threads", "1", "--no-tensorboard", "--json",
              "--model-options", json.dumps({"Mnet_Im": TINY_MNET})]
    bad = tmp_path / "bad"
    code = main(common + ["-o", str(bad), "--roi-size", "40"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "not a multiple of 16" in err and "--roi-size 32" in err
    assert not bad.exists()

    run = tmp_path / "run"
    code = main(common + ["-o", str(run), "--roi-size", "48", "--roi-spacing", "2.0"])
    assert code == 0, capsys.readouterr().err
    roi = read_card(run / "weights").raw["input"]["roi"]
    assert roi["size_px"] == [48, 48] and roi["spacing_mm"] == [2.0, 2.0]
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=60).ct
    result = Segmenter(run / "weights", device="cpu").segment(ct)
    assert result.mask.shape == ct.shape and result.mask.geometry.allclose(ct.geometry)


# --------------------------------------------------------------------------- fine-tuning (issue 16)
def test_init_weights_starts_from_the_parent_and_names_it(dataset, tmp_path):
    from MnetImSegmentLib.engine.weights import read_card, save_weights, sha256_file
    from MnetImSegmentLib.research.training.export import build_card

    parent_run = Trainer(dataset, tmp_path / "parent", tiny_config(epochs=1), progress=False)
    parent_summary = parent_run.run()
    parent_dir = tmp_path / "parent_weights"
    save_weights(parent_run.model, parent_dir, build_card(tiny_config(epochs=1), parent_summary, "Parent", "1.2.3",
                                                           "research", None, "", dataset))
    # lr 0: the convolution weights stay those of the parent, so they must have been loaded.
    child = Trainer(dataset, tmp_path / "child", tiny_config(epochs=1, lr=0.0, init_weights=str(parent_dir)),
                    progress=False)
    summary = child.run()
    parent_tensors = _weights(parent_dir / "model.safetensors")
    conv = [k for k in parent_tensors if k.endswith(".weight") and parent_tensors[k].ndim == 4]
    assert conv and all(torch.equal(child.model.state_dict()[k].cpu(), parent_tensors[k]) for k in conv)
    assert summary["parent_model"]["name"] == "Parent" and summary["parent_model"]["version"] == "1.2.3"
    assert summary["parent_model"]["tensors_sha256"] == sha256_file(parent_dir / "model.safetensors")
    card = build_card(tiny_config(), summary, "Child", "0.1.0", "research", None, "", dataset)
    assert card["training"]["parent_model"] == summary["parent_model"]
    assert read_card(parent_dir).raw["name"] == "Parent"

    with pytest.raises(DatasetError, match="another input .*--roi-size 128"):
        Trainer(dataset, tmp_path / "bad", tiny_config(epochs=1, init_weights=str(parent_dir),
                                                       roi={**tiny_config().roi, "size_px": [64, 64]}),
                progress=False).run()
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_card_test_section_reports_each_phantom_style():
    """A mixed-style test split is summarised per generator style as well as overall."""
    from MnetImSegmentLib.research.training.export import card_test_section

    rows = [{"scan_id": "a", "vd": 0.9, "style": "v2"}, {"scan_id": "b", "vd": 0.8, "style": "v2"},
            {"scan_id": "c", "vd": 0.5, "style": "v3"}]
    section = card_test_section(rows)
    assert section["volumetric_dice_mean"] == pytest.approx(0.7333, abs=1e-4)
    assert section["by_style"]["v2"] == {"volumetric_dice_mean": 0.85, "volumetric_dice_median": 0.85,
                                         "volumetric_dice_min": 0.8, "n": 2}
    assert section["by_style"]["v3"]["n"] == 1 and section["by_style"]["v3"]["volumetric_dice_min"] == 0.5
    assert "by_style" not in card_test_section([{"scan_id": "x", "vd": 0.7}])  # real data: no style column
    assert card_test_section([])["volumetric_dice_mean"] is None


def test_prior_run_widens_its_parent_and_exports_a_card_that_segments(dataset, tmp_path):
    """--applicator-prior tandem (and --metal-reduction) from a parent without it: old input weights kept, the new
    channel at zero, and the exported weights (card input.applicator_prior and metal_reduction, 6 input channels)
    segment a CT through the full pipeline."""
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.engine.weights import read_card, save_weights
    from MnetImSegmentLib.engine.windows import InputSpec
    from MnetImSegmentLib.research.phantom import make_phantom
    from MnetImSegmentLib.research.training.export import build_card

    parent_run = Trainer(dataset, tmp_path / "parent", tiny_config(epochs=1), progress=False)
    parent_summary = parent_run.run()
    parent_dir = tmp_path / "parent_weights"
    save_weights(parent_run.model, parent_dir, build_card(tiny_config(epochs=1), parent_summary, "Parent", "1.0.0",
                                                           "research", None, "", dataset))
    # ...with metal-artefact reduction too: it changes the images, not the network, so the parent is accepted.
    config = tiny_config(epochs=1, lr=0.0, init_weights=str(parent_dir), augment="full",
                         input=InputSpec(applicator_prior="tandem", metal_reduction="normalised").to_dict())
    child = Trainer(dataset, tmp_path / "child", config, progress=False)
    summary = child.run()
    parent_tensors, state = _weights(parent_dir / "model.safetensors"), child.model.state_dict()
    widened = [k for k, v in parent_tensors.items() if state[k].shape != v.shape]
    assert widened and summary["model_config"]["in_channels"] == 6
    for k in widened:
        assert torch.equal(state[k][:, :5].cpu(), parent_tensors[k]) and not state[k][:, 5:].any()
    out = tmp_path / "child_weights"
    save_weights(child.model, out, build_card(config, summary, "Child", "0.1.0", "research", None, "", dataset))
    card = read_card(out)
    assert card.input_spec.applicator_prior == "tandem" and card.raw["input"]["applicator_prior"] == "tandem"
    assert card.raw["input"]["metal_reduction"] == "normalised"
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=60).ct
    result = Segmenter(out, device="cpu").segment(ct, enforce_scope=False)
    assert result.mask.shape == ct.shape and result.mask.geometry.allclose(ct.geometry)
    # A parent WITH a prior cannot start a run without one (that would drop a trained channel).
    with pytest.raises(DatasetError, match="another"):
        Trainer(dataset, tmp_path / "bad", tiny_config(epochs=1, init_weights=str(out)), progress=False).run()
    assert not (tmp_path / "bad").exists()


def test_atlas_prior_run_builds_its_atlas_from_the_training_split_and_ships_it(dataset, tmp_path):
    """--applicator-prior atlas from a 'tandem' parent: the channel is kept (new content), the CTV atlas is built
    from the training scans only, saved in the run folder, carried into the weights (card input.ctv_atlas, one
    SHA-256 for tensors and atlas), used by the Segmenter, and exported again from an unfinished run's folder."""
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.engine.weights import load_weights, read_card
    from MnetImSegmentLib.engine.windows import InputSpec
    from MnetImSegmentLib.research.phantom import make_phantom
    from MnetImSegmentLib.research.training.data import ATLAS_FILE, read_atlas
    from MnetImSegmentLib.research.training.export import export_run, train_and_export

    from helpers.weights import make_weights

    parent = make_weights(tmp_path / "parent", applicator_prior="tandem")
    config = tiny_config(epochs=1, init_weights=str(parent), input=InputSpec(applicator_prior="atlas").to_dict())
    run = tmp_path / "run"
    summary = train_and_export(dataset, run, config, "Atlas", progress=False, tensorboard=False)
    assert summary["model_config"]["in_channels"] == 6
    atlas = read_atlas(run / ATLAS_FILE)
    assert atlas.scans == 4  # the 4 training scans, not the validation or test scan
    p = atlas.probability
    assert p.max() > 0.9 and p.min() == 0.0 and p[p.shape[0] // 2, p.shape[1] // 2].max() > 0.9
    np.testing.assert_array_equal(p, p[::-1])  # mirrored left-right
    model, card = load_weights(run / "weights")
    assert card.input_spec.applicator_prior == "atlas" and card.raw["input"]["ctv_atlas"]["scans"] == 4
    np.testing.assert_array_equal(card.atlas.probability, p)
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=60).ct
    seg = Segmenter(run / "weights", device="cpu", fold_bn=False, precision="fp32")
    seen = []
    forward = seg.model.forward
    seg.model.forward = lambda x: seen.append(float(x[:, 5].max())) or forward(x)
    result = seg.segment(ct, enforce_scope=False)
    assert result.mask.shape == ct.shape and max(seen) > 0.5  # the atlas reached the network
    # An unfinished run's folder exports with its atlas too.
    (run / "summary.json").unlink()
    out = export_run(run, tmp_path / "exported")
    assert read_card(out).raw["input"]["ctv_atlas"] == card.raw["input"]["ctv_atlas"]
    assert load_weights(out)[1].atlas is not None
    (run / ATLAS_FILE).unlink()
    with pytest.raises(DatasetError, match="CTV atlas"):
        export_run(run, tmp_path / "exported2")
    assert not (tmp_path / "exported2").exists()


def test_prior_bias_run_starts_from_a_parent_without_it_and_ships(dataset, tmp_path):
    """--applicator-prior atlas --prior-bias from a 'tandem' parent without the bias: every parent tensor is kept,
    the bias weight starts at 1; the card records prior_bias and the Segmenter runs it. A child with the bias cannot
    go back to a run without it."""
    from MnetImSegmentLib.engine.inference import Segmenter
    from MnetImSegmentLib.engine.weights import load_weights, read_card
    from MnetImSegmentLib.engine.windows import InputSpec
    from MnetImSegmentLib.research.phantom import make_phantom
    from MnetImSegmentLib.research.training.export import train_and_export

    from helpers.research_data import TINY_MNET
    from helpers.weights import make_weights

    parent = make_weights(tmp_path / "parent", applicator_prior="tandem", **TINY_MNET)
    config = tiny_config(epochs=1, lr=0.0, init_weights=str(parent), model_overrides={**TINY_MNET, "prior_bias": True},
                         input=InputSpec(applicator_prior="atlas").to_dict())
    run = tmp_path / "run"
    summary = train_and_export(dataset, run, config, "Biased", progress=False, tensorboard=False)
    assert summary["model_config"]["prior_bias"] is True
    model, card = load_weights(run / "weights")
    assert card.config["prior_bias"] is True and float(model.prior_weight.detach()) == 1.0
    parent_tensors = _weights(parent / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in parent_tensors.items()
               if "num_batches_tracked" not in k and "running" not in k)
    ct = make_phantom(3, matrix=128, slice_mm=2.5, z_extent_mm=60).ct
    result = Segmenter(run / "weights", device="cpu").segment(ct, enforce_scope=False)
    assert result.mask.shape == ct.shape and result.mask.geometry.allclose(ct.geometry)
    # Dropping the bias would change what the trained network means: refused before any work.
    back = tiny_config(epochs=1, init_weights=str(run / "weights"), input=InputSpec(applicator_prior="atlas").to_dict())
    with pytest.raises(DatasetError, match="another configuration"):
        Trainer(dataset, tmp_path / "back", back, progress=False).run()
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("changes,match", [
    (dict(model_overrides={"prior_bias": True}), "no prior channel"),
    (dict(model="U-Net", model_overrides={"prior_bias": True}, input={"applicator_prior": "atlas"}), "M-Net family"),
])
def test_prior_bias_refusals(dataset, tmp_path, changes, match):
    from MnetImSegmentLib.engine.windows import InputSpec

    if "input" in changes:
        changes["input"] = InputSpec(**changes["input"]).to_dict()
    with pytest.raises(DatasetError, match=match):
        Trainer(dataset, tmp_path / "run", tiny_config(**changes), progress=False).run()
    assert not (tmp_path / "run").exists()


def test_weights_with_a_prior_bias_but_no_prior_channel_are_refused(tmp_path):
    import json

    from MnetImSegmentLib.engine.weights import load_weights

    from helpers.weights import make_weights

    folder = make_weights(tmp_path / "w", applicator_prior="tandem", prior_bias=True)
    load_weights(folder)  # valid as written
    card = json.loads((folder / "model.json").read_text())
    card["input"]["applicator_prior"] = "none"
    card["config"]["in_channels"] = 5  # a consistent card: the bias would read the last CT slice as a prior
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="no prior channel"):
        load_weights(folder)


def test_cli_prior_bias_without_a_prior_is_one_sentence(dataset, tmp_path, capsys):
    from helpers.cli import assert_refused, run_cli

    # With the default --windows-per-epoch (0 = one pass), which the option check once refused.
    code, _, err = run_cli(["train", dataset, "-o", tmp_path / "run", "--prior-bias", "--epochs", "1"], capsys)
    assert_refused(code, err, "no prior channel")
    code, _, err = run_cli(["train", dataset, "-o", tmp_path / "run", "--windows-per-epoch", "-1"], capsys)
    assert_refused(code, err, "--windows-per-epoch")
    assert not (tmp_path / "run").exists()


def test_card_records_the_training_splits_styles():
    """Without them every style row of a generalisation table would count as in-distribution."""
    from MnetImSegmentLib.research.generalisation import trained_styles
    from MnetImSegmentLib.research.manifest import ScanRecord
    from MnetImSegmentLib.research.training.export import training_data_entry

    train = [ScanRecord("i", "m", f"p{i}", f"s{i}", "train", style) for i, style in enumerate(["v6", "v2", "v6", None])]
    data = training_data_entry({"kind": "phantoms", "recipe": "mix_v6"}, "m.csv", train)
    assert data == {"kind": "phantoms", "recipe": "mix_v6", "styles": {"v2": 1, "v6": 2}}
    assert trained_styles({"training": {"data": data}}) == {"v2", "v6"}
    # A description's own styles are kept; real data (no style column) gets none; no description: the manifest.
    assert training_data_entry({"styles": {"v4": 9}}, "m.csv", train)["styles"] == {"v4": 9}
    plain = [ScanRecord("i", "m", "p", "s", "train", None)]
    assert training_data_entry({"kind": "clinic"}, "m.csv", plain) == {"kind": "clinic"}
    assert training_data_entry(None, "m.csv", train) == {"manifest": "m.csv", "styles": {"v2": 1, "v6": 2}}
