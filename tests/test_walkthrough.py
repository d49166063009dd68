"""The physicist's walk-through (issue 16): a planning-system-style export tree -> import-rt -> train ->
segment -> evaluate, with the commands taken from the README as it is written.

The tree has what real exports have: varied CTV names (HRCTV, CTV-HR, HR CTV, hr-ctv, ctv_hr and a plain
CTV beside an HR-CTV), nested folders and extension-less DICOM files, a one-slice topogram next to a
planning CT, and a second (thicker) reconstruction of the same study. The README commands are parsed
from README.md (section "Training on your own data"), their placeholders replaced by the tree's paths;
only speed options (a tiny network, one short epoch) are appended, so the test stays under a minute.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MnetImSegmentLib.core.volume import Volume
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom
from MnetImSegmentLib.research.phantom import make_phantom

from helpers.research_data import TINY_MNET

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "MnetImSegment"
# One name per patient: what the default --roi must catch. P1 also has a plain CTV (HR-CTV must win).
CTV_NAMES = ["HRCTV", "CTV-HR", "HR CTV", "hr-ctv", "ctv_hr", "CTV"]
SPEED = ["--epochs", "1", "--windows-per-epoch", "8", "--batch-size", "4", "--threads", "1", "--device", "cpu",
         "--roi-size", "32", "--roi-spacing", "4", "--model-options", json.dumps({"Mnet_Im": TINY_MNET})]


def readme_commands() -> list[str]:
    """The `mnetim ...` commands of the README's "Training on your own data" steps, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Training on your own data", 1)[1].split("\n## ", 1)[0]
    steps = re.findall(r"^\d+\. `(mnetim [^`]+)`", section, re.MULTILINE)  # the numbered steps only
    return steps


def _rename_roi(rs_path: Path, name: str, extra_plain_ctv: bool) -> None:
    import copy

    import pydicom

    ds = pydicom.dcmread(str(rs_path))
    ds.StructureSetROISequence[0].ROIName = name
    if extra_plain_ctv:  # a plain CTV (smaller: its first contour only) beside the HR-CTV
        roi = copy.deepcopy(ds.StructureSetROISequence[0])
        roi.ROINumber, roi.ROIName = 99, "CTV"
        ds.StructureSetROISequence.append(roi)
        contour = copy.deepcopy(ds.ROIContourSequence[0])
        contour.ReferencedROINumber = 99
        contour.ContourSequence = [contour.ContourSequence[0]]
        ds.ROIContourSequence.append(contour)
        obs = copy.deepcopy(ds.RTROIObservationsSequence[0])
        obs.ObservationNumber, obs.ReferencedROINumber = 99, 99
        ds.RTROIObservationsSequence.append(obs)
    ds.save_as(str(rs_path))


