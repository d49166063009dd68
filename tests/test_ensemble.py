"""Output ensembles (models/ensemble.py, ``mnetim ensemble``): the vote, the weights folder, the refusals."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from helpers.cli import assert_refused, run_cli
from helpers.research_data import tiny_config, write_dataset
from helpers.weights import TINY_CONFIG, make_weights
from MnetImSegmentLib.core.errors import WeightsError
from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.engine.weights import TENSORS, load_weights, read_card
from MnetImSegmentLib.models import build_model
from MnetImSegmentLib.models.ensemble import OutputEnsemble
from MnetImSegmentLib.research.phantom import PhantomAnatomy, rotation_matrix
from MnetImSegmentLib.research.training.export import export_ensemble
from MnetImSegmentLib.research.training.trainer import check_training_options


def _members(n, in_channels=5):
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(build_model("Mnet_Im", in_channels=in_channels, **TINY_CONFIG).eval())
    return models


@pytest.mark.parametrize("thresholds", [(0.35, 0.7), (0.5, 0.2, 0.9)])
def test_vote_is_the_mean_of_threshold_shifted_logits(thresholds):
    members = _members(len(thresholds))
    ensemble = OutputEnsemble(members, thresholds).eval()
    x = torch.rand(2, 5, 32, 48)
    with torch.no_grad():
        out = ensemble(x)
        expected = torch.stack([m(x) - math.log(t / (1 - t)) for m, t in zip(members, thresholds)]).mean(0)
    assert out.shape == (2, 1, 32, 48)
    torch.testing.assert_close(out, expected)
    assert set(ensemble.state_dict()) == {f"members.{i}.{k}" for i, m in enumerate(members) for k in m.state_dict()}


def test_each_member_votes_with_its_own_boundary():
    """Two copies of one network at threshold t draw exactly what that network draws at t (not at 0.5)."""
    member = _members(1)[0]
    x = torch.rand(3, 5, 32, 32)
    with torch.no_grad():
        p = torch.sigmoid(member(x))
        t = float(p.median())  # a boundary that splits this output in two
        voted = torch.sigmoid(OutputEnsemble([member, member], [t, t])(x))
    assert ((voted > 0.5) == (p > t)).all() and 0 < int((p > t).sum()) < p.numel()


def test_ensemble_refuses_what_cannot_vote():
    with pytest.raises(ValueError, match="2 to 8 members"):
        OutputEnsemble(_members(1), [0.5])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        OutputEnsemble(_members(2), [0.5, 1.0])
    with pytest.raises(ValueError, match="2 members but 3"):
        OutputEnsemble(_members(2), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="same input"):
        OutputEnsemble(_members(1) + _members(1, in_channels=6), [0.5, 0.5])
    with pytest.raises(ValueError, match="expects 5 slices per window"):
        OutputEnsemble(_members(2), [0.5, 0.5])(torch.rand(1, 3, 32, 32))


@pytest.fixture(scope="module")
def two_members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return (make_weights(root / "a", threshold=0.35, seed=1), make_weights(root / "b", threshold=0.7, seed=2))


def test_weights_folder_round_trip(two_members, tmp_path):
    out = export_ensemble(two_members, tmp_path / "ens", name="test-ens", version="1.0.0", command="mnetim ensemble a b")
    model, card = load_weights(out)
    assert isinstance(model, OutputEnsemble) and card.threshold == 0.5 and card.member_thresholds == [0.35, 0.7]
    raw = card.raw
    assert [m["version"] for m in raw["ensemble"]["members"]] == ["0.0.0", "0.0.0"]
    assert [m["tensors_sha256"] for m in raw["ensemble"]["members"]] == \
        [read_card(f).raw["tensors_sha256"] for f in two_members]
    assert raw["training"]["command"] == "mnetim ensemble a b" and "test" not in raw
    assert raw["training"]["data"]["kind"].endswith("trained on: not recorded")  # make_weights records no data
    x = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        expected = torch.stack([load_weights(f)[0](x) - math.log(t / (1 - t))
                                for f, t in zip(two_members, (0.35, 0.7))]).mean(0)
        torch.testing.assert_close(model(x), expected)


def test_ensemble_segments_an_oblique_flipped_anisotropic_ct(two_members, tmp_path):
    """The ensemble goes through the one pipeline: its mask is the members' vote on the CT's own grid."""
    from MnetImSegmentLib.core.volume import Geometry

    out = export_ensemble(two_members, tmp_path / "ens", name="test-ens", version="1.0.0")
    anatomy = PhantomAnatomy(3)
    d = rotation_matrix(4, -6, 15) @ np.diag([1.0, -1.0, 1.0])
    spacing, size = (0.9, 1.3, 2.5), (160, 150, 36)
    origin = anatomy.ctv_center - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    ct = anatomy.sample(Geometry(spacing, origin, d.ravel()), size[::-1]).ct
    result = Segmenter(out, device="cpu").segment(ct, keep_probability=True, enforce_scope=False)
    members = [Segmenter(f, device="cpu").segment(ct, keep_probability=True, enforce_scope=False) for f in two_members]
    assert result.mask.geometry.allclose(ct.geometry) and result.mask.shape == ct.shape
    box = result.probability_box
    assert box == members[0].probability_box
    logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))  # noqa: E731
    vote = np.mean([logit(m.probability.array[box]) - logit(t) for m, t in zip(members, (0.35, 0.7))], 0)
    agree = (vote > 0) == (result.probability.array[box] > 0.5)
    assert agree.mean() > 0.999  # bf16 CPU inference may flip a voxel at the boundary


def test_test_manifest_is_measured_into_the_card(two_members, tmp_path):
    manifest = write_dataset(tmp_path / "data", seeds=[11, 12])
    out = export_ensemble(two_members, tmp_path / "ens", name="test-ens", version="1.0.0", test_manifest=manifest)
    test = read_card(out).raw["test"]
    assert [s["scan_id"] for s in test["scans"]] == ["S11", "S12"] and test["manifest"] == str(manifest)
    assert test["volumetric_dice_mean"] == pytest.approx(np.mean([s["vd"] for s in test["scans"]]), abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ens"]  # no staging folder left behind


def test_members_that_differ_are_refused(two_members, tmp_path):
    other = make_weights(tmp_path / "wide", features=(16, 32, 64, 128, 256))
    with pytest.raises(WeightsError, match="differs from .* config"):
        export_ensemble([two_members[0], other], tmp_path / "x", name="e", version="1")
    prior = make_weights(tmp_path / "prior", applicator_prior="tandem")
    with pytest.raises(WeightsError, match="differs from .* (config|input)"):
        export_ensemble([two_members[0], prior], tmp_path / "y", name="e", version="1")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_nested_and_single_member_ensembles_are_refused(two_members, tmp_path):
    ens = export_ensemble(two_members, tmp_path / "ens", name="e", version="1")
    with pytest.raises(WeightsError, match="itself an ensemble"):
        export_ensemble([ens, two_members[0]], tmp_path / "nested", name="e", version="1")
    with pytest.raises(WeightsError, match="2 to 8 weights folders"):
        export_ensemble([two_members[0]], tmp_path / "one", name="e", version="1")


def test_fine_tuning_an_ensemble_is_refused(two_members, tmp_path):
    ens = export_ensemble(two_members, tmp_path / "ens", name="e", version="1")
    config = tiny_config(init_weights=str(ens))
    with pytest.raises(WeightsError, match="ensemble of 2 networks; fine-tune one of its members"):
        check_training_options(config)


def test_card_with_a_bad_member_threshold_is_refused(two_members, tmp_path):
    ens = export_ensemble(two_members, tmp_path / "ens", name="e", version="1")
    card = json.loads((ens / "model.json").read_text())
    card["ensemble"]["member_thresholds"] = [0.35, 1.5]
    (ens / "model.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="member_thresholds"):
        read_card(ens)


def test_cli_writes_the_folder_and_refuses_bad_input_in_one_line(two_members, tmp_path, capsys):
    code, out, _ = run_cli(["ensemble", *two_members, "-o", tmp_path / "ens", "--name", "e", "--version", "1",
                            "--json"], capsys)
    assert code == 0 and json.loads(out)["members"] == 2 and (tmp_path / "ens" / TENSORS).is_file()
    code, _, err = run_cli(["ensemble", *two_members, "-o", tmp_path / "ens", "--name", "e", "--version", "1"], capsys)
    assert_refused(code, err, "already exists")
    code, _, err = run_cli(["ensemble", two_members[0], tmp_path / "missing", "-o", tmp_path / "e2", "--name", "e",
                            "--version", "1"], capsys)
    assert_refused(code, err, "does not exist")
    assert not (tmp_path / "e2").exists()
    code, _, err = run_cli(["ensemble", *two_members, "-o", tmp_path / "e3", "--name", "e", "--version", "1 0"], capsys)
    assert_refused(code, err, "version")
    assert not (tmp_path / "e3").exists()  # refused before anything was written


def test_slicer_description_says_how_many_networks_vote(two_members, tmp_path):
    from MnetImSegmentLib.mrml.settings import weightsDescription

    ens = export_ensemble(two_members, tmp_path / "ens", name="e", version="1")
    assert weightsDescription(read_card(ens)).startswith("e 1 (2 x Mnet_Im voting), threshold 0.50")


def test_members_are_stored_as_their_own_files_and_checked(two_members, tmp_path):
    """Each member file is its training's model.safetensors byte for byte; a changed or missing one is refused."""
    from safetensors.torch import load_file

    ens = export_ensemble(two_members, tmp_path / "ens", name="e", version="1")
    assert sorted(p.name for p in ens.iterdir()) == ["member0.safetensors", "member1.safetensors", "model.json",
                                                    TENSORS]
    for i, member in enumerate(two_members):
        assert (ens / f"member{i}.safetensors").read_bytes() == (member / TENSORS).read_bytes()
    assert load_file(str(ens / TENSORS)) == {}  # no atlas here: the network tensors are in the member files
    tampered = tmp_path / "tampered"
    shutil.copytree(ens, tampered)
    data = bytearray((tampered / "member1.safetensors").read_bytes())
    data[-1] ^= 1
    (tampered / "member1.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="member1.safetensors.*SHA-256 its model card records for member 2"):
        load_weights(tampered)
    (tampered / "member1.safetensors").unlink()
    with pytest.raises(WeightsError, match="no member1.safetensors"):
        load_weights(tampered)


def test_ensemble_with_an_atlas_keeps_member_0s(tmp_path):
    from MnetImSegmentLib.engine.applicator_prior import CtvAtlas

    atlases = [CtvAtlas(np.full((4, 5, 6), v, np.float32), (-4.0, -5.0, -6.0), 2.0, 3) for v in (0.3, 0.6)]
    members = [make_weights(tmp_path / f"m{i}", threshold=0.5, seed=i, applicator_prior="atlas", atlas=a)
               for i, a in enumerate(atlases)]
    ens = export_ensemble(members, tmp_path / "ens", name="e", version="1")
    _, card = load_weights(ens)
    np.testing.assert_array_equal(card.atlas.probability, atlases[0].probability)
    assert read_card(ens).raw["ensemble"]["ctv_atlas"] == "member 0's"
