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


def test_last_stage_is_the_shipped_cards_training(recipe, tmp_path, demo_weights):
    """The recipe's final command trains what the shipped card says it was trained with."""
    card = read_card(demo_weights).raw
    recorded = card["training"]["config"]
    argv = recipe.train_argv(tmp_path, recipe.STAGES[-1])
    config = train_config_from_args(build_parser().parse_args(argv))
    plain = lambda value: json.loads(json.dumps(value))  # noqa: E731  (tuples and lists compare alike)
    for key in ("epochs", "windows_per_epoch", "lr", "lr_milestones", "style_weights", "augment", "max_minutes", "seed"):
        assert plain(getattr(config, key)) == recorded[key], key
    for key in ("ctv_camouflage", "fat_fill"):  # recorded only when on
        assert getattr(config, key) == recorded.get(key, 0.0), key
    assert plain(config.input) == recorded["input"] and plain(config.roi) == recorded["roi"]
    assert card["version"] == recipe.STAGES[-1][3]


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
