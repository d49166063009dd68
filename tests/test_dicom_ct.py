"""DICOM CT series writing and reading: geometry (axial, oblique, flipped), encoding, atomicity, validity."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from MnetImSegmentLib.core.errors import InputError, OutputError
from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.dicomrt.ct_series import find_ct_series, scan_tree
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.engine.io import read_image
from MnetImSegmentLib.research.phantom import rotation_matrix

from helpers.rt_fixtures import ct_volume, dciodvfy_errors, have_dciodvfy


@pytest.mark.parametrize("direction", [None, rotation_matrix(10, -7, 25), np.diag([-1.0, -1.0, 1.0]) @ rotation_matrix(0, 20, 0)],
                         ids=["axial", "oblique", "flipped-rotated"])
def test_series_round_trip_through_simpleitk_and_our_reader(tmp_path, direction):
    vol = ct_volume(shape=(6, 20, 24), spacing=(0.7, 0.9, 2.5), origin=(-10.0, 20.0, -300.0), direction=direction)
    written = write_ct_series(vol, tmp_path / "ct", patient_id="ANON01")
    ds = pydicom.dcmread(written.files[0])
    assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.7]  # (row spacing, column spacing)
    assert (ds.Rows, ds.Columns) == (20, 24)
    d = vol.geometry.direction_matrix
    assert np.allclose(np.asarray(ds.ImageOrientationPatient, float), np.concatenate([d[:, 0], d[:, 1]]), atol=1e-6)
    assert np.allclose(np.asarray(ds.ImagePositionPatient, float), vol.geometry.origin, atol=1e-4)
    gdcm = read_image(tmp_path / "ct")  # the engine's reader (SimpleITK / GDCM)
    ours = find_ct_series(tmp_path / "ct").read_volume()
    for back in (gdcm, ours):
        assert back.geometry.allclose(vol.geometry) and (back.array == vol.array).all()


def test_left_handed_grid_reads_back_as_the_same_physical_volume(tmp_path):
    d = np.diag([1.0, 1.0, -1.0])  # slices stacked against the row x column normal
    vol = ct_volume(shape=(5, 12, 12), direction=d)
    write_ct_series(vol, tmp_path / "ct")
    back = read_image(tmp_path / "ct")
    assert (back.array == vol.array[::-1]).all()
    assert np.allclose(back.geometry.origin, vol.geometry.index_to_physical((0, 0, 4)), atol=1e-4)


def test_uids_ids_and_hu_encoding(tmp_path):
    vol = ct_volume(shape=(4, 8, 8))
    vol.array[0, 0, 0], vol.array[0, 0, 1] = -1024, 3071
    s = write_ct_series(vol, tmp_path / "a", patient_id="PHANTOM0001", series_description="phantom")
    dss = [pydicom.dcmread(f) for f in s.files]
    assert len({d.SOPInstanceUID for d in dss}) == 4
    assert len({(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in dss}) == 1
    assert dss[0].PatientID == "PHANTOM0001" and dss[0].PatientBirthDate == "" and dss[0].Modality == "CT"
    assert dss[0].PixelRepresentation == 0 and float(dss[0].RescaleIntercept) == -1024  # scanner-like unsigned
    assert [int(d.InstanceNumber) for d in dss] == [1, 2, 3, 4]
    low = Volume(np.full((2, 4, 4), -2000, np.int16), vol.geometry)
    s2 = write_ct_series(low, tmp_path / "b", frame_of_reference_uid=s.frame_of_reference_uid,
                         study_instance_uid=s.study_instance_uid)
    d2 = pydicom.dcmread(s2.files[0])
    assert d2.PixelRepresentation == 1 and d2.FrameOfReferenceUID == dss[0].FrameOfReferenceUID
    assert (read_image(tmp_path / "b").array == -2000).all()


def test_refusals_leave_nothing_behind(tmp_path):
    vol = ct_volume(shape=(2, 6, 6))
    write_ct_series(vol, tmp_path / "ct")
    with pytest.raises(OutputError, match="already exists"):
        write_ct_series(vol, tmp_path / "ct")
    with pytest.raises(OutputError, match="16-bit"):
        write_ct_series(Volume(np.full((2, 4, 4), 1e6), vol.geometry), tmp_path / "big")
    sheared = Geometry((1, 1, 1), (0, 0, 0), (1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(OutputError, match="orthonormal"):
        write_ct_series(Volume(np.zeros((2, 4, 4), np.int16), sheared), tmp_path / "shear")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]
    again = write_ct_series(Volume(vol.array + 1, vol.geometry), tmp_path / "ct", overwrite=True)
    assert len(list((tmp_path / "ct").iterdir())) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ct"]
    assert (find_ct_series(tmp_path / "ct").read_volume().array == vol.array + 1).all()
    assert again.n_slices == 2


def test_series_problems_are_clear(tmp_path):
    vol = ct_volume(shape=(5, 8, 8))
    s = write_ct_series(vol, tmp_path / "ct")
    s.files[2].unlink()  # a missing slice
    with pytest.raises(InputError, match="irregular slice spacing"):
        find_ct_series(tmp_path / "ct").grid()
    (tmp_path / "two").mkdir()
    first = write_ct_series(vol, tmp_path / "two" / "a")
    write_ct_series(vol, tmp_path / "two" / "b")
    # Two equal series: the planning-CT rule ties and keeps the first found, and says how to choose.
    chosen = find_ct_series(tmp_path / "two")
    assert chosen.series_instance_uid == first.series_instance_uid and "--series" in chosen.selection
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not dicom")
    tree = scan_tree(tmp_path / "junk")
    assert not tree.ct_series and tree.unreadable[0][1] == "not a DICOM file"


def test_truncated_slice_is_an_input_error(tmp_path):
    s = write_ct_series(ct_volume(shape=(3, 16, 16)), tmp_path / "ct")
    data = s.files[1].read_bytes()
    s.files[1].write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError, match="could not be decoded"):
        find_ct_series(tmp_path / "ct").read_volume()


@pytest.mark.skipif(not have_dciodvfy(), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_ct_slices_pass_dciodvfy(tmp_path):
    s = write_ct_series(ct_volume(shape=(2, 8, 8), direction=rotation_matrix(5, 5, 5)), tmp_path / "ct")
    assert dciodvfy_errors(s.files[0]) == []
