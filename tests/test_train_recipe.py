"""scripts/train_demo_weights.py: the shipped demo weights' training lineage stays a valid, runnable recipe."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from MnetImSegmentLib.cli import build_parser
from MnetImSegmentLib.cli.options import train_config_from_args
from MnetImSegmentLib.engine.weights import read_card

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_weights.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_demo_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_every_stage_chained_to_its_parent(recipe, tmp_path, capsys):
    assert recipe.main(["--root", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    phantoms = [line for line in lines if line.startswith("mnetim phantom")]
    trains = [shlex.split(line)[1:] for line in lines if line.startswith("mnetim train")]
    assert len(phantoms) == len(recipe.PHANTOMS) and len(trains) == len(recipe.STAGES)
    for (name, _, parent, _, _), argv in zip(recipe.STAGES, trains):
        assert argv[argv.index("-o") + 1] == str(tmp_path / f"run_{name}")
        if parent is None:
            assert "--init-weights" not in argv
        else:
            assert argv[argv.index("--init-weights") + 1] == str(tmp_path / f"run_{parent}" / "weights")
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_shipped_ensemble_members_are_the_recipes_stages(recipe, tmp_path, demo_weights):
    """The shipped weights are the recipe's ensemble: each member trained as its stage's command says."""
    card = read_card(demo_weights).raw
    members, _, version = recipe.ENSEMBLE
    assert card["version"] == version
    entries = card["ensemble"]["members"]
    assert len(entries) == len(members) and card["ensemble"]["member_thresholds"] == [e["threshold"] for e in entries]
    stages = {stage[0]: stage for stage in recipe.STAGES}
    plain = lambda value: json.loads(json.dumps(value))  # noqa: E731  (tuples and lists compare alike)
    for name, entry in zip(members, entries):
        recorded = entry["training"]["config"]
        config = train_config_from_args(build_parser().parse_args(recipe.train_argv(tmp_path, stages[name])))
        for key in ("epochs", "windows_per_epoch", "lr", "lr_milestones", "style_weights", "augment", "max_minutes",
                    "seed"):
            assert plain(getattr(config, key)) == recorded[key], (name, key)
        for key in ("ctv_camouflage", "fat_fill", "ctv_reveal"):  # recorded only when on
            assert getattr(config, key) == recorded.get(key, 0.0), (name, key)
        assert plain(config.input) == recorded["input"] and plain(config.roi) == recorded["roi"], name


def test_dry_run_ends_with_the_ensemble_of_its_members(recipe, tmp_path, capsys):
    assert recipe.main(["--root", str(tmp_path), "--dry-run"]) == 0
    last = shlex.split(capsys.readouterr().out.splitlines()[-1])
    assert last[:2] == ["mnetim", "ensemble"]
    members = [str(tmp_path / f"run_{m}" / "weights") for m in recipe.ENSEMBLE[0]]
    assert last[2:2 + len(members)] == members
    assert last[last.index("--test-manifest") + 1] == str(tmp_path / recipe.ENSEMBLE[1] / "test.csv")
    assert recipe.main(["--root", str(tmp_path), "--dry-run", "--until", "v12c"]) == 0
    assert "mnetim ensemble" not in capsys.readouterr().out  # a partial replay stops at its stage


def test_unknown_stage_is_refused_with_one_sentence(recipe):
    with pytest.raises(SystemExit) as exc:
        recipe.main(["--until", "v9", "--dry-run"])
    assert "unknown stage 'v9'" in str(exc.value) and "v6n" in str(exc.value)


def test_mix_manifest_points_into_each_phantom_set(recipe, tmp_path):
    """A mix is one manifest of several sets: every scan, its split and style, paths resolving to the same files."""
    from MnetImSegmentLib.research.manifest import ScanRecord, read_manifest, write_manifest

    originals = []
    for folder, style in (("phantoms_v6", "v6"), ("phantoms_v5", "v5"), ("phantoms_v4mix", "v4")):
        d = tmp_path / folder
        d.mkdir()
        records = []
        for i, split in enumerate(("train", "val", "test")):
            image, mask = d / f"{style}_{i}.nii.gz", d / f"{style}_{i}_label.nii.gz"
            image.write_bytes(b"x")
            mask.write_bytes(b"y")
            records.append(ScanRecord(image, mask, f"{style}p{i}", f"{style}s{i}", split, style))
        write_manifest(d / "manifest.csv", records)
        originals += records
    recipe.write_mix(tmp_path, "mix_v6")
    text = (tmp_path / "mix_v6" / "manifest.csv").read_text()
    assert "../phantoms_v5/v5_0.nii.gz" in text
    mixed = read_manifest(tmp_path / "mix_v6" / "manifest.csv")
    assert [(r.image.resolve(), r.mask.resolve(), r.scan_id, r.split, r.style) for r in mixed] == \
        [(r.image.resolve(), r.mask.resolve(), r.scan_id, r.split, r.style) for r in originals]
