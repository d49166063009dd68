"""``mnetim crossval`` / ``compare`` (train and compare) / ``export``: splits, folders, resume, refusals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import DatasetError
from MnetImSegmentLib.models.baselines import smp_available
from MnetImSegmentLib.research.manifest import ScanRecord, read_manifest
from MnetImSegmentLib.research.training.data import DatasetWarning
from MnetImSegmentLib.research.training.experiments import case_ids, crossval_splits, kfold_by_patient, write_truths

from helpers.research_data import TINY_MNET, TINY_UNET_MO, tiny_config, write_dataset

TINY_OPTIONS = {"Mnet_Im": TINY_MNET, "Unet_mo": TINY_UNET_MO,
                "U-Net": {"decoder_channels": [16, 8, 8, 8, 8], "encoder_kwargs": {"channels": [8, 16, 32, 64]}}}
FAST = ["--epochs", "1", "--windows-per-epoch", "8", "--batch-size", "4", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 scans of 6 patients (two patients with two scans each), no split column."""
    return write_dataset(tmp_path_factory.mktemp("ds"), range(20, 28), patients=["A", "A", "B", "C", "D", "D", "E", "F"])


def mnetim(argv, capsys):
    """Run ``mnetim`` with this module's commands wired in as cli.py will; return (exit code, stdout, stderr)."""
    from MnetImSegmentLib import cli
    from MnetImSegmentLib.cli.research import add_parser as add_commands

    parser = argparse.ArgumentParser(prog="mnetim")
    add_commands(parser.add_subparsers(dest="command", required=True))
    real = cli.build_parser
    cli.build_parser = lambda: parser
    try:
        code = cli.main([str(a) for a in argv])
    finally:
        cli.build_parser = real
    out = capsys.readouterr()
    return code, out.out, out.err


def _records(patients):
    return [ScanRecord(Path(f"i{i}"), Path(f"m{i}"), p, f"s{i}") for i, p in enumerate(patients)]


# --------------------------------------------------------------------------- splits
def test_kfold_by_patient_balances_scans_and_keeps_patients_together():
    patients = [f"P{i // 3}" for i in range(9)] + [f"Q{i}" for i in range(14)]  # 3 patients x 3 scans + 14 x 1
    parts = kfold_by_patient(_records(patients), 4, seed=1)
    assert sorted(len(p) for p in parts) == [5, 6, 6, 6]
    assert sorted(r.scan_id for p in parts for r in p) == sorted(f"s{i}" for i in range(23))
    owner = {}
    for k, part in enumerate(parts):
        for r in part:
            assert owner.setdefault(r.patient_id, k) == k
    again = kfold_by_patient(_records(patients), 4, seed=1)
    assert [[r.scan_id for r in p] for p in parts] == [[r.scan_id for r in p] for p in again]
    assert [[r.scan_id for r in p] for p in parts] != [[r.scan_id for r in p] for p in kfold_by_patient(_records(patients), 4, seed=2)]
    with pytest.raises(DatasetError, match="at least 4 patients"):
        kfold_by_patient(_records(["A", "A", "B", "C"]), 4)
    with pytest.raises(DatasetError, match="at least 2 folds"):
        kfold_by_patient(_records(["A", "B"]), 1)


def test_crossval_splits_never_share_a_patient():
    patients = [f"P{i // 2}" for i in range(24)]
    folds = crossval_splits(_records(patients), 4, seed=0)
    assert sorted(r.scan_id for f in folds for r in f["test"]) == sorted(f"s{i}" for i in range(24))
    for f in folds:
        by_split = {s: {r.patient_id for r in f[s]} for s in ("train", "val", "test")}
        assert by_split["val"] and by_split["train"]
        assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                    or by_split["val"] & by_split["test"])
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == 24


def test_case_ids_are_file_names_and_collisions_are_refused():
    assert case_ids(_records(["A"]))["s0"] == "s0"
    recs = [ScanRecord(Path("a"), Path("b"), "P", "fx 1/2"), ScanRecord(Path("c"), Path("d"), "P", "fx_1_2")]
    with pytest.raises(DatasetError, match="same file name"):
        case_ids(recs)


def test_write_truths_leaves_out_scans_without_ctv(tmp_path):
    from MnetImSegmentLib.engine.io import read_image, write_labelmap

    manifest = write_dataset(tmp_path / "ds", [30, 31])
    recs = read_manifest(manifest)
    lab = read_image(recs[1].mask)
    write_labelmap(lab.with_array(np.zeros_like(lab.array)), recs[1].mask, overwrite=True)
    with pytest.warns(DatasetWarning, match="left out of the evaluation"):
        empty = write_truths(recs, tmp_path / "truth", case_ids(recs))
    assert empty == ["S31"] and sorted(p.name for p in (tmp_path / "truth").iterdir()) == ["S30.nii.gz"]


