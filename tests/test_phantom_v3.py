"""Phantom v3 (domain-randomised), the held-out style, the metal artefact simulator and --style."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MnetImSegmentLib.core.errors import DatasetError, InputError
from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.research.metal_artifacts import metal_artifact_hu
from MnetImSegmentLib.research.phantom import rotation_matrix
from MnetImSegmentLib.research.phantom_heldout import PhantomHeldout, make_phantom_heldout
from MnetImSegmentLib.research.phantom_styles import assign_styles, make_phantom_style, parse_style_mix
from MnetImSegmentLib.research.phantom_templates import StarShape, load_templates, star_volume_mm3
from MnetImSegmentLib.research.phantom_v3 import LABELS, PhantomV3, PhantomV4, make_phantom_v3
from MnetImSegmentLib.research.phantom_v5 import PhantomV5
from MnetImSegmentLib.research.phantom_v6 import PhantomV6

SMALL = dict(matrix=64, slice_mm=4.0, z_extent_mm=48.0)


def _metal_seed(style=PhantomV3, metal=True):
    for seed in range(100):
        a = style(seed)
        if bool(a.params["applicator_metal"]) == metal:
            return seed
    raise AssertionError("no such seed")


def test_v3_is_deterministic_per_seed_and_differs_between_seeds():
    a, b = make_phantom_v3(5, **SMALL), make_phantom_v3(5, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.ct.geometry == b.ct.geometry and a.params == b.params
    c = make_phantom_v3(6, **SMALL)
    assert c.params != a.params
    assert a.params["style"] == "v3" and len(a.params["os_lps"]) == 3 and len(a.params["tandem_axis_lps"]) == 3


@pytest.mark.parametrize("direction", [np.diag([-1.0, 1.0, -1.0]), rotation_matrix(4, -3, 15) @ np.diag([1.0, -1.0, 1.0])],
                         ids=["flipped", "oblique_flipped"])
@pytest.mark.parametrize("anatomy_class", [PhantomV3, PhantomV4, PhantomV5, PhantomV6],
                         ids=["v3", "v4", "v5", "v6"])
def test_v3_labels_are_physical_on_any_grid(direction, anatomy_class):
    """The same patient on an axial and on a flipped/oblique anisotropic grid: same CTV in space."""
    anatomy = anatomy_class(11)
    center = anatomy.patient_rotation @ anatomy.ctv_center

    def grid(d, spacing, size):
        d = np.asarray(d, float)
        origin = center - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
        return Geometry(spacing, origin, d.ravel()), tuple(size[::-1])

    g_ref, s_ref = grid(np.eye(3), (1.0, 1.0, 1.5), (96, 96, 64))
    g_test, s_test = grid(direction, (1.3, 0.9, 2.5), (80, 100, 40))
    ref = anatomy.sample(g_ref, s_ref, artifacts=False)
    test = anatomy.sample(g_test, s_test, artifacts=False)

    def itk(vol):
        img = sitk.GetImageFromArray(vol.array)
        img.SetSpacing(vol.geometry.spacing)
        img.SetOrigin(vol.geometry.origin)
        img.SetDirection(vol.geometry.direction)
        return img

    moved = sitk.GetArrayFromImage(sitk.Resample(itk(test.labels), itk(ref.labels), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    a, b = ref.labels.array == LABELS["CTV"], moved == LABELS["CTV"]
    assert a.sum() > 1000
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.88
    ml_ref = a.sum() * np.prod(g_ref.spacing) / 1000
    ml_test = (test.labels.array == LABELS["CTV"]).sum() * np.prod(g_test.spacing) / 1000
    assert abs(ml_ref - ml_test) < 0.12 * ml_ref


def test_templates_are_measured_and_sizes_plausible():
    templates = load_templates()
    assert len(templates) == 2 and all({"CTV", "bladder", "rectum"} <= set(t["structures"]) for t in templates)
    for t in templates:
        ctv = t["structures"]["CTV"]
        assert 30 < ctv["volume_ml"] < 120
        shape = StarShape(np.asarray(ctv["offset_mm"]), np.asarray(ctv["axes_mm"]), np.asarray(ctv["sh"]))
        assert star_volume_mm3(shape.axes, shape.coeffs) / 1000 == pytest.approx(ctv["volume_ml"], rel=0.02)
        assert t["structures"]["bladder"]["offset_mm"][1] < ctv["offset_mm"][1] < t["structures"]["rectum"]["offset_mm"][1]
    for seed in range(12):  # the randomised CTV stays a plausible HR-CTV
        a = PhantomV3(seed)
        assert 20 <= star_volume_mm3(a.ctv.axes, a.ctv.coeffs) / 1000 <= 150


def test_v3_sampled_structures_match_the_recipe():
    ph = make_phantom_v3(3, matrix=128, slice_mm=2.0, z_extent_mm=160.0)
    vox_ml = np.prod(ph.ct.geometry.spacing) / 1000
    ctv_ml = (ph.labels.array == LABELS["CTV"]).sum() * vox_ml
    assert 0.5 * ph.params["ctv_target_ml"] < ctv_ml <= 1.05 * ph.params["ctv_target_ml"]  # organs may cut it, nothing adds
    assert (ph.labels.array == LABELS["bladder"]).sum() * vox_ml > 30
    body = ph.ct.array > -500
    assert ((ph.ct.array > 300) & body).sum() > 0  # bone
    assert ((ph.ct.array < -60) & (ph.ct.array > -200)).sum() > 0.05 * body.sum()  # fat layers


def test_ctv_intensity_modes_include_non_enhanced():
    modes = {PhantomV3(s).params["ctv_mode"] for s in range(20)}
    assert modes == {"enhanced", "iso", "hypo"}
    deltas = [PhantomV3(s).params["ctv_contrast_hu"] for s in range(20)]
    assert min(deltas) < 0 < max(deltas)


def test_artifact_simulator_makes_streaks_only_with_metal():
    yy, xx = np.mgrid[:256, :256]
    hu = np.where(((xx - 128) / 100.0) ** 2 + ((yy - 128) / 80.0) ** 2 < 1, 40.0, -1000.0).astype(np.float32)
    assert not metal_artifact_hu(hu, np.zeros_like(hu), (1.2, 1.2), "steel", np.random.default_rng(0)).any()
    metal = np.zeros_like(hu)
    for cx in (105, 151):
        metal[(xx - cx) ** 2 + (yy - 128) ** 2 < 5**2] = 1.0
    painted = np.where(metal > 0, 3071.0, hu)
    delta = metal_artifact_hu(painted, metal, (1.2, 1.2), "steel", np.random.default_rng(0))
    # HU along lines through the metal (outside it): streaks where the same slice without metal is flat.
    for line in (np.s_[128, 35:98], np.s_[60:120, 105], np.s_[136:200, 151]):
        without = hu[line]
        with_metal = np.clip(painted + delta, -1024, 3071)[line]
        assert with_metal.std() > without.std() + 15, (line, with_metal.std(), without.std())
    assert delta[128, 115:141].mean() < -50  # beam hardening: the dark band between the two parts
    weak = metal_artifact_hu(painted, metal, (1.2, 1.2), "titanium", np.random.default_rng(0))
    assert np.abs(weak[metal == 0]).mean() < np.abs(delta[metal == 0]).mean()  # titanium streaks less than steel


def test_v3_artifacts_touch_only_metal_slices():
    seed = _metal_seed()
    anatomy = PhantomV3(seed)
    geometry, shape = anatomy.default_grid(matrix=96, slice_mm=5.0, z_extent_mm=200.0)
    clean = anatomy.sample(geometry, shape, artifacts=False)
    dirty = anatomy.sample(geometry, shape, artifacts=True)
    metal_slices = (clean.ct.array >= 3000).any((1, 2))
    assert dirty.params["artifact_slices"] > 0 and (~metal_slices).any()
    assert np.array_equal(clean.ct.array[~metal_slices], dirty.ct.array[~metal_slices])
    k = int(np.flatnonzero(metal_slices)[len(np.flatnonzero(metal_slices)) // 2])
    body = (clean.ct.array[k] > -500) & (clean.ct.array[k] < 2000)
    diff = dirty.ct.array[k].astype(float) - clean.ct.array[k]
    assert np.abs(diff[body]).mean() > 1.0


def test_heldout_style_differs_from_v3():
    v3 = [make_phantom_v3(s, matrix=64, slice_mm=5.0, z_extent_mm=60.0) for s in range(3)]
    ho = [make_phantom_heldout(s, matrix=64, slice_mm=5.0, z_extent_mm=60.0) for s in range(3)]

    def fat_share(ph):
        a = ph.ct.array
        body = a > -500
        return ((a > -200) & (a < -60)).sum() / max(body.sum(), 1)

    assert max(fat_share(p) for p in ho) < 0.5 * min(fat_share(p) for p in v3)
    assert all(p.params["style"] == "heldout" for p in ho)
    assert type(PhantomHeldout(0).ctv).__name__ == "SuperEllipsoid"


def test_style_mix_parsing_and_assignment():
    assert parse_style_mix("v3,v2") == [("v3", 0.5), ("v2", 0.5)]
    styles = assign_styles(10, parse_style_mix("v3:0.7,v2:0.3"), seed=1)
    assert styles.count("v3") == 7 and styles.count("v2") == 3
    assert assign_styles(10, parse_style_mix("v3:0.7,v2:0.3"), seed=1) == styles
    for bad in ("v9", "heldout,v3", "v3:x", "v3:-1", ""):
        with pytest.raises(InputError):
            parse_style_mix(bad)
    with pytest.raises(InputError):
        make_phantom_style("nope", 0)


def test_cli_writes_styles_and_keeps_heldout_out_of_training(tmp_path):
    from MnetImSegmentLib.cli import main
    from MnetImSegmentLib.research.manifest import read_manifest

    assert main(["phantom", "-o", str(tmp_path / "mix"), "--count", "4", "--style", "v3,v2", "--matrix", "48",
                 "--slice-mm", "5", "--workers", "1", "--json"]) == 0
    records = read_manifest(tmp_path / "mix" / "manifest.csv")
    assert sorted(r.style for r in records) == ["v2", "v2", "v3", "v3"]
    assert main(["phantom", "-o", str(tmp_path / "ho"), "--count", "2", "--style", "heldout", "--matrix", "48",
                 "--slice-mm", "5", "--workers", "1", "--json"]) == 0
    manifest = tmp_path / "ho" / "manifest.csv"
    assert {r.split for r in read_manifest(manifest)} == {"test"}
    manifest.write_text(manifest.read_text().replace(",test,heldout", ",train,heldout"))
    with pytest.raises(DatasetError, match="held-out"):
        read_manifest(manifest)


def test_template_table_is_rederived_from_the_real_structure_sets(tmp_path):
    """scripts/derive_phantom_templates.py reproduces the committed table from ../shared/data."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import SHARED_DATA

    folder = SHARED_DATA / "real-rt-samples" / "brachy-cervix-rtstruct"
    if not (folder / "RS.PDR.dcm").is_file():
        pytest.skip("the real structure sets (../shared/data) are not here")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "templates.json"
    subprocess.run([sys.executable, str(repo / "scripts" / "derive_phantom_templates.py"), str(folder), "-o", str(out)],
                   check=True, capture_output=True)
    assert json.loads(out.read_text()) == json.loads((repo / "MnetImSegment" / "MnetImSegmentLib" / "research" / "phantom_templates.json").read_text())


