"""The planning CT is chosen among several CT series of a folder (docs/dicom.md, issue 16)."""

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import InputError
from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.dicomrt.ct_series import find_ct_series, is_localizer
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series


def _ct(nz, dz=2.5, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    array = np.full((nz, 24, 20), -1000, np.int16)
    array[:, 6:18, 4:16] = 40
    return Volume(array, Geometry((1.5, 1.2, dz), (-15.0, -14.0, -30.0), direction))


def test_scout_and_second_reconstruction_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    planning = write_ct_series(_ct(12, 2.0), tmp_path / "a" / "plan", series_description="Pelvis 2.0")
    write_ct_series(_ct(1), tmp_path / "a" / "topo", series_description="Topogram 0.6 T20s")
    write_ct_series(_ct(6, 4.0), tmp_path / "a" / "thick", series_description="Pelvis 4.0")
    chosen = find_ct_series(tmp_path / "a")
    assert chosen.series_instance_uid == planning.series_instance_uid
    assert "3" in chosen.selection and "--series" in chosen.selection


def test_thinnest_wins_among_equal_counts_and_axial_first(tmp_path):
    (tmp_path / "b").mkdir()
    thin = write_ct_series(_ct(10, 1.0), tmp_path / "b" / "thin")
    write_ct_series(_ct(10, 3.0), tmp_path / "b" / "thick")
    # A sagittal reformat with more slices still loses to the axial planning CT.
    write_ct_series(_ct(30, 1.0, direction=(0, 0, 1, 1, 0, 0, 0, 1, 0)), tmp_path / "b" / "sag")
    assert find_ct_series(tmp_path / "b").series_instance_uid == thin.series_instance_uid


def test_only_localizers_refused_and_series_overrides(tmp_path):
    (tmp_path / "c").mkdir()
    topo = write_ct_series(_ct(1), tmp_path / "c" / "t1", series_description="Scout")
    write_ct_series(_ct(2), tmp_path / "c" / "t2")
    with pytest.raises(InputError, match="none is a usable planning CT"):
        find_ct_series(tmp_path / "c")
    assert is_localizer(topo)
    assert find_ct_series(tmp_path / "c", topo.series_instance_uid).n_slices == 1