def _strip_extensions(folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        f.rename(f.with_name(f.name.split(".")[0]))


@pytest.fixture(scope="module")
def export_tree(tmp_path_factory) -> dict:
    """Six patients as a planning system exports them, plus each one's truth mask."""
    root = tmp_path_factory.mktemp("walk") / "export"
    truths = {}
    for k, name in enumerate(CTV_NAMES):
        pid = f"PAT{k:03d}"
        # Seeds 301-306: every CT in scope (seed 300's applicator scores 0.496, just under the 0.5 cut).
        phantom = make_phantom(seed=301 + k, matrix=128, slice_mm=3.0, z_extent_mm=60)
        study = root / f"Patient_{k}" / "Study_1"  # nested
        study.mkdir(parents=True)
        ct = write_ct_series(phantom.ct, study / "CT_plan", patient_id=pid, series_description="Pelvis 3.0")
        rs = write_segmentation_dicom(phantom.mask(), study / "CT_plan", study / "RS", "rtstruct")
        _rename_roi(rs, "HR-CTV" if name == "CTV" else name, extra_plain_ctv=(name == "CTV"))
        _strip_extensions(study / "CT_plan")  # extension-less slices, as many systems write them
        if k == 0:  # a topogram beside the planning CT, same study
            write_ct_series(Volume(phantom.ct.array[:1].copy(), phantom.ct.geometry), study / "Topogram",
                            patient_id=pid, study_instance_uid=ct.study_instance_uid,
                            series_description="Topogram 0.6 T20s", series_number=2)
        if k == 1:  # a second, thicker reconstruction of the same study
            thick = phantom.ct.array[::2].copy()
            g = phantom.ct.geometry
            write_ct_series(Volume(thick, type(g)((g.spacing[0], g.spacing[1], 6.0), g.origin, g.direction)),
                            study / "CT_recon6mm", patient_id=pid, study_instance_uid=ct.study_instance_uid,
                            series_description="Pelvis 6.0", series_number=3)
        truths[f"Patient_{k}"] = phantom.mask()
    return {"root": root, "truths": truths}


def mnetim(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(PACKAGE), "PATH": "/usr/bin:/bin", "MNETIM_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "MnetImSegmentLib.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_readme_lists_the_walkthrough_commands():
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["import-rt", "train", "segment"], commands
    assert "--roi" not in commands[0]  # the README relies on the default pattern, which the tree checks


def test_walkthrough_as_the_readme_writes_it(export_tree, tmp_path):
    root = export_tree["root"]
    import_cmd, train_cmd, segment_cmd = (c.split()[1:] for c in readme_commands())

    # 1. import-rt, exactly as written (the tree path substituted).
    args = [str(root) if a == "/path/to/export_tree" else a for a in import_cmd]
    done = mnetim(args, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "dataset" / "import_report.json").read_text())
    assert len(report["imported"]) == 6 and not report["skipped"], report["skipped"]
    rois = sorted(r for e in report["imported"] for r in e["roi"])
    assert rois == sorted(["HRCTV", "CTV-HR", "HR CTV", "hr-ctv", "ctv_hr", "HR-CTV"])  # HR-CTV over CTV
    assert all(0.95 < e["mask_to_contour_area"] < 1.05 for e in report["imported"])
    assert "PAT00" not in (tmp_path / "dataset" / "manifest.csv").read_text()
    with open(tmp_path / "dataset" / "manifest.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6

    # 2. train, as written, with speed options appended.
    done = mnetim(train_cmd + SPEED, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "rest(s) on few patients" in done.stderr and "mnetim crossval" in done.stderr
    card = json.loads((tmp_path / "runs" / "mnet_im" / "weights" / "model.json").read_text())
    assert card["architecture"] == "Mnet_Im" and card["training"]["warnings"]
    assert card["input"]["roi"]["size_px"] == [32, 32]

    # 3. segment: a patient folder with a topogram beside the planning CT, no --series needed.
    patient = root / "Patient_0"
    args = [str(patient) if a == "CT" else a for a in segment_cmd]
    done = mnetim(args + ["--device", "cpu"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.seg.nrrd").is_file()

    # The whole export at once: each patient folder is a case (detected, no --batch), summary.csv.
    done = mnetim(["segment", str(root), "-o", "preds", "--weights", "runs/mnet_im/weights", "--device", "cpu",
                   "--format", ".nii.gz"], tmp_path)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "preds" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == sorted(export_tree["truths"]) and {r["status"] for r in rows} == {"done"}

    # 4. evaluate against the truth: Dice named as such, volumes and their difference per case.
    from MnetImSegmentLib.engine.io import write_labelmap

    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    for case, mask in export_tree["truths"].items():
        write_labelmap(mask, truth_dir / f"{case}.nii.gz")
    done = mnetim(["evaluate", "--pred", "preds", "--truth", "truth", "--out", "eval"], tmp_path)
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert "| Dice |" in md and "Mean ± SD" in md
    with open(tmp_path / "eval" / "per_case.csv", newline="") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 6
    for row in per_case:
        assert float(row["vol_diff_ml"]) == pytest.approx(float(row["pred_ml"]) - float(row["truth_ml"]), abs=1e-6)
        assert float(row["truth_ml"]) > 0
