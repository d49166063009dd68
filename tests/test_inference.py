"""Inference: determinism, geometry, cancellation, progress, input checks, weights validation."""

import json
import shutil

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import Cancelled, InputError, MnetImError, WeightsError
from MnetImSegmentLib.core.volume import Volume
from MnetImSegmentLib.engine.device import resolve_device
from MnetImSegmentLib.engine.inference import Segmenter, check_ct
from MnetImSegmentLib.engine.weights import load_weights, read_card

from helpers.weights import make_weights


@pytest.fixture(scope="module")
def segmenter(tiny_weights):
    return Segmenter(tiny_weights, device="cpu")


def test_same_input_same_output_and_input_untouched(segmenter, small_phantom):
    before = small_phantom.ct.array.copy()
    a = segmenter.segment(small_phantom.ct, threshold=0.5, keep_probability=True)
    b = segmenter.segment(small_phantom.ct, threshold=0.5, keep_probability=True)
    assert np.array_equal(a.probability.array, b.probability.array)
    assert np.array_equal(a.mask.array, b.mask.array)
    assert np.array_equal(small_phantom.ct.array, before)
    assert a.mask.geometry == small_phantom.ct.geometry and a.mask.shape == small_phantom.ct.shape
    assert a.mask.array.dtype == np.uint8 and set(np.unique(a.mask.array)) <= {0, 1}
    assert a.device == "cpu" and a.roi.method in ("applicator", "body")


def test_threshold_and_largest_component(segmenter, small_phantom):
    r = segmenter.segment(small_phantom.ct, threshold=0.5, keep_probability=True, largest_component=False)
    p = r.probability.array
    for t in (0.3, 0.5, 0.7):
        m = segmenter.segment(small_phantom.ct, threshold=t, largest_component=False).mask.array
        assert np.array_equal(m, (p >= t).astype(np.uint8))
    import SimpleITK as sitk

    lcc = segmenter.segment(small_phantom.ct, threshold=0.5, largest_component=True).mask.array
    n = sitk.ConnectedComponentImageFilter()
    n.Execute(sitk.GetImageFromArray(lcc))
    assert n.GetObjectCount() <= 1
    with pytest.raises(InputError, match="between 0 and 1"):
        segmenter.segment(small_phantom.ct, threshold=1.5)


def test_progress_and_cancel(segmenter, small_phantom):
    seen = []
    segmenter.segment(small_phantom.ct, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1  # cancel after the first batch

    with pytest.raises(Cancelled):
        segmenter.segment(small_phantom.ct, cancel=cancel)


@pytest.mark.parametrize("array,match", [
    (np.full((4, 32, 32), np.nan, np.float32), "NaN"),
    (np.random.default_rng(0).uniform(0, 1500, (4, 32, 32)).astype(np.float32), "does not look like CT"),
    (np.zeros((4, 8, 8), np.int16), "too small"),
])
def test_bad_volumes_are_refused(array, match):
    with pytest.raises(InputError, match=match):
        check_ct(Volume(array))


def test_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MnetImError, match="GPU \\(CUDA\\) was requested"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(MnetImError, match="Unknown device"):
        resolve_device("tpu")


def test_weights_validation(tmp_path, tiny_weights):
    model, card = load_weights(tiny_weights)
    assert card.architecture == "Mnet_Im" and not model.training
    # Missing folder / card / tensors.
    with pytest.raises(WeightsError, match="does not exist"):
        read_card(tmp_path / "nope")
    bad = tmp_path / "nocard"
    bad.mkdir()
    with pytest.raises(WeightsError, match="no model card"):
        read_card(bad)
    # Tensors changed after the card was written.
    changed = tmp_path / "changed"
    shutil.copytree(tiny_weights, changed)
    with open(changed / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(WeightsError, match="SHA-256"):
        load_weights(changed)
    # A card that describes another network than the tensors hold.
    other = tmp_path / "other"
    shutil.copytree(tiny_weights, other)
    card_json = json.loads((other / "model.json").read_text())
    card_json["config"]["features"] = [8, 16, 32, 64, 256]
    (other / "model.json").write_text(json.dumps(card_json))
    with pytest.raises(WeightsError, match="do not match"):
        load_weights(other)
    # Invalid JSON, missing fields, bad threshold.
    for text, match in [("{", "not valid JSON"), ("{}", "lacks"),
                        (json.dumps({**card_json, "threshold": 2}), "threshold")]:
        (other / "model.json").write_text(text)
        with pytest.raises(WeightsError, match=match):
            read_card(other)
    # Not a safetensors file (and never unpickled).
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_weights, pickled)
    (pickled / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    import hashlib

    c = json.loads((pickled / "model.json").read_text())
    c["tensors_sha256"] = hashlib.sha256((pickled / "model.safetensors").read_bytes()).hexdigest()
    (pickled / "model.json").write_text(json.dumps(c))
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(pickled)


def test_save_weights_refuses_non_empty_folder(tmp_path, tiny_weights):
    with pytest.raises(WeightsError, match="already holds"):
        make_weights(tiny_weights)
