"""Application settings of the Slicer module (weights folder, in-process, Show 3D) and model marking.

The settings layer takes any QSettings-like store; here a dict store, in Slicer ``qt.QSettings()``.
The weights choice must survive a new scene: a new scene's parameter node has no weights folder,
and the module must then start from the folder chosen last time, not silently from the demo.
"""

from __future__ import annotations

import json
import shutil

import pytest
import vtk

import slicer
from MnetImSegmentLib.engine.weights import default_weights_dir, read_card
from MnetImSegmentLib.logic import MnetImSegmentLogic
from MnetImSegmentLib.mrml.settings import (DEMO_TAG, DEMO_TAG_VALUE, WEIGHTS_KEY, DictStore, ModuleSettings,
                                            isDemoCard, weightsDescription, weightsForScene)
from MnetImSegmentLib.research.phantom import make_phantom

from helpers.slicer_scene import add_volume, new_scene, scene  # noqa: F401 (fixture)
from helpers.weights import make_weights


class StringStore(DictStore):
    """Like QSettings with an INI file: every value comes back as a string."""

    def setValue(self, key, value):
        super().setValue(key, str(value).lower() if isinstance(value, bool) else str(value))




def segment_tags(seg_node) -> dict:
    segment = seg_node.GetSegmentation().GetSegment(seg_node.GetSegmentation().GetSegmentIdBySegmentName("CTV"))
    out = {}
    for key in ("MnetImSegment.Model", DEMO_TAG):
        value = vtk.reference("")
        if segment.GetTag(key, value):
            out[key] = str(value)
    return out


@pytest.mark.parametrize("store_class", [DictStore, StringStore])
def test_settings_round_trip_through_a_qsettings_like_store(store_class, tiny_weights):
    store = store_class()
    settings = ModuleSettings(store)
    assert settings.weightsFolder == "" and settings.inProcess is False and settings.show3D is True
    settings.weightsFolder = tiny_weights
    settings.inProcess = True
    settings.show3D = False
    again = ModuleSettings(store)  # e.g. after a restart
    assert again.weightsFolder == str(tiny_weights) and again.inProcess is True and again.show3D is False
    again.weightsFolder = "."  # choosing the demo weights again is remembered as the demo
    assert store.value(WEIGHTS_KEY) == "" and ModuleSettings(store).weightsFolder == ""


def test_weights_choice_survives_a_new_scene(tiny_weights, tmp_path):
    settings = ModuleSettings(DictStore())
    logic = MnetImSegmentLogic()
    phantom = make_phantom(seed=5, matrix=96, slice_mm=3.0, z_extent_mm=70)

    first = new_scene()
    try:
        # The user picks weights in the first scene: the widget stores them in the settings.
        settings.weightsFolder = tiny_weights
        seg = logic.process(add_volume(first, phantom.ct), weights=tiny_weights, device="cpu")
        assert segment_tags(seg)["MnetImSegment.Model"] == "test-Mnet_Im 0.0.0"
    finally:
        slicer.mrmlScene = first._previous_mrml_scene
        first.Clear(1)

    second = new_scene()  # a new scene: its parameter node has no weights folder
    try:
        folder, problem = weightsForScene(None, settings)
        assert folder == tiny_weights and problem is None
        seg = logic.process(add_volume(second, phantom.ct), weights=folder, device="cpu")
        tags = segment_tags(seg)
        assert tags["MnetImSegment.Model"] == "test-Mnet_Im 0.0.0" and DEMO_TAG not in tags
    finally:
        slicer.mrmlScene = second._previous_mrml_scene
        second.Clear(1)

    # A folder the scene names wins over the remembered one.
    assert weightsForScene(str(tmp_path), settings) == (tmp_path, None)
    # The remembered folder is gone: the demo weights, with one sentence saying why.
    gone = tmp_path / "gone"
    shutil.copytree(tiny_weights, gone)
    settings.weightsFolder = gone
    shutil.rmtree(gone)
    folder, problem = weightsForScene("", settings)
    assert folder is None and "chosen last time cannot be used" in problem and "\n" not in problem


