"""The M-Net builder: shapes, deep-supervision outputs, fusion rules, input checks."""

import pytest
import torch

from MnetImSegmentLib.models import MNET_FAMILY, MNet, MNetConfig, build_model, model_config

SMALL = dict(features=(4, 8, 8, 8, 8))


def _small(name):
    cfg = MNET_FAMILY[name]
    branch = tuple(4 for _ in cfg.input_levels)
    return build_model(name, features=(4, 8, 8, 8, 8), input_branch_channels=branch)


@pytest.mark.parametrize("name,n_outputs", [("Mnet_Im", 5), ("M-Net", 5), ("wideMnet", 5), ("Mnet_64", 5),
                                            ("Mnet_32", 5), ("Unet_mo", 5)])
@pytest.mark.parametrize("hw", [(64, 64), (32, 96)])
def test_shapes_and_deep_supervision(name, n_outputs, hw):
    model = _small(name)
    x = torch.randn(2, 5, *hw)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == n_outputs
    assert outs[0].shape == (2, 1, *hw)
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert torch.is_tensor(y) and y.shape == (2, 1, *hw)


def test_mnet_im_outputs_are_per_scale_finest_first():
    model = _small("Mnet_Im").train()
    outs = model(torch.randn(1, 5, 64, 64))
    assert [o.shape[-1] for o in outs] == [64, 32, 16, 8, 4]


def test_full_size_models_have_paper_architecture():
    """Full-size Mnet_Im: 5 input scales (4 branches of 64 kernels), 5 outputs, progressive fusion."""
    m = build_model("Mnet_Im")
    assert sorted(m.input_branches) == ["1", "2", "3", "4"]
    assert all(b[0].out_channels == 64 for b in m.input_branches.values())
    assert sorted(m.side_outputs) == ["0", "1", "2", "3", "4"]
    assert m.config.fusion == "progressive"
    mnet = build_model("M-Net")
    assert [mnet.input_branches[k][0].out_channels for k in ("1", "2", "3")] == [64, 128, 256]
    assert sorted(mnet.side_outputs) == ["0", "1", "2", "3"] and mnet.config.fusion == "average"
    assert [m.encoders[i][0][0].out_channels for i in range(5)] == [32, 64, 128, 256, 512]
    wide = build_model("wideMnet")
    assert wide.encoders[0][0][0].out_channels == 64
    assert not build_model("Unet_mo").input_branches


def test_progressive_fusion_is_coarse_to_fine_sum():
    """fused_l = side_l + up2(fused_{l+1}); the final map is the finest fused map."""
    sides = {lv: torch.randn(1, 1, 32 // 2**lv, 32 // 2**lv) for lv in range(5)}
    fused = MNet._progressive(sides)
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    expected = sides[4]
    for lv in (3, 2, 1, 0):
        expected = sides[lv] + up(expected)
        assert torch.allclose(fused[lv], expected, atol=1e-6)


def test_average_fusion_is_mean_of_upsampled_sides():
    model = _small("M-Net").train()
    outs = model(torch.randn(1, 5, 32, 32))
    assert torch.allclose(outs[0], torch.stack(outs[1:]).mean(0), atol=1e-6)


@pytest.mark.parametrize("bad,match", [((2, 3, 64, 64), "5 slices"), ((2, 5, 60, 64), "divisible by 16"),
                                       ((5, 64, 64), "4 dimensions|dimensions")])
def test_input_checks_are_helpful(bad, match):
    with pytest.raises(ValueError, match=match):
        _small("Mnet_Im")(torch.randn(*bad))


def test_config_validation_and_overrides():
    with pytest.raises(ValueError):
        MNetConfig(fusion="max")
    with pytest.raises(ValueError):
        MNetConfig(input_levels=(1, 2), input_branch_channels=(64,))
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("NoSuchNet")
    cfg = model_config("Mnet_Im", norm="none")
    assert cfg["norm"] == "none" and build_model("Mnet_Im", **cfg).config.norm == "none"


def test_parameter_count_of_full_mnet_im():
    n = sum(p.numel() for p in build_model("Mnet_Im").parameters())
    assert 8.0e6 < n < 8.7e6  # ~8.33 M: recorded in docs so a silent architecture change is caught


def _prior_pair(name):
    """A small prior-bias model and, with the same tensors, the same network without the bias."""
    cfg = MNET_FAMILY[name]
    over = dict(features=(4, 8, 8, 8, 8), input_branch_channels=tuple(4 for _ in cfg.input_levels), in_channels=6)
    torch.manual_seed(0)
    biased = build_model(name, prior_bias=True, **over)
    plain = build_model(name, **over)
    plain.load_state_dict({k: v for k, v in biased.state_dict().items() if k != "prior_weight"})
    return biased, plain


@pytest.mark.parametrize("name", ["Mnet_Im", "M-Net"])
def test_prior_bias_adds_the_prior_logit_at_every_output_scale(name):
    """Every output (deep supervision included) = the network's + w * logit(clip(prior area-averaged to its scale))."""
    from MnetImSegmentLib.models.mnet import PRIOR_CLIP

    biased, plain = _prior_pair(name)
    x = torch.rand(3, 6, 32, 32)
    x[:, 5] = torch.rand(3, 32, 32) ** 3  # includes values below the clip
    with torch.no_grad():
        biased.prior_weight.fill_(0.7)
        outs, ref = biased.train()(x), plain.train()(x)
    assert len(outs) == len(ref) > 1
    for out, r in zip(outs, ref):
        prior = torch.nn.functional.adaptive_avg_pool2d(x[:, 5:], out.shape[-2:])
        expected = r + 0.7 * torch.logit(prior.clamp(PRIOR_CLIP, 1 - PRIOR_CLIP))
        assert torch.allclose(out, expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(biased.eval()(x), plain.eval()(x) + 0.7 * torch.logit(x[:, 5:].clamp(PRIOR_CLIP, 1 - PRIOR_CLIP)),
                              atol=1e-5)


def test_prior_bias_leaves_windows_without_a_prior_to_the_network():
    """An all-zero prior means 'no trusted applicator fit', not 'no CTV': that window gets no bias."""
    biased, plain = _prior_pair("Mnet_Im")
    x = torch.rand(2, 6, 32, 32)
    x[1, 5] = 0.0
    with torch.no_grad():
        b, p = biased.eval()(x), plain.eval()(x)
    assert torch.equal(b[1], p[1])
    assert (b[0] - p[0]).abs().max() > 0.5


def test_prior_bias_weight_is_learnt_and_the_option_is_validated():
    biased, _ = _prior_pair("Mnet_Im")
    assert float(biased.prior_weight.detach()) == 1.0
    outs = biased.train()(torch.rand(2, 6, 32, 32))
    sum(o.mean() for o in outs).backward()
    assert biased.prior_weight.grad is not None and biased.prior_weight.grad != 0
    with pytest.raises(ValueError, match="image channels"):
        MNetConfig(in_channels=1, prior_bias=True)
    assert model_config("Mnet_Im")["prior_bias"] is False
    assert "prior_weight" not in build_model("Mnet_Im", **SMALL).state_dict()
