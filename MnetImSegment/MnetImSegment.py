"""3D Slicer module: contour the cervical-cancer brachytherapy CTV on CT with Mnet_Im.

GUI only: the module description, the widget (which maps GUI <-> parameter node <-> logic and does
nothing else) and the self-test. Everything that touches voxels or geometry lives in
``MnetImSegmentLib.logic`` (the MRML bridge) and the engine below it.
"""

import enum
import importlib
import logging
import tempfile
import queue
import threading
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MnetImSegmentLib.mrml.dependencies import (currentVersions, installedVersion, planInstallation, slicerRTProblem,
                                                slicerVersionProblem, torchVersionRequirement)

# Checked first: on a Slicer older than 5.4 the imports below fail with a bare ImportError.
_SLICER_PROBLEM = slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)
if _SLICER_PROBLEM:
    raise ImportError(_SLICER_PROBLEM)

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MnetImSegmentLib import __version__ as MnetImSegmentLibVersion
from MnetImSegmentLib.core.errors import Cancelled, MnetImError
from MnetImSegmentLib.mrml.kept_probability import MAX_THRESHOLD, MIN_THRESHOLD
from MnetImSegmentLib.logic import MnetImSegmentLogic as MRMLBridgeLogic
from MnetImSegmentLib.mrml.settings import ModuleSettings, isDefaultWeights, weightsDescription, weightsForScene

#: The project's own documentation of the module (no public home yet: see README.md "Availability").
DOCUMENTATION = Path(__file__).resolve().parents[1] / "docs" / "slicer.md"

PAPER_CITATION = (
    "Huang M, Feng C, Sun D, Cui M, Zhao D. Segmentation of Clinical Target Volume From CT Images for "
    "Cervical Cancer Using Deep Learning. Technol Cancer Res Treat. 2023;22. doi:10.1177/15330338221139164"
)


#
# Module
#
class MnetImSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MnetImSegment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MnetImSegment maintainers (independent project)"]
        self.parent.helpText = _(
            "Contours the clinical target volume (CTV) of cervical-cancer brachytherapy on CT with the "
            "Mnet_Im network of Huang et al. 2023 ({citation}).<br><br>"
            "<b>Intended use:</b> research and the development of institution-specific models; the result "
            "is a draft that a qualified person must review and edit (Segment Editor) before any use.<br>"
            "<b>The shipped demo weights are trained on synthetic phantoms only and are NOT for clinical "
            "use.</b> For clinical work, train weights on your institution's own CT and structure sets with "
            "the <code>mnetim train</code> command and select that weights folder here.<br><br>"
            "Select the CT, click <i>Segment CTV</i>. Inference runs in the background (Cancel stops it and "
            "leaves the scene unchanged); the threshold slider re-thresholds the last result instantly. "
            "The segmentation is placed in the CT's study, ready for DICOM RTSTRUCT export. "
            "A CT that looks out of scope (e.g. no applicator) is refused with the reason; to segment it "
            "anyway, place a point at the cervix as <i>ROI centre</i> and run again."
        ).format(citation=PAPER_CITATION)
        self.parent.helpText += documentationLink()
        # The CTV's terminology list must be loaded before any segment refers to it (scene loading too).
        slicer.app.connect("startupCompleted()", loadTerminology)
        slicer.app.connect("startupCompleted()", registerSampleData)
        self.parent.acknowledgementText = _(
            "The Mnet_Im architecture is described in {citation}. This module is an independent "
            "implementation; it is not affiliated with the authors. Built on 3D Slicer, PyTorch, "
            "SimpleITK and safetensors."
        ).format(citation=PAPER_CITATION)


def documentationLink() -> str:
    """The help panel's link to the project's own module documentation (docs/slicer.md)."""
    if DOCUMENTATION.is_file():  # a source checkout: open the file itself
        return '<p>Documentation: <a href="{url}">docs/slicer.md</a>.</p>'.format(url=DOCUMENTATION.as_uri())
    return "<p>" + _("Documentation: docs/slicer.md in the MnetImSegment source (see its README, 'Availability').") + "</p>"