# --------------------------------------------------------------------------- crossval
def test_crossval_end_to_end_resume_and_refusal(dataset, tmp_path, capsys, monkeypatch):
    import MnetImSegmentLib.research.training.experiments as exp

    out = tmp_path / "cv"
    argv = ["crossval", dataset, "-o", out, "--folds", "3", "--model", "Mnet_Im", *FAST,
            "--model-options", json.dumps({"Mnet_Im": TINY_MNET})]

    # Interrupt the experiment during fold 2's training.
    real_train, calls = exp._train, []

    def stop_in_fold_2(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(exp, "_train", stop_in_fold_2)
    code, _, _ = mnetim(argv, capsys)
    assert code == 130 and (out / "fold_1" / "summary.json").is_file() and not (out / "fold_2").exists()
    monkeypatch.setattr(exp, "_train", real_train)

    # Different options on the unfinished experiment: refused, nothing changed.
    changed = list(argv)
    changed[changed.index("--epochs") + 1] = "2"
    code, _, err = mnetim(changed, capsys)
    assert code != 0 and "other options (train.epochs: 1 then, 2 now)" in err

    code, stdout, err = mnetim(argv, capsys)
    assert code == 0, err
    assert "fold_1: already trained, skipped" in err
    assert "AVG." in stdout and "3-fold" in stdout
    report = json.loads((out / "crossval.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [1, 2, 3]
    assert sum(f["test_scans"] for f in report["folds"]) == 8
    assert set(report["average_of_folds"]) == {"asd", "hd95", "so", "sd", "vd"}
    for k in (1, 2, 3):
        run = out / f"fold_{k}"
        assert (run / "weights" / "model.json").is_file() and (run / "evaluation" / "summary.md").is_file()
        fold_csv = read_manifest(out / "folds" / f"fold_{k}.csv")
        tests = {r.scan_id for r in fold_csv if r.split == "test"}
        assert {p.name.split(".")[0] for p in (run / "predictions").iterdir()} == tests
    spec = json.loads((out / "experiment.json").read_text())["spec"]
    assert spec["kind"] == "crossval" and spec["folds"] == 3 and spec["train"]["epochs"] == 1

    code, _, err = mnetim(argv, capsys)
    assert code != 0 and "finished experiment" in err


def test_experiment_folder_with_other_files_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = mnetim(["crossval", dataset, "-o", out, *FAST], capsys)
    assert code != 0 and "not empty" in err and (out / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- compare
def test_compare_trains_each_model_on_the_same_split(dataset, tmp_path, capsys):
    models = ["Mnet_Im", "Unet_mo"] + (["U-Net"] if smp_available() else [])
    out = tmp_path / "cmp"
    argv = ["compare", dataset, "-o", out, "--models", *models, *FAST,
            "--model-options", json.dumps({m: TINY_OPTIONS[m] for m in models}), "--json"]
    code, stdout, err = mnetim(argv, capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["models"] == models and set(report["results"]) == set(models)
    split = read_manifest(out / "manifest.csv")
    tests = {r.scan_id for r in split if r.split == "test"}
    assert tests and report["test_scans"] == len(tests)
    for m in models:
        summary = json.loads((out / m / "summary.json").read_text())
        assert summary["scans"] == {s: [r.scan_id for r in split if r.split == s] for s in ("train", "val", "test")}
        assert {p.name.split(".")[0] for p in (out / m / "predictions").iterdir()} == tests
        card = json.loads((out / m / "weights" / "model.json").read_text())
        assert card["architecture"] == m
    for f in ("summary.md", "summary.csv", "per_case.csv", "boxplots.png", "best_worst.png"):
        assert (out / "results" / f).is_file()
    assert json.loads((out / "experiment.json").read_text())["spec"]["models"] == models

    code, _, err = mnetim(argv, capsys)
    assert code != 0 and "finished experiment" in err


def test_compare_input_errors(dataset, tmp_path, capsys):
    code, _, err = mnetim(["compare", dataset, "-o", tmp_path / "x", "--models", "Mnet_Im", "NoSuchNet", *FAST], capsys)
    assert code != 0 and "Unknown model(s) NoSuchNet" in err and not (tmp_path / "x").exists()
    code, _, err = mnetim(["compare", dataset, "-o", tmp_path / "y", "--models", "Mnet_Im", *FAST,
                           "--model-options", '{"U-Net": {}}'], capsys)
    assert code != 0 and "not compared" in err
    with pytest.raises(SystemExit):
        mnetim(["compare", dataset, "-o", tmp_path / "z", "--models", "Mnet_Im", "--model-options", "[1]"], capsys)
    # 48 px suits Mnet_Im (16) but not U-Net (32): refused before Mnet_Im is trained, naming U-Net.
    code, _, err = mnetim(["compare", dataset, "-o", tmp_path / "r", "--models", "Mnet_Im", "U-Net", *FAST,
                           "--roi-size", "48"], capsys)
    assert code != 0 and "Nothing was trained" in err and "U-Net: The ROI size 48 x 48 px" in err
    assert "Mnet_Im:" not in err and not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- export command
def test_export_command(dataset, tmp_path, capsys):
    from MnetImSegmentLib.research.training import Trainer

    run = tmp_path / "run"
    Trainer(dataset, run, tiny_config(epochs=1), progress=False).run()  # an unfinished run: no weights/ yet
    code, stdout, err = mnetim(["export", run, "-o", tmp_path / "w", "--name", "Site_Mnet_Im", "--version", "1.0.0",
                                "--intended-use", "Research only.", "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert info["name"] == "Site_Mnet_Im" and info["architecture"] == "Mnet_Im"
    card = json.loads((tmp_path / "w" / "model.json").read_text())
    assert card["intended_use"] == "Research only." and card["version"] == "1.0.0"
    code, _, err = mnetim(["export", run, "-o", tmp_path / "w"], capsys)
    assert code != 0 and "already holds files" in err
    code, _, err = mnetim(["export", tmp_path / "nothing", "-o", tmp_path / "w2"], capsys)
    assert code != 0 and "not a training run folder" in err
    code, _, err = mnetim(["export", run, "-o", tmp_path / "w3", "--version", "1 0"], capsys)
    assert code != 0 and "version" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w3").exists()  # refused before anything was written
    from helpers.cli import run_cli

    code, _, err = run_cli(["train", dataset, "-o", tmp_path / "run2", "--version", "1 0", *FAST], capsys)
    assert code != 0 and "version" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run2").exists()  # refused before training, not after it
