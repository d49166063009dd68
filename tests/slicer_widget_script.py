"""Runs INSIDE 3D Slicer (tests/test_slicer_widget.py starts it): the module's widget, end to end.

Exit status: 0 passed, 1 failed (traceback on stderr), 77 cannot run here (reason on stdout).
"""

import sys
import time
import traceback


def wait_until(condition, timeout, what):
    import slicer

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        slicer.app.processEvents()
        time.sleep(0.02)


def main():
    import slicer

    from MnetImSegmentLib.mrml.dependencies import currentVersions, planInstallation

    if planInstallation(currentVersions(), hasPyTorchUtils=False).needed:
        print("SKIP: Slicer's Python lacks torch/safetensors (install them from the module first)")
        return 77
    slicer.util.selectModule("MnetImSegment")
    widget = slicer.modules.mnetimsegment.widgetRepresentation().self()
    import SampleData

    volume = SampleData.SampleDataLogic().downloadSample("MnetImSegmentPhantomCT")
    assert volume is not None, "the registered sample CT did not load"
    widget.ui.inProcessCheckBox.checked = False
    assert widget.settings.inProcess is False
    widget._parameterNode.inputVolume = volume
    segmentations = lambda: slicer.util.getNodesByClass("vtkMRMLSegmentationNode")

    # 1. Cancel a run in the worker process: the scene stays as it was.
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    widget.onApplyButton()
    assert widget._job is not None and widget.ui.applyButton.text == "Cancel"
    slicer.app.processEvents()
    widget.onApplyButton()  # Cancel at once: the worker is still starting, so it cannot have finished
    wait_until(lambda: widget._job is None, 60, "the cancelled run to end")
    assert "Cancelled" in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes and not segmentations()

    # 2. Complete a run: one segmentation with a CTV segment, described in the status and the log.
    widget.onApplyButton()
    wait_until(lambda: widget._job is None, 600, "the run to finish")
    (seg,) = segmentations()
    assert seg.GetSegmentation().GetSegmentIdBySegmentName("CTV")
    assert "NOT FOR CLINICAL USE" in widget.ui.statusLabel.text, widget.ui.statusLabel.text
    assert "torch" in widget.ui.versionsLabel.text and widget.ui.logTextEdit.toPlainText()

    # 3. The weights choice survives a new scene (through the application settings).
    remembered = widget.settings.weightsFolder
    slicer.mrmlScene.Clear()
    widget.initializeParameterNode()
    assert widget.settings.weightsFolder == remembered
    print("PASSED")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    import slicer

    slicer.util.exit(code)