def loadTerminology() -> None:
    """Load the module's terminology context (the CTV code) into Slicer's Terminologies module."""
    path = Path(__file__).resolve().parent / "Resources" / "Terminology" / "MnetImSegment.term.json"
    terminologies = getattr(slicer.modules, "terminologies", None)
    if terminologies is None or not path.is_file():
        logging.warning("MnetImSegment: the CTV terminology could not be loaded (no Terminologies module or file).")
        return
    terminologies.logic().LoadTerminologyFromFile(str(path))


def registerSampleData() -> None:
    """Register a synthetic brachytherapy CT in the Sample Data module (generated once into Slicer's cache).

    There is no public brachytherapy CT to download, so the file is written from a phantom the first
    time Slicer starts with the module (about a second) and Sample Data loads it from a file:// URI.
    """
    try:
        import SampleData

        from MnetImSegmentLib.research.sample_data import SAMPLE_FILE, SAMPLE_NAME, write_sample_ct

        path = write_sample_ct(Path(slicer.app.cachePath) / "MnetImSegment")
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="MnetImSegment", sampleName=SAMPLE_NAME, uris=path.as_uri(), fileNames=SAMPLE_FILE,
            nodeNames="Brachytherapy phantom CT", loadFileType="VolumeFile",
            thumbnailFileName=str(Path(__file__).resolve().parent / "Resources" / "Icons" / "MnetImSegment.png"))
    except Exception as exc:  # sample data is a convenience: never stop the module from loading
        logging.warning(f"MnetImSegment: the phantom sample CT could not be registered ({exc}).")


def slicerRTAvailable() -> bool:
    """Whether SlicerRT's DICOM RT import/export (RTSTRUCT export of the CTV) is loaded."""
    return hasattr(slicer.modules, "dicomrtimportexport")


