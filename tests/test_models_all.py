"""Every model name of the paper: builds, shapes, deep supervision, weights round trip, docs/models.md.

Baselines need segmentation-models-pytorch; without it their cases are skipped with the reason (CI
installs it, so they run there).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from MnetImSegmentLib.models import BASELINE_NAMES, MNET_FAMILY, MODEL_NAMES, build_model, model_config
from MnetImSegmentLib.models.baselines import SMP_INSTALL_HINT, BaselineDependencyError, smp_available

REPO = Path(__file__).resolve().parents[1]
HAS_SMP = smp_available()
NEEDS_SMP = pytest.mark.skipif(not HAS_SMP, reason=f"segmentation-models-pytorch is not importable ({SMP_INSTALL_HINT})")

# Training-mode outputs: Mnet_Im and Unet_mo give one fused map per scale (5); the averaging M-Nets
# give the average and their 4 side outputs (5); smp baselines give their single map.
TRAIN_OUTPUTS = {name: 5 for name in MNET_FAMILY} | {name: 1 for name in BASELINE_NAMES}


def _param(name):
    return pytest.param(name, marks=NEEDS_SMP, id=name) if name in BASELINE_NAMES else pytest.param(name, id=name)


ALL = [_param(n) for n in MODEL_NAMES]
_CACHE: dict[str, torch.nn.Module] = {}


def _model(name):
    """Full-size default model, built once per session (the builds dominate this file's time)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = build_model(name)
    return _CACHE[name]


def test_registry_names_match_the_paper():
    assert set(MODEL_NAMES) == {"Mnet_Im", "M-Net", "wideMnet", "Mnet_32", "Mnet_64", "Unet_mo",
                                "U-Net", "Unetd2", "Unet++", "V3_R", "V3_D"}


@pytest.mark.parametrize("name", ALL)
def test_eval_forward_shape(name):
    model = _model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 5, 128, 128))
    assert torch.is_tensor(y) and y.shape == (2, 1, 128, 128)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_train_mode_outputs(name):
    model = _model(name).train()
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 5, 128, 128))
    finally:
        model.eval()
    outs = out if isinstance(out, list) else [out]
    assert len(outs) == TRAIN_OUTPUTS[name]
    assert outs[0].shape == (2, 1, 128, 128)
    for o in outs[1:]:
        assert o.shape[:2] == (2, 1) and 128 % o.shape[-1] == 0


@pytest.mark.parametrize("name", ALL)
def test_config_is_json_and_rebuilds_the_same_network(name):
    # Cards hold the config as JSON (tuples become lists): that form must rebuild the same network.
    cfg = json.loads(json.dumps(model_config(name)))
    assert json.loads(json.dumps(model_config(name, **cfg))) == cfg
    rebuilt = build_model(name, **cfg)
    a, b = _model(name).state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


@pytest.mark.parametrize("name", ALL)
def test_weights_round_trip(name, tmp_path):
    from MnetImSegmentLib.engine.roi import RoiSpec
    from MnetImSegmentLib.engine.weights import load_weights, save_weights
    from MnetImSegmentLib.engine.windows import InputSpec

    model = _model(name).eval()
    card = {"name": f"test-{name}", "version": "0.0.0", "architecture": name, "config": model_config(name),
            "input": dict(InputSpec().to_dict(), roi=RoiSpec().to_dict()), "threshold": 0.5,
            "intended_use": "tests only"}
    folder = save_weights(model, tmp_path / "w", card)
    loaded, read = load_weights(folder)
    assert read.architecture == name and not loaded.training
    x = torch.randn(1, 5, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("name", [_param(n) for n in BASELINE_NAMES])
def test_baseline_input_checks_name_the_model(name):
    model = _model(name).eval()
    with pytest.raises(ValueError, match=re.escape(f"{name} expects 5 slices")):
        model(torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match=re.escape(f"{name} needs H and W divisible by {model.size_multiple}")):
        model(torch.randn(1, 5, 120, 128))


def test_baseline_config_without_smp_and_validation():
    # Configs are pure Python: cards can be read and checked without smp installed.
    cfg = model_config("Unetd2")
    assert cfg["decoder_channels"] == [128, 64, 32, 16, 8]
    assert cfg["encoder_kwargs"] == {"channels": [32, 64, 128, 256]}
    assert model_config("V3_D", in_channels=3)["in_channels"] == 3
    with pytest.raises(ValueError, match="Unknown option"):
        model_config("U-Net", features=(1, 2))
    with pytest.raises(ValueError, match="from scratch"):
        model_config("U-Net", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="output_stride"):
        model_config("V3_R", encoder_output_stride=32)


@NEEDS_SMP
def test_baseline_choices_documented_in_module():
    """The widths the docs promise: Unetd2 is half of U-Net; V3_D's DenseNet is dilated to stride 16."""
    unet, half = _model("U-Net"), _model("Unetd2")
    assert half.net.encoder.out_channels[2:] == [c // 2 for c in unet.net.encoder.out_channels[2:]]
    v3d = _model("V3_D")
    assert v3d.net.encoder.output_stride == 16
    feats = v3d.net.encoder(torch.zeros(1, 5, 128, 128))
    assert feats[-1].shape[-1] == 128 // 16
    assert build_model("V3_D", encoder_output_stride=8).eval()(torch.zeros(1, 5, 64, 64)).shape == (1, 1, 64, 64)


def test_missing_smp_error_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_smp(name, *args, **kwargs):
        if name.startswith("segmentation_models_pytorch"):
            raise ModuleNotFoundError("No module named 'segmentation_models_pytorch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_smp)
    with pytest.raises(BaselineDependencyError, match="pip install segmentation-models-pytorch"):
        build_model("U-Net")


@NEEDS_SMP
def test_models_doc_is_current():
    """docs/models.md lists every model with its exact parameter count (FLOPs to 2 %: torch versions
    may count a few ops differently)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import models_table
    finally:
        sys.path.remove(str(REPO / "scripts"))
    doc = {}
    for line in (REPO / "docs" / "models.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in MODEL_NAMES:
            doc[cells[0]] = (int(cells[1].replace(",", "")), float(cells[2]), int(cells[3]))
    current = {r["name"]: r for r in models_table.rows()}
    assert set(doc) == set(current), "run: python scripts/models_table.py"
    for name, (params, gflop, outputs) in doc.items():
        r = current[name]
        assert params == r["params"] and outputs == r["outputs"], f"{name}: run python scripts/models_table.py"
        assert gflop == pytest.approx(r["gflop"], rel=0.02, abs=0.01), name


def test_registry_and_baselines_module_agree():
    from MnetImSegmentLib.models.baselines import BASELINES

    assert tuple(BASELINES) == tuple(BASELINE_NAMES)