def test_ctv_boundary_contrast_measures_a_visible_and_an_invisible_edge():
    """scripts/ctv_boundary_contrast.py: anisotropic shells, and a CNR that tells a seen edge from an unseen one."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    from MnetImSegmentLib.core.volume import Geometry, Volume

    path = Path(__file__).resolve().parents[1] / "scripts" / "ctv_boundary_contrast.py"
    spec = importlib.util.spec_from_file_location("ctv_boundary_contrast", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 10:30, 10:30] = True
    inner, outer = module.boundary_rings(mask, (1.0, 1.0, 3.0), mm=3.0)  # x, y 1 mm; z 3 mm
    assert inner[10, 20, 10:13].all() and not inner[10, 20, 13]  # 3 voxels in-plane
    assert inner[5, 20, 20] and not inner[6, 20, 20]  # 1 voxel (3 mm) along z
    assert outer[10, 20, 7:10].all() and not outer[10, 20, 6] and not (inner & outer).any()

    rng = np.random.default_rng(0)
    geometry = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    for delta, seen in ((40.0, True), (0.0, False)):
        ct = 20.0 + rng.normal(0, 10, mask.shape) + delta * mask
        ph = SimpleNamespace(ct=Volume(ct.astype(np.float32), geometry),
                             labels=Volume(mask.astype(np.uint8), geometry), params={"noise_hu": 10.0})
        r = module.boundary_contrast(ph)
        assert (r["cnr"] > 2.0) if seen else (r["cnr"] < 0.5), r
        assert r["ctv_ml"] == pytest.approx(mask.sum() * 3.0 / 1000)
