"""A folder of patient DICOM folders is a batch without --batch; each patient folder is one case,
its scout skipped; the batch writes summary.csv (issue 16)."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from MnetImSegmentLib.cli import main
from MnetImSegmentLib.core.errors import InputError
from MnetImSegmentLib.core.volume import Volume
from MnetImSegmentLib.dicomrt.ct_series import find_ct_series
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.engine.batch_cases import SUMMARY_COLUMNS, is_batch_folder


def _strip_extensions(folder: Path) -> None:
    for f in list(folder.iterdir()):
        f.rename(f.with_name(f.stem.replace(".", "_")))


def _patient(root: Path, pid: str, ct: Volume, scout: bool) -> Path:
    nested = root / pid / "DICOM" / "CT"
    nested.mkdir(parents=True)
    plan = write_ct_series(ct, nested / "plan", patient_id=pid, series_description="Pelvis")
    _strip_extensions(nested / "plan")
    if scout:
        topo = Volume(ct.array[:1].copy(), ct.geometry)
        write_ct_series(topo, nested / "topo", patient_id=pid, study_instance_uid=plan.study_instance_uid,
                        series_description="Topogram", series_number=2)
    return root / pid


def test_folder_of_patient_folders_is_a_batch(tmp_path, small_phantom, tiny_weights, capsys):
    root = tmp_path / "export"
    root.mkdir()
    _patient(root, "P1", small_phantom.ct, scout=True)
    _patient(root, "P2", small_phantom.ct, scout=False)
    (root / "DICOMDIR").write_bytes(b"\0" * 200)  # an index file at the top does not make it one series
    assert is_batch_folder(root)
    with pytest.raises(InputError, match="holds the CTs of 2 patients"):
        find_ct_series(root)  # nor is the whole export ever read as one case
    assert not is_batch_folder(root / "P1")  # one study, a scout beside the planning CT: one case

    out = tmp_path / "out"
    code = main(["segment", str(root), "-o", str(out), "--weights", str(tiny_weights), "--device", "cpu", "--json"])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads(stdout)
    assert not report["failed"] and len(report["cases"]) == 2
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [r["case"] for r in rows] == ["P1", "P2"] and {r["status"] for r in rows} == {"done"}
    assert all(float(r["ctv_ml"]) >= 0 for r in rows)
    # The summary carries each case's quality warnings exactly as the JSON report does.
    by_case = {Path(c["input"]).name: "; ".join(c.get("warnings", [])) for c in report["cases"]}
    assert {r["case"]: r["warnings"] for r in rows} == by_case
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # nothing temporary left

    # The scout alone in its patient folder does not stop a single-case run either.
    code = main(["segment", str(root / "P1"), "-o", str(tmp_path / "p1.nii.gz"), "--weights", str(tiny_weights),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
