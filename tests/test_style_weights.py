"""mnetim train --style-weights: per-style sampling weights (keep a minority style from being forgotten)."""

from __future__ import annotations

import numpy as np
import pytest

from MnetImSegmentLib.cli import main
from MnetImSegmentLib.core.errors import DatasetError, InputError
from MnetImSegmentLib.research.manifest import ScanRecord
from MnetImSegmentLib.research.training import Trainer
from MnetImSegmentLib.research.training.data import (PreparedScan, WindowSampler, parse_style_weights,
                                                     scan_weights_for)

from helpers.research_data import tiny_config, write_dataset


def _scans():
    """Two scans told apart by their grey level (0 and 1); CTV in every slice."""
    mask = np.ones((12, 96, 96), np.uint8)
    return [PreparedScan(name, np.full((12, 96, 96), level, np.float16), mask, None, (1.6, 1.6, 2.5))
            for name, level in (("a", 0.0), ("b", 1.0))]


def _share_of_b(sampler, n=800):
    x, _ = sampler.batch(np.random.default_rng(3), n)
    return float((x[:, 2, 0, 0] > 0.5).mean())


def test_weights_change_how_often_a_scan_is_drawn():
    scans = _scans()
    plain = WindowSampler(scans, (80, 80), 5, augment="none")
    weighted = WindowSampler(scans, (80, 80), 5, augment="none", scan_weights=[1.0, 3.0])
    assert _share_of_b(plain) == pytest.approx(0.5, abs=0.06)
    assert _share_of_b(weighted) == pytest.approx(0.75, abs=0.06)


def test_equal_weights_keep_the_unweighted_random_stream():
    scans = _scans()
    a = WindowSampler(scans, (80, 80), 5, augment=True).batch(np.random.default_rng(5), 6)
    b = WindowSampler(scans, (80, 80), 5, augment=True, scan_weights=[2.0, 2.0]).batch(np.random.default_rng(5), 6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_parse_style_weights():
    assert parse_style_weights("v2:3, v5:0.5") == {"v2": 3.0, "v5": 0.5}
    for bad in ("v2", "v2:0", "v2:-1", "v2:x", "v2:nan", "v2:inf", ":2", "v2:1,v2:2", " , "):
        with pytest.raises(InputError):
            parse_style_weights(bad)


def test_scan_weights_follow_the_records_and_refuse_a_style_nobody_has():
    recs = [ScanRecord("i", "m", f"p{i}", f"s{i}", "train", style) for i, style in enumerate(["v2", "v5", "v5", None])]
    assert scan_weights_for(recs, None) is None
    assert scan_weights_for(recs, {"v2": 3.0}) == [3.0, 1.0, 1.0, 1.0]
    with pytest.raises(DatasetError, match="v3"):
        scan_weights_for(recs, {"v3": 2.0})


@pytest.mark.parametrize("value", ["v2:0", "v2", "v2:abc"])
def test_cli_refuses_a_bad_weight_in_one_sentence(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", str(tmp_path / "manifest.csv"), "-o", str(tmp_path / "run"), "--style-weights", value])
    assert stop.value.code != 0
    err = capsys.readouterr().err
    assert "--style-weights" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_training_refuses_a_weighted_style_the_manifest_lacks_before_preparing(tmp_path):
    manifest = write_dataset(tmp_path / "ds", range(10, 13), splits=["train", "val", "test"])
    with pytest.raises(DatasetError, match="no training scan has"):
        Trainer(manifest, tmp_path / "run", tiny_config(epochs=1, style_weights={"v9": 2.0}), progress=False).run()
