"""Dataset import of a messy export tree: pairing, bad cases skipped with reasons, manifest, privacy."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from MnetImSegmentLib.cli.import_rt import add_parser as add_commands
from MnetImSegmentLib.core.errors import DatasetError, MnetImError
from MnetImSegmentLib.engine.io import read_image
from MnetImSegmentLib.research.manifest import read_manifest
from MnetImSegmentLib.research.rt_import import anonymous_id, import_dataset
from MnetImSegmentLib.research.training.data import read_volume_pair

from helpers.rt_fixtures import BIRTH_DATE, PATIENT_ID, circle, ct_volume, dice, square, write_ct, write_rs

SECRETS = [PATIENT_ID, "DOE", "JANE", BIRTH_DATE, "DOE_JANE", "PB0002", "PE0005"]


def _ctv(zs=(2.5, 5.0, 7.5, 10.0, 12.5), r=8.0):
    return [(circle(0, 0, r, z), "CLOSED_PLANAR") for z in zs]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An export tree with two good patients, one that needs its series reference, and every bad case."""
    root = tmp_path_factory.mktemp("export")
    info = {}
    # A: nested folders named after the patient; HR-CTV with a hole on one slice; an applicator; an older duplicate.
    a = root / "DOE_JANE_MRN12345" / "study 1"
    (a / "CT").mkdir(parents=True)
    ct_a = write_ct(a / "CT" / "series", ct_volume(seed=1))
    rois = {"BODY": [(square(0, 0, 22, z), "CLOSED_PLANAR") for z in (0, 2.5, 5)],
            "HR-CTV": _ctv() + [(circle(0, 0, 3, 7.5), "CLOSED_PLANAR")],
            "tandem": [(np.array([[0, 0, -5], [0, 1, 5], [0, 2, 20]], float), "OPEN_NONPLANAR")]}
    write_rs(a / "RS_new.dcm", ct_a, rois, date="20240301")
    write_rs(a / "older" / "RS_old.dcm", ct_a, {"CTV": _ctv(r=5)}, date="20230101")
    info["a"] = ct_a
    # B: self-intersecting contour, junk files beside it.
    b = root / "patB"
    b.mkdir()
    ct_b = write_ct(b / "img", ct_volume(seed=2), patient_id="PB0002", patient_name="ROE^RICHARD")
    bowtie = np.array([[-10, -10, 5], [10, 10, 5], [10, -10, 5], [-10, 10, 5]], float)
    write_rs(b / "struct.dcm", ct_b, {"ctv": _ctv(zs=(2.5,)) + [(bowtie, "CLOSED_PLANAR")]}, patient_id="PB0002",
             patient_name="ROE^RICHARD")
    (b / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    (b / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "README.txt").write_text("export notes for DOE^JANE")
    # C: no CTV.  D: frame of reference of a CT that was not exported.  F: empty contour sequence.
    ct_c = write_ct(root / "patC_ct", ct_volume(seed=3), patient_id="PC0003")
    write_rs(root / "patC_rs.dcm", ct_c, {"Bladder": _ctv()}, patient_id="PC0003")
    write_rs(root / "patD" / "rs.dcm", None, {"CTV": _ctv()}, frame_of_reference_uid="1.2.3.4.5.6.7", patient_id="PD0004")
    ct_f = write_ct(root / "patF_ct", ct_volume(seed=4), patient_id="PF0006")
    write_rs(root / "patF_rs.dcm", ct_f, {"CTV": None}, patient_id="PF0006")
    # E: two CT series in one frame of reference; one structure set names its series, one names neither.
    e = root / "patE"
    e.mkdir()
    ct_e1 = write_ct(e / "ct1", ct_volume(seed=5), patient_id="PE0005")
    write_ct(e / "ct2", ct_volume(seed=6, spacing=(1.5, 1.5, 2.0)), patient_id="PE0005",
             frame_of_reference_uid=ct_e1.frame_of_reference_uid, study_instance_uid=ct_e1.study_instance_uid)
    write_rs(e / "rs_named.dcm", ct_e1, {"CTV": _ctv()}, patient_id="PE0005")
    write_rs(e / "rs_vague.dcm", None, {"CTV": _ctv(r=6)}, frame_of_reference_uid=ct_e1.frame_of_reference_uid,
             referenced_series_uid="1.2.3.999", patient_id="PE0005", date="20250101")
    info["e1"] = ct_e1
    # G: a CT slice truncated on disk.
    ct_g = write_ct(root / "patG" / "ct", ct_volume(seed=7), patient_id="PG0007")
    write_rs(root / "patG" / "rs.dcm", ct_g, {"CTV": _ctv()}, patient_id="PG0007")
    data = ct_g.files[3].read_bytes()
    ct_g.files[3].write_bytes(data[:-300])
    # H: a structure set cut off in the middle of its contours.
    rs_h = write_rs(root / "patH" / "rs.dcm", ct_c, {"CTV": _ctv()}, patient_id="PC0003")
    rs_h.write_bytes(rs_h.read_bytes()[:-700])
    return root, info


@pytest.fixture(scope="module")
def imported(tree, tmp_path_factory):
    root, _ = tree
    out = tmp_path_factory.mktemp("dataset") / "out"
    lines = []
    result = import_dataset(root, out, log=lines.append, key_file=out.parent / "key.csv")
    return result, out, lines


def _reasons(result):
    return [s["reason"] for s in result.skipped]


def test_good_cases_are_imported_and_bad_ones_skipped_with_reasons(imported):
    result, out, _ = imported
    assert len(result.imported) == 3 and len(result.skipped) == 7
    text = " | ".join(_reasons(result))
    for phrase in ("no ROI matching", "matches none of the", "does not reference one of them", "empty contour sequence",
                   "bytes of pixel data where Rows x Columns", "superseded", "damaged or truncated"):
        assert phrase in text, phrase
    assert result.unreadable_files == 2  # garbage.dcm and README.txt (hidden .DS_Store is not even read)
    assert all(s["reason"].endswith(".") and "\n" not in s["reason"] for s in result.skipped)


def test_manifest_is_what_training_reads(imported, tree):
    result, out, _ = imported
    records = read_manifest(out / "manifest.csv")
    assert len(records) == 3 and len({r.patient_id for r in records}) == 3
    header = (out / "manifest.csv").read_text().splitlines()[0]
    assert header == "image,mask,patient_id,scan_id,split"
    assert all(not line.split(",")[0].startswith("/") for line in (out / "manifest.csv").read_text().splitlines()[1:])
    for r in records:
        image, mask = read_volume_pair(r)
        assert set(np.unique(mask.array)) <= {0, 1} and mask.array.sum() > 0


def test_mask_content_hole_and_applicator(imported, tree):
    result, out, _ = imported
    root, info = tree
    entry = next(e for e in result.imported if e["roi"] == ["HR-CTV"])
    mask = read_image(out / "masks" / f"{entry['scan_id']}.nii.gz")
    ct = info["a"].read_volume()
    assert mask.geometry.allclose(ct.geometry)
    g = ct.geometry
    jj, ii = np.mgrid[0:32, 0:32]
    r = np.hypot(g.origin[0] + 1.5 * ii, g.origin[1] + 1.5 * jj)
    truth = np.zeros(ct.shape, bool)
    truth[1:6] = r < 8
    truth[3] &= r >= 3  # the inner contour is a hole
    assert dice(mask.array, truth) > 0.95 and not mask.array[3][r < 2].any()
    assert (read_image(out / "images" / f"{entry['scan_id']}.nii.gz").array == ct.array).all()
    bowtie = next(e for e in result.imported if e["roi"] == ["ctv"])
    assert any("self-intersecting" in n for n in bowtie["notes"])


def test_skipped_cases_name_their_source_folder_on_the_terminal_only(imported, tree, tmp_path):
    result, out, lines = imported
    # The person running the import sees which folder to fix (terminal lines, not saved in the dataset).
    assert any("(source: DOE_JANE_MRN12345/study 1/older/)" in line and "superseded" in line for line in lines)
    assert "DOE_JANE" not in (out / "import_report.json").read_text()
    # --anonymise: hashed references in those lines too.
    quiet = []
    import_dataset(tree[0], tmp_path / "anon", log=quiet.append, anonymise=True)
    assert len(quiet) == len(lines) and not any("source:" in line or "DOE" in line for line in quiet)


def test_import_report_compares_mask_and_contour_area(imported):
    result, out, _ = imported
    report = json.loads((out / "import_report.json").read_text())
    assert "centre" in report["rasterisation"]["convention"] and "4-9 %" in report["rasterisation"]["convention"]
    ratios = [e["mask_to_contour_area"] for e in report["imported"]]
    assert len(ratios) == 3 and all(0.85 < r < 1.15 for r in ratios)
    assert report["rasterisation"]["mask_to_contour_area"]["min"] == min(ratios)


def test_nothing_identifying_in_outputs(imported, tree):
    result, out, lines = imported
    root, info = tree
    texts = [(out / "manifest.csv").read_text(), (out / "import_report.json").read_text()]
    texts += [p.name for p in out.rglob("*")]
    uid = re.compile(r"\d+\.\d+\.\d{4,}")  # 2.25.<uuid> and the like
    for text in texts:
        for secret in SECRETS + [info["a"].study_instance_uid, "patB", "struct.dcm"]:
            assert secret not in text, secret
        assert not uid.search(text)
    report = json.loads((out / "import_report.json").read_text())
    assert report["ids"] == "pseudonymised" and report["tree"] == "<tree>"
    assert {e["patient_id"] for e in report["imported"]} >= {"p" + anonymous_id(PATIENT_ID)}
    key = (out.parent / "key.csv").read_text()  # the key file (kept apart) is what links back
    assert PATIENT_ID in key and "RS_new.dcm" in key


def test_keep_ids_and_salt(tree, tmp_path):
    root, _ = tree
    kept = import_dataset(root, tmp_path / "kept", keep_ids=True, log=lambda line: None)
    report = (tmp_path / "kept" / "import_report.json").read_text()
    assert PATIENT_ID in report and "patC_rs.dcm" in report
    assert any(r["patient_id"] == PATIENT_ID for r in kept.imported)
    salted = import_dataset(root, tmp_path / "salted", id_salt="s3cret", log=lambda line: None)
    plain_ids = {"p" + anonymous_id(PATIENT_ID)}
    assert not plain_ids & {r["patient_id"] for r in salted.imported}
    assert "p" + anonymous_id(PATIENT_ID, "s3cret") in {r["patient_id"] for r in salted.imported}


def test_refusals(tree, imported, tmp_path):
    root, _ = tree
    _, out, _ = imported
    with pytest.raises(DatasetError, match="already holds a dataset"):
        import_dataset(root, out)
    with pytest.raises(DatasetError, match="inside the input tree"):
        import_dataset(root, root / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No RT structure set"):
        import_dataset(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        import_dataset(root, tmp_path / "o2", key_file=tmp_path / "o2" / "key.csv")


def _cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="mnetim")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except MnetImError as exc:
        print(f"mnetim: error: {exc}")
        code = exc.exit_code
    return code, capsys.readouterr().out


def test_cli_dataset_mode_with_name_map(tmp_path, capsys):
    root = tmp_path / "tree"
    ct = write_ct(root / "ct", ct_volume(seed=8), patient_id="PN0001")
    write_rs(root / "rs.dcm", ct, {"GTV+CTV hr": _ctv(), "BODY": [(square(0, 0, 20, 5), "CLOSED_PLANAR")]})
    code, out = _cli(["import-rt", "--dataset", str(root), "-o", str(tmp_path / "a"), "--json"], capsys)
    assert code == 1 and json.loads(out)["imported"] == 0  # the default pattern does not know this name
    name_map = tmp_path / "names.json"
    name_map.write_text(json.dumps({"CTV": ["GTV+CTV hr"]}))
    code, out = _cli(["import-rt", "--dataset", str(root), "-o", str(tmp_path / "b"), "--roi", "ctv",
                      "--name-map", str(name_map), "--json"], capsys)
    assert code == 0 and json.loads(out)["imported"] == 1
    code, out = _cli(["import-rt", str(root / "ct"), "-o", str(tmp_path / "c.nii.gz")], capsys)
    assert code != 0 and out.startswith("mnetim: error: Give CT_DIR and RTSTRUCT")
    code, out = _cli(["import-rt", str(root / "ct"), str(root / "rs.dcm"), "--roi", "bladder", "-o", str(tmp_path / "c.nii.gz")],
                     capsys)
    assert code != 0 and "no ROI matching 'bladder'" in out and out.count("\n") == 1
    assert not (tmp_path / "c.nii.gz").exists()