#
# Parameter node
#
class Device(enum.Enum):
    """Where the network runs."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {
            Device.AUTO: _("Auto (GPU if available)"),
            Device.CPU: _("CPU"),
            Device.GPU: _("GPU (CUDA)"),
        }[self]


@parameterNodeWrapper
class MnetImSegmentParameterNode:
    """The module's state, saved with the scene.

    inputVolume: The CT to segment.
    outputSegmentation: None (the default) creates a new segmentation at every run.
    weightsFolder: A folder with model.json + model.safetensors ('.' means the shipped demo weights).
    device: Where the network runs.
    threshold: Probability threshold for the next run and for live re-thresholding of the last result.
    largestComponent: Keep only the largest connected component of the CTV.
    keepProbability: Also add the probability map to the scene as a volume.
    priorVolume, priorSegmentation: Optional previous fraction (CT + approved CTV): carried onto the
        input, fused with the network and shown as segment "CTV (previous fraction)".
    roiCenterNode: Optional point list whose first point (at the cervix) centres the region of
        interest; it also segments a CT refused as out of scope (the reasons become warnings).
    resultSegmentation: The last result; the threshold slider re-thresholds it.
    thresholdWeightsFolder: The weights whose card threshold last initialised ``threshold`` (so a
        user's threshold survives a scene reload, and a new model starts from its own).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    weightsFolder: Path
    device: Device = Device.AUTO
    threshold: Annotated[float, WithinRange(MIN_THRESHOLD, MAX_THRESHOLD)] = 0.5
    largestComponent: bool = True
    keepProbability: bool = False
    priorVolume: vtkMRMLScalarVolumeNode
    priorSegmentation: vtkMRMLSegmentationNode
    roiCenterNode: vtkMRMLMarkupsFiducialNode
    resultSegmentation: vtkMRMLSegmentationNode
    thresholdWeightsFolder: str = ""


_isDefaultWeights = isDefaultWeights


#
# Dependencies
#
def ensureDependencies(logic: MRMLBridgeLogic, log=logging.info) -> None:
    """Install what the network needs, with one confirmation, on first use (never at import).

    The decisions (what is missing or too old, the pip arguments that pin Slicer's own SimpleITK,
    numpy and vtk) are :func:`MnetImSegmentLib.mrml.dependencies.planInstallation`'s; this function
    only asks, installs with a progress dialog and logs. PyTorch comes from the PyTorch extension
    when it is installed (a build that suits the GPU driver), otherwise from pip.

    Raises:
        MnetImError: The user declined, the installation failed, or a Slicer-owned package is missing.
    """
    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None
    plan = planInstallation(currentVersions(), PyTorchUtils is not None)
    if plan.blockedMessage():
        raise MnetImError(plan.blockedMessage())
    if not plan.needed:
        return
    if not slicer.util.confirmOkCancelDisplay(plan.confirmationText(), windowTitle=_("Install Python packages")):
        raise MnetImError(_("MnetImSegment needs these packages to run the network; installation was declined."))
    progress = slicer.util.createProgressDialog(labelText=_("Installing Python packages (see the module's log)..."),
                                                maximum=0, windowTitle=_("MnetImSegment"))
    try:
        if plan.torchNeeded and plan.torchThroughPyTorchUtils:
            log("Installing PyTorch " + torchVersionRequirement() + " through the PyTorch extension")
            slicer.app.processEvents()
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                  torchVersionRequirement=torchVersionRequirement())
            if torch is None:
                raise MnetImError(_("PyTorch could not be installed through the PyTorch extension; install it from "
                                    "the PyTorch Utils module, then try again."))
        with tempfile.TemporaryDirectory(prefix="mnetim-pip-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(plan.constraintsText())
            arguments = plan.pipArguments(str(constraints))
            if arguments:
                log("pip " + " ".join(arguments))
                slicer.app.processEvents()
                try:
                    slicer.util.pip_install(arguments[1:])  # pip_install adds 'install' itself
                except Exception as exc:
                    raise MnetImError(_("Installing with pip failed: {error}").format(error=exc)) from exc
    finally:
        progress.close()
    importlib.invalidate_caches()
    after = planInstallation(currentVersions(), PyTorchUtils is not None)
    if after.needed:  # the version check, after installing
        raise MnetImError(_("After installing, these packages are still missing or too old: {names}. Restart "
                            "Slicer and try again.").format(names=", ".join(r.specifier for r in after.toInstall)))
    log("Python packages ready: " + ", ".join(f"{r.pip} {installedVersion(r.pip)}" for r in plan.toInstall))
    logic.checkDependencies()


#
# Background run
#
class _Job:
    """What both kinds of run share: their inputs, the cancel flag and the carried-over prior CTV."""

    def __init__(self, logic, inputVolume, outputSegmentation, keepProbability, engineArguments):
        self.logic = logic
        self.inputVolume = inputVolume
        self.outputSegmentation = outputSegmentation
        self.keepProbability = keepProbability
        self.engineArguments = engineArguments
        self.cancelEvent = threading.Event()
        self.propagation = None  # the previous fraction's carried-over CTV (set on the main thread), or None

    def cancel(self) -> None:
        self.cancelEvent.set()


class SegmentationJob(_Job):
    """One network run on a worker thread of Slicer's own process (the in-process setting).

    The main thread calls :meth:`drain` from a timer; MRML is never touched on the thread.
    """

    def __init__(self, logic, inputVolume, outputSegmentation, keepProbability, engineArguments):
        super().__init__(logic, inputVolume, outputSegmentation, keepProbability, engineArguments)
        self.prepared = logic.prepareInput(inputVolume)
        self.messages = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="MnetImSegment inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def drain(self) -> list:
        """``("progress", fraction, text)``, ``("log", text)``, and last ``("finished", outcome)``."""
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def finish(self, outcome):
        """Create the output on the main thread; return ``(segmentation node, EngineRun)``."""
        if self.cancelEvent.is_set() or isinstance(outcome, Cancelled):
            raise Cancelled(_("Cancelled; the scene was not changed."))
        if isinstance(outcome, BaseException):
            raise outcome
        segmentation = self.logic.createOutput(self.inputVolume, outcome, self.outputSegmentation,
                                               keepProbability=self.keepProbability, propagation=self.propagation)
        return segmentation, self.logic.lastRun if self.propagation is not None else outcome

    def _run(self) -> None:
        try:
            run = self.logic.runEngine(self.prepared, progressCallback=self._progress, cancel=self.cancelEvent,
                                       **self.engineArguments)
            self.messages.put(("finished", run))
        except BaseException as exc:  # handed to the main thread, which reports it
            self.messages.put(("finished", exc))

    def _progress(self, fraction: float, text: str) -> None:
        self.messages.put(("progress", float(fraction), str(text)))


class ProcessJob(_Job):
    """One network run in a worker process (the default): a crash there cannot end Slicer."""

    def __init__(self, logic, inputVolume, outputSegmentation, keepProbability, engineArguments):
        super().__init__(logic, inputVolume, outputSegmentation, keepProbability, engineArguments)
        self.run = None

    def start(self) -> None:
        self.run = self.logic.startProcess(self.inputVolume, **self.engineArguments)

    def cancel(self) -> None:
        super().cancel()
        if self.run is not None:
            self.run.cancel()

    def drain(self) -> list:
        out = []
        for event in self.logic.pollProcess(self.run):
            if event.get("event") == "progress":
                out.append(("progress", float(event.get("fraction", 0.0)), str(event.get("message", ""))))
            elif event.get("event") in ("log", "error"):
                out.append(("log", str(event.get("message", ""))))
            elif event.get("event") == "done":
                versions = f"torch {event.get('torch', '?')}, CUDA {event.get('cuda') or 'none'}"
                out.append(("versions", versions))
        if self.run.worker.finished:
            out.append(("finished", None))
        return out

    def finish(self, outcome):
        segmentation = self.logic.finishProcess(self.inputVolume, self.run, self.outputSegmentation,
                                                keepProbability=self.keepProbability, propagation=self.propagation)
        return segmentation, self.logic.lastRun


#
# Widget
#
class MnetImSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Maps GUI <-> parameter node <-> logic; holds no segmentation code of its own."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # a ProcessJob (default) or SegmentationJob (in-process setting)
        self._weightsShown = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MnetImSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MnetImSegmentLogic()
        self.settings = ModuleSettings(qt.QSettings())

        # The worker thread cannot touch Qt; a timer on the main thread drains its messages.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.timeout.connect(self._pollJob)
        # Dragging the slider emits many values; re-threshold once it settles.
        self._rethresholdTimer = qt.QTimer()
        self._rethresholdTimer.setSingleShot(True)
        self._rethresholdTimer.setInterval(150)
        self._rethresholdTimer.timeout.connect(self._applyRethreshold)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.defaultWeightsButton.connect("clicked(bool)", self.onDefaultWeightsButton)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.progressBar.hide()
        self.ui.lowConfidenceList.hide()
        self.ui.lowConfidenceList.connect("itemClicked(QListWidgetItem*)", self.onLowConfidenceSlice)
        self.ui.show3DCheckBox.checked = self.settings.show3D
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.inProcessCheckBox.checked = self.settings.inProcess
        self.ui.inProcessCheckBox.connect("toggled(bool)", self.onInProcessToggled)
        self._setupRoiCenterPlacement()
        torchVersion = installedVersion("torch")
        self.ui.versionsLabel.text = _("MnetImSegment {version}; PyTorch {torch} (CUDA is reported after the first "
                                       "run); Slicer {slicer}").format(
            version=MnetImSegmentLibVersion, torch=torchVersion or _("not installed"),
            slicer=slicer.app.applicationVersion)

        self.initializeParameterNode()
        rtProblem = slicerRTProblem(slicerRTAvailable())
        if rtProblem:
            logging.warning(rtProblem)
            self.ui.statusLabel.text = rtProblem

    def _setupRoiCenterPlacement(self) -> None:
        """A place button (and delete) beside the ROI centre selector; it places into the selected list."""
        self.roiCenterPlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        self.roiCenterPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.roiCenterPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.roiCenterPlaceWidget.buttonsVisible = False
        self.roiCenterPlaceWidget.placeButton().show()
        self.roiCenterPlaceWidget.deleteButton().show()
        self.ui.roiCenterWidget.layout().addWidget(self.roiCenterPlaceWidget)
        self.ui.roiCenterSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.roiCenterPlaceWidget.setCurrentNode)
        self.ui.roiCenterSelector.connect("nodeAddedByUser(vtkMRMLNode*)", self.onRoiCenterAdded)

    def onRoiCenterAdded(self, node) -> None:
        """A point list just created from the selector: start placing its point at once."""
        self.roiCenterPlaceWidget.setCurrentNode(node)
        self.roiCenterPlaceWidget.setPlaceModeEnabled(True)

    def cleanup(self) -> None:
        self._cancelJob()
        if isinstance(self._job, ProcessJob) and self._job.run is not None:
            self._job.run.cleanup()  # the worker's temporary files
        self._pollTimer.stop()
        self._rethresholdTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            # Labelmaps and vector volumes are scalar-volume subclasses too; only a plain one can be a CT.
            plain = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                     if node.GetClassName() == "vtkMRMLScalarVolumeNode"]
            if plain:
                p.inputVolume = plain[0]
        if _isDefaultWeights(p.weightsFolder):
            # A new scene (or a restart) starts from the weights chosen last time, not silently the demo.
            folder, problem = weightsForScene(p.weightsFolder, self.settings)
            if problem:
                self.log(problem)
            try:
                p.weightsFolder = folder if folder is not None else self.logic.resolveWeights(None)
            except MnetImError as exc:
                self.ui.modelInfoLabel.text = str(exc)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        running = self._job is not None
        p = self._parameterNode
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation; the scene stays as it was.")
            self.ui.applyButton.enabled = not self._job.cancelEvent.is_set()
        else:
            self.ui.applyButton.text = _("Segment CTV")
            ready = bool(p and p.inputVolume)
            self.ui.applyButton.toolTip = _("Contour the CTV of the selected CT.") if ready else _("Select the input CT first.")
            self.ui.applyButton.enabled = ready
        for widget in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector, self.ui.weightsPathLineEdit,
                       self.ui.defaultWeightsButton, self.ui.deviceComboBox, self.ui.largestComponentCheckBox,
                       self.ui.keepProbabilityCheckBox, self.ui.priorVolumeSelector, self.ui.priorSegmentationSelector,
                       self.ui.roiCenterWidget):
            widget.enabled = not running
        if p is not None and str(p.weightsFolder) != self._weightsShown:
            self._weightsChanged()

    def _weightsChanged(self) -> None:
        """Describe the selected weights under the selector; a new model starts from its own threshold."""
        p = self._parameterNode
        folder = str(p.weightsFolder)
        self._weightsShown = folder
        try:
            card = self.logic.modelCard(None if _isDefaultWeights(folder) else folder)
        except MnetImError as exc:
            self.ui.modelInfoLabel.text = str(exc)
            return
        self.ui.modelInfoLabel.text = _("{description}. Intended use: {use}").format(
            description=weightsDescription(card), use=card.raw.get("intended_use", "?"))
        self.settings.weightsFolder = folder  # remembered across scenes and restarts
        if p.thresholdWeightsFolder != folder and self._job is None:
            # Another model's probabilities mean something else: the slider stops steering the
            # previous result, and starts at the threshold this model was validated with.
            with slicer.util.NodeModify(p):
                p.thresholdWeightsFolder = folder
                p.resultSegmentation = None
                p.threshold = min(max(card.threshold, MIN_THRESHOLD), MAX_THRESHOLD)

    # ------------------------------------------------------------------ GUI events
    def onDefaultWeightsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The shipped demo weights are not available."), waitCursor=True):
            self._parameterNode.weightsFolder = self.logic.resolveWeights(None)

    def onShow3DToggled(self, checked) -> None:
        self.settings.show3D = bool(checked)
        node = self._parameterNode.resultSegmentation if self._parameterNode else None
        if node is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility3D(bool(checked))

    def onInProcessToggled(self, checked) -> None:
        self.settings.inProcess = bool(checked)

    def log(self, text: str) -> None:
        """A line in the module's log pane (and Slicer's log)."""
        logging.info(f"MnetImSegment: {text}")
        self.ui.logTextEdit.appendPlainText(text)

    def onThresholdChanged(self, value) -> None:
        p = self._parameterNode
        if p is None or self._job is not None or not p.resultSegmentation:
            return
        self._rethresholdTimer.start()

    def _applyRethreshold(self) -> None:
        p = self._parameterNode
        node = p.resultSegmentation if p else None
        if node is None or not self.logic.hasProbability(node):
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Re-thresholding failed."), waitCursor=True):
                voxels = self.logic.rethreshold(node, p.threshold)
                self.ui.statusLabel.text = _("Threshold {threshold:.2f}: {voxels} CTV voxels in '{name}'.").format(
                    threshold=p.threshold, voxels=voxels, name=node.GetName())
        except MnetImError:
            # Shown once; the slider no longer steers this node (e.g. the user edited the CTV).
            p.resultSegmentation = None

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._cancelJob()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Segment CTV could not start."), waitCursor=True):
            ensureDependencies(self.logic, log=self.log)
            weights = self.logic.resolveWeights(None if _isDefaultWeights(p.weightsFolder) else p.weightsFolder)
            # Read once, now: the point as placed when the user clicked is the one both paths use.
            roiCenter = self.logic.resolveRoiCenter(roiCenterNode=p.roiCenterNode, inputVolume=p.inputVolume)
            arguments = dict(weights=weights, device=p.device.value, threshold=p.threshold,
                             largestComponent=p.largestComponent, roiCenter=roiCenter)
            if self.settings.inProcess:
                self.logic.resolveDevice(p.device.value)  # a GPU request without a GPU fails here, before any work
                jobClass = SegmentationJob
            else:  # the worker process checks the device and reports a missing GPU in one sentence
                jobClass = ProcessJob
            self._job = jobClass(self.logic, p.inputVolume, p.outputSegmentation, p.keepProbability, arguments)
            # The previous fraction is registered here on the main thread (it reads MRML nodes): a bad
            # prior refuses before the network starts.
            self._job.propagation = self.logic.propagatePrior(self.logic.prepareInput(p.inputVolume), p.priorVolume,
                                                              p.priorSegmentation)
            self._job.start()
            self.log(_("Segmenting '{name}' with {weights} on {device} ({where}).").format(
                name=p.inputVolume.GetName(), weights=weights, device=p.device.value,
                where=_("in Slicer's process") if self.settings.inProcess else _("worker process")))
            if roiCenter is not None:
                self.log(_("ROI centre: the first point of '{name}' (LPS {x:.1f}, {y:.1f}, {z:.1f} mm, the CT's "
                           "frame).").format(name=p.roiCenterNode.GetName(), x=roiCenter[0], y=roiCenter[1],
                                             z=roiCenter[2]))
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
            self._pollTimer.start()
            self._updateGui()

    def _cancelJob(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self._updateGui()

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        outcome = None
        finished = False
        for message in job.drain():
            if message[0] == "progress":
                self.ui.progressBar.value = int(round(100 * message[1]))
                if not job.cancelEvent.is_set():
                    self.ui.statusLabel.text = message[2]
            elif message[0] == "log":
                self.log(message[1])
            elif message[0] == "versions":
                self.ui.versionsLabel.text = self.ui.versionsLabel.text.split(";")[0] + "; " + message[1]
            elif message[0] == "finished":
                finished, outcome = True, message[1]
        if not finished:
            return
        self._pollTimer.stop()
        self._job = None
        self.ui.progressBar.hide()
        self._updateGui()
        try:
            segmentation, run = job.finish(outcome)
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
            self.log(self.ui.statusLabel.text)
        except MnetImError as exc:
            self.ui.statusLabel.text = _("Segmentation failed; the scene was not changed.")
            self.log(str(exc))
            slicer.util.errorDisplay(str(exc), windowTitle=_("MnetImSegment"))
        except Exception as exc:  # a bug: shown with its details
            self.ui.statusLabel.text = _("Segmentation failed; the scene was not changed.")
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed; the scene was not changed.")):
                raise exc
        else:
            self._showResult(job, segmentation, run)

    def _showResult(self, job, segmentation, run) -> None:
        """Describe the new result (which model made it, demo weights marked) and show it."""
        self._parameterNode.resultSegmentation = segmentation
        text = _("CTV {volume:.1f} ml in '{name}': {seconds:.1f} s on {device} ({model}).").format(
            volume=run.result.volume_ml, name=segmentation.GetName(), seconds=run.seconds,
            device=run.device.upper(), model=weightsDescription(run.card))
        for warning in run.warnings:
            text += "\n" + warning
        self.ui.statusLabel.text = text
        self.log(text)
        self._showQuality(run)
        if segmentation.GetDisplayNode() is not None:
            segmentation.GetDisplayNode().SetVisibility3D(self.settings.show3D)
        slicer.util.setSliceViewerLayers(background=job.inputVolume)

    def _showQuality(self, run) -> None:
        """Green / amber / red with the reasons, and the low-confidence slices (one click jumps to each)."""
        quality, self._qualityRun = run.result.quality, run
        status = quality.get("status", "green")
        colour = {"green": "#2e7d32", "amber": "#b26a00", "red": "#c62828"}.get(status, "#000000")
        self.ui.qualityLabel.text = status.upper() + ": " + ("; ".join(run.result.warnings) or _("no quality warning"))
        self.ui.qualityLabel.setStyleSheet(f"color: {colour}; font-weight: bold")
        self.ui.lowConfidenceList.clear()
        for index in quality.get("low_confidence_slices", []):
            self.ui.lowConfidenceList.addItem(str(index))
        self.ui.lowConfidenceList.setVisible(self.ui.lowConfidenceList.count > 0)

    def onLowConfidenceSlice(self, item) -> None:
        """Centre the slice views on that CT slice, at the ROI's in-plane centre."""
        result = self._qualityRun.result
        geometry = result.mask.geometry
        ijk = geometry.physical_to_index(np.asarray(result.roi.center, float))
        ijk[result.roi.slice_axis] = int(item.text())
        l, p, s = geometry.index_to_physical(ijk)
        slicer.modules.markups.logic().JumpSlicesToLocation(-l, -p, s, True)


#
# Logic
#
class MnetImSegmentLogic(ScriptedLoadableModuleLogic, MRMLBridgeLogic):
    """Slicer's module logic: the MRML bridge of ``MnetImSegmentLib.logic`` plus the parameter node.

    ``slicer.util.getModuleLogic("MnetImSegment").process(volumeNode)`` segments from the console.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        MRMLBridgeLogic.__init__(self)

    def getParameterNode(self):
        return MnetImSegmentParameterNode(super().getParameterNode())


#
# Self-test
#
class MnetImSegmentTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode -> Reload and Test, or ctest): seconds on a CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomCTV()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()
        self.setUp()
        self.test_OutOfScopeRefusedThenWarned()

    def _requireDependencies(self, logic):
        if not logic.missingDependencies():
            return
        if slicer.app.testingEnabled():  # unattended: no installation dialogs
            self.skipTest(f"missing Python packages: {', '.join(logic.missingDependencies())}")
        ensureDependencies(logic)

    def _phantomVolume(self, seed=41):
        from MnetImSegmentLib.mrml.geometry import ijkToRASFromGeometry
        from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix

        # A small, slightly oblique grid: fast, and a misregistered contour would show up in the Dice.
        # The demo model scores 0.92 on this phantom (held-out mean 0.91, worst 0.76), so a result
        # below 0.8 points at the pipeline, not the model.
        phantom = make_phantom(seed=seed, matrix=160, slice_mm=2.5, z_extent_mm=90, direction=rotation_matrix(0, 0, 12))
        volume = slicer.util.addVolumeFromArray(phantom.ct.array, ijkToRASFromGeometry(phantom.ct.geometry),
                                                name="MnetImSegment phantom CT")
        return phantom, volume

    def test_PhantomCTV(self):
        self.delayDisplay("Segmenting a synthetic brachytherapy CT")
        logic = MnetImSegmentLogic()
        self._requireDependencies(logic)
        phantom, volume = self._phantomVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        matrixBefore = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrixBefore)

        segmentation = logic.process(volume, device="cpu")
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("CTV")
        self.assertTrue(segmentId)
        self.assertIs(segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()), volume)
        # The CTV labelmap lies on the CT's own voxel grid: same IJK-to-RAS, nothing resampled.
        labelmap = segmentation.GetSegmentation().GetSegment(segmentId).GetRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
        labelmapToRAS = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(labelmapToRAS)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(labelmapToRAS),
                                   slicer.util.arrayFromVTKMatrix(matrixBefore), atol=1e-6)
        predicted = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume) > 0
        truth = phantom.mask("CTV").array > 0
        dice = 2.0 * np.logical_and(predicted, truth).sum() / (predicted.sum() + truth.sum())
        self.delayDisplay(f"Dice against the phantom truth: {dice:.3f}")
        self.assertGreaterEqual(dice, 0.8)

        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        matrixAfter = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrixAfter)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrixAfter),
                                   slicer.util.arrayFromVTKMatrix(matrixBefore))

        low = logic.rethreshold(segmentation, 0.2)
        high = logic.rethreshold(segmentation, 0.8)
        self.assertGreaterEqual(low, high)
        self.assertGreater(low, 0)
        self.delayDisplay("Test passed")

    def test_OutOfScopeRefusedThenWarned(self):
        """A pelvis without applicator is refused; given a placed point it is segmented with a red, tagged warning."""
        from MnetImSegmentLib.engine.quality import OutOfScopeError
        from MnetImSegmentLib.mrml.geometry import ijkToRASFromGeometry
        from MnetImSegmentLib.research.phantom import make_phantom

        logic = MnetImSegmentLogic()
        self._requireDependencies(logic)
        phantom = make_phantom(seed=43, matrix=160, slice_mm=2.5, z_extent_mm=90, applicator=None)
        volume = slicer.util.addVolumeFromArray(phantom.ct.array, ijkToRASFromGeometry(phantom.ct.geometry),
                                                name="phantom without applicator")
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(OutOfScopeError) as refusal:
            logic.process(volume, device="cpu")
        self.assertIn("ROI centre", str(refusal.exception))  # the Slicer way to override, not --roi-center
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        # What a user does: a point placed at the cervix (Slicer's RAS) as "ROI centre".
        l, p, s = phantom.params["cervix_os_lps"]
        point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ROI centre")
        point.AddControlPoint([-l, -p, s])
        segmentation = logic.process(volume, device="cpu", roiCenterNode=point)
        segment = segmentation.GetSegmentation().GetSegment(
            segmentation.GetSegmentation().GetSegmentIdBySegmentName("CTV"))
        value = vtk.mutable("")
        self.assertTrue(segment.GetTag("MnetImSegment.QualityStatus", value))
        self.assertEqual(str(value), "red")
        self.assertTrue(any("out of scope" in w for w in logic.lastWarnings))
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancelling a run")
        logic = MnetImSegmentLogic()
        self._requireDependencies(logic)
        _, volume = self._phantomVolume(seed=12)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Cancelled):
            logic.process(volume, device="cpu", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Test passed")
