"""The dependency decisions the Slicer module acts on (pure logic: no Slicer, no pip run)."""

from __future__ import annotations

import pytest

from MnetImSegmentLib.mrml.dependencies import (REQUIREMENTS, SLICER_OWNED, TORCH, currentVersions, parseVersion,
                                                planInstallation, torchVersionRequirement, versionAtLeast)

SLICER_PYTHON = {"torch": None, "safetensors": None, "SimpleITK": "2.4.0", "numpy": "1.26.4", "vtk": None}


@pytest.mark.parametrize("text, expected", [
    ("2.3.1+cu121", (2, 3, 1)), ("2.5.0rc1", (2, 5)), ("2.1", (2, 1)), ("2.1.0", (2, 1)), ("v1.12.1", (1, 12, 1)),
    ("0.4.5", (0, 4, 5)), ("10.0", (10,)),
])
def test_parse_version(text, expected):
    assert parseVersion(text) == expected


def test_version_comparison_is_numeric_not_lexical():
    assert versionAtLeast("2.10.0", "2.9")  # '2.10' < '2.9' as strings
    assert versionAtLeast("2.1.0+cpu", "2.1") and versionAtLeast("2.1", "2.1.0")
    assert not versionAtLeast("2.0.1", "2.1") and not versionAtLeast("1.13", "2.1")
    with pytest.raises(ValueError):
        parseVersion("unknown")


def test_fresh_slicer_installs_torch_through_pytorchutils_and_the_rest_with_pinned_slicer_packages(tmp_path):
    plan = planInstallation(SLICER_PYTHON, hasPyTorchUtils=True)
    assert plan.needed and plan.torchNeeded and plan.torchThroughPyTorchUtils
    assert [r.pip for r in plan.toInstall] == ["torch", "safetensors"]
    assert [r.pip for r in plan.pipRequirements] == ["safetensors"]  # torch goes through PyTorchUtils
    assert torchVersionRequirement() == ">=2.1"
    # Slicer's own packages are pinned at what is installed; vtk (no pip metadata in Slicer) cannot be
    # pinned but nothing we install depends on it.
    assert plan.constraints == {"SimpleITK": "2.4.0", "numpy": "1.26.4"}
    assert plan.constraintsText() == "SimpleITK==2.4.0\nnumpy==1.26.4\n"
    args = plan.pipArguments(str(tmp_path / "c.txt"))
    assert args == ["install", "--upgrade", "safetensors>=0.4", "-c", str(tmp_path / "c.txt")]
    assert not any(name in " ".join(args[:-2]) for name in SLICER_OWNED)
    text = plan.confirmationText()
    assert text.count("\n  - ") == 2 and "torch>=2.1 (not installed), through the PyTorch extension" in text
    assert "safetensors>=0.4 (not installed), with pip" in text
    assert "SimpleITK 2.4.0" in text and "numpy 1.26.4" in text and text.endswith("Install now?")


def test_without_pytorchutils_torch_goes_through_pip_with_the_same_pins():
    plan = planInstallation(SLICER_PYTHON, hasPyTorchUtils=False)
    assert plan.pipArguments("c.txt") == ["install", "--upgrade", "torch>=2.1", "safetensors>=0.4", "-c", "c.txt"]
    assert "torch>=2.1 (not installed), with pip" in plan.confirmationText()


def test_too_old_torch_is_upgraded_and_said_so():
    versions = dict(SLICER_PYTHON, torch="1.13.1", safetensors="0.4.3")
    plan = planInstallation(versions, hasPyTorchUtils=False)
    assert plan.outdated == [(TORCH, "1.13.1")] and not plan.missing
    assert plan.pipArguments() == ["install", "--upgrade", "torch>=2.1"]  # no constraints file given
    assert "torch>=2.1 (installed 1.13.1, too old)" in plan.confirmationText()


def test_everything_present_means_nothing_to_do():
    versions = dict(SLICER_PYTHON, torch="2.3.1+cu121", safetensors="0.4.3")
    plan = planInstallation(versions, hasPyTorchUtils=True)
    assert not plan.needed and plan.pipArguments("c.txt") == [] and plan.blockedMessage() is None


def test_a_slicer_owned_package_is_never_installed_but_reported():
    versions = dict(SLICER_PYTHON, torch="2.3.1", safetensors="0.4.3", SimpleITK="2.2.1")
    plan = planInstallation(versions, hasPyTorchUtils=False)
    assert not plan.needed and plan.pipArguments("c.txt") == []
    assert "SimpleITK>=2.3" in plan.blockedMessage() and "Slicer 5.4" in plan.blockedMessage()
    # Present without readable metadata: left alone, not reinstalled.
    plan = planInstallation(dict(versions, SimpleITK="unknown"), hasPyTorchUtils=False)
    assert not plan.needed and plan.blockedMessage() is None and "SimpleITK" not in plan.constraints


def test_current_versions_reads_metadata_and_marks_importable_packages_without_it():
    known = {"torch": "2.4.0", "numpy": "2.0.1"}
    versions = currentVersions(versionOf=known.get, importable=lambda module: module == "SimpleITK")
    assert versions == {"torch": "2.4.0", "safetensors": None, "SimpleITK": "unknown", "numpy": "2.0.1", "vtk": None}
    assert {r.pip for r in REQUIREMENTS} <= set(versions)


def test_this_python_needs_nothing():
    assert not planInstallation(currentVersions(), hasPyTorchUtils=False).needed
