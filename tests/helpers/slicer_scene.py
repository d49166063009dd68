"""A real MRML scene without the Slicer GUI (slicer-core), wired the way Slicer wires its own.

Used by the Slicer tests' ``scene`` fixture and by ``benchmarks/benchmark.py``. Each logic is set up because MRML needs it (e.g. the Segmentations
logic registers the labelmap conversion rules; without it ``AddEmptySegment`` fails).
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk


def new_scene():
    """A bare MRML scene with application logic + Colors/Volumes/Segmentations/SubjectHierarchy logics.

    Also sets ``slicer.mrmlScene`` (``slicer.util`` helpers look there); the previous value is kept
    in ``scene._previous_mrml_scene`` so the caller can restore it.
    """
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logics = []
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)  # before the scene: the Colors logic looks for it then
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics.append(logic)
    scene._previous_mrml_scene = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    scene._keep_alive = (app, logics)  # the logics must live as long as the scene
    return scene


def add_volume(scene, volume, name="CT"):
    """An engine Volume as a scalar volume node; IJKToRAS built here by hand from the LPS geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, volume.array)
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.index_to_physical_matrix()
    m = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(m, ijk_to_ras)
    node.SetIJKToRASMatrix(m)
    node.CreateDefaultDisplayNodes()
    return node


@pytest.fixture
def scene():
    """A fresh real MRML scene per test; ``slicer.mrmlScene`` is restored and the scene cleared after.

    Test modules import this fixture (``from helpers.slicer_scene import scene``) so every Slicer test
    starts from the same wiring.
    """
    scene = new_scene()
    yield scene
    slicer.mrmlScene = scene._previous_mrml_scene
    scene.Clear(1)