def test_demo_weights_are_marked_on_the_segment_and_in_the_description(scene, tiny_weights, tmp_path):
    demo_card = read_card(default_weights_dir())
    assert isDemoCard(demo_card) and "NOT FOR CLINICAL USE" in weightsDescription(demo_card)
    assert not isDemoCard(read_card(tiny_weights)) and "CLINICAL" not in weightsDescription(read_card(tiny_weights))
    assert "test-Mnet_Im 0.0.0" in weightsDescription(read_card(tiny_weights))
    assert "input +" not in weightsDescription(read_card(tiny_weights))  # the paper's input says nothing more
    biased = make_weights(tmp_path / "biased", applicator_prior="tandem", prior_bias=True)
    assert "prior channel" in weightsDescription(read_card(biased)) and "prior bias" in weightsDescription(read_card(biased))
    # The demo's description names its prior bias exactly when its card has one (0.3.0 had none, 0.3.1 has).
    assert ("prior bias" in weightsDescription(demo_card)) == bool(demo_card.config.get("prior_bias"))
    assert "prior bias" not in weightsDescription(read_card(tiny_weights))
    # An ensemble says how many networks vote (the time it costs), a single network does not.
    assert ("voting" in weightsDescription(demo_card)) == (demo_card.member_thresholds is not None)
    assert "voting" not in weightsDescription(read_card(tiny_weights))

    # Any card whose intended use says so is marked, and the segment carries the tag (its name stays CTV).
    marked = tmp_path / "marked"
    shutil.copytree(tiny_weights, marked)
    card = json.loads((marked / "model.json").read_text())
    card["intended_use"] = "Teaching only. NOT FOR CLINICAL USE."
    (marked / "model.json").write_text(json.dumps(card))
    phantom = make_phantom(seed=6, matrix=96, slice_mm=3.0, z_extent_mm=70)
    seg = MnetImSegmentLogic().process(add_volume(scene, phantom.ct), weights=marked, device="cpu")
    assert seg.GetSegmentation().GetSegmentIdBySegmentName("CTV")
    assert segment_tags(seg)[DEMO_TAG] == DEMO_TAG_VALUE


def test_weights_description_names_what_the_input_adds(tmp_path):
    card = read_card(make_weights(tmp_path / "w", applicator_prior="tandem", metal_reduction="normalised"))
    assert weightsDescription(card).endswith("input + tandem prior channel + NMAR metal-artefact reduction")


def test_the_ctv_terminology_is_in_the_modules_own_loaded_list():
    from pathlib import Path

    from MnetImSegmentLib.core import style

    path = Path(__file__).resolve().parents[1] / "MnetImSegment" / "Resources" / "Terminology" / "MnetImSegment.term.json"
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = logic.LoadTerminologyFromFile(str(path))
    assert name == style.CTV_TERMINOLOGY_CONTEXT and style.CTV_TERMINOLOGY.startswith(name + "~")
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(name, "CTV", entry)
    assert entry.GetTypeObject().GetCodeValue() == "228793007"
    assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == style.CTV_COLOR_255
    # The segment's terminology string names exactly the loaded category and type.
    assert logic.SerializeTerminologyEntry(entry).split("~")[:3] == style.CTV_TERMINOLOGY.split("~")[:3]
    assert "loadTerminology" in (path.parents[2] / "MnetImSegment.py").read_text()


def test_sample_data_ct_is_written_once_and_loads_as_a_ct(scene, tmp_path):
    import SimpleITK as sitk

    from MnetImSegmentLib.research.sample_data import sample_ct_path, write_sample_ct

    path = write_sample_ct(tmp_path / "cache")
    assert path == sample_ct_path(tmp_path / "cache") and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert write_sample_ct(tmp_path / "cache") == path and path.stat().st_mtime_ns == mtime  # reused
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(image)
    assert array.min() <= -900 and array.max() > 100 and image.GetSize()[:2] == (160, 160)
    # Slicer's own volume loader reads it (what Sample Data does with the file:// URI).
    node = slicer.vtkSlicerVolumesLogic()
    node.SetMRMLScene(scene)
    loaded = node.AddArchetypeVolume(str(path), "phantom", 0, vtk.vtkStringArray())
    assert loaded is not None and slicer.util.arrayFromVolume(loaded).shape == array.shape
    from pathlib import Path

    module = (Path(__file__).resolve().parents[1] / "MnetImSegment" / "MnetImSegment.py").read_text()
    assert 'connect("startupCompleted()", registerSampleData)' in module and "path.as_uri()" in module
