"""The module's application settings (they outlive scenes and restarts), and how weights are described.

The store is anything with ``value(key, default)`` and ``setValue(key, value)``: ``qt.QSettings()``
in Slicer (the widget passes it in, so this module needs no Qt), :class:`DictStore` in tests and
scripts. QSettings hands booleans back as strings ('true'/'false') from its INI file, so they are
parsed here rather than trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.errors import MnetImError
from ..engine.weights import DEFAULT_WEIGHTS_NAME, ModelCard, read_card

PREFIX = "MnetImSegment/"
WEIGHTS_KEY = PREFIX + "WeightsFolder"
IN_PROCESS_KEY = PREFIX + "InProcess"
SHOW_3D_KEY = PREFIX + "Show3D"

#: Segment tag saying whether the model that made a CTV may be used clinically.
DEMO_TAG = "MnetImSegment.ClinicalUse"
DEMO_TAG_VALUE = "not for clinical use (demo weights trained on synthetic phantoms)"


class DictStore:
    """A QSettings-like store in a dict (tests, scripts; and Slicer's absence)."""

    def __init__(self, values: Optional[dict] = None):
        self.values = dict(values or {})

    def value(self, key: str, default=None):
        return self.values.get(key, default)

    def setValue(self, key: str, value) -> None:
        self.values[key] = value


def _asBool(value, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class ModuleSettings:
    """Typed access to the module's settings in a QSettings-like ``store``."""

    def __init__(self, store):
        self.store = store

    @property
    def weightsFolder(self) -> str:
        """The weights folder last chosen ('' = the shipped demo weights)."""
        return str(self.store.value(WEIGHTS_KEY, "") or "")

    @weightsFolder.setter
    def weightsFolder(self, folder) -> None:
        self.store.setValue(WEIGHTS_KEY, "" if isDefaultWeights(folder) else str(Path(folder)))

    @property
    def inProcess(self) -> bool:
        """Run the network on a thread of Slicer's own process instead of a worker process."""
        return _asBool(self.store.value(IN_PROCESS_KEY, False), False)

    @inProcess.setter
    def inProcess(self, value: bool) -> None:
        self.store.setValue(IN_PROCESS_KEY, "true" if value else "false")

    @property
    def show3D(self) -> bool:
        return _asBool(self.store.value(SHOW_3D_KEY, True), True)

    @show3D.setter
    def show3D(self, value: bool) -> None:
        self.store.setValue(SHOW_3D_KEY, "true" if value else "false")


def isDefaultWeights(folder) -> bool:
    """``None``, '' and '.' mean the shipped demo weights."""
    return folder is None or str(folder).strip() in ("", ".")


def weightsForScene(parameterValue, settings: ModuleSettings) -> tuple:
    """The weights folder a (new) scene starts with, and a sentence if the remembered one is unusable.

    A folder the scene itself names wins; otherwise the folder remembered in the settings, if it
    still holds a valid model card; otherwise the demo weights (``None``), with a sentence saying
    why the remembered folder was not used.

    Returns:
        ``(folder or None, message or None)``.
    """
    if not isDefaultWeights(parameterValue):
        return Path(str(parameterValue)), None
    remembered = settings.weightsFolder
    if isDefaultWeights(remembered):
        return None, None
    try:
        read_card(remembered)
    except MnetImError as exc:
        return None, f"The weights folder chosen last time cannot be used ({exc}); the demo weights are selected."
    return Path(remembered), None


def isDemoCard(card: ModelCard) -> bool:
    """Whether a model card is the shipped demo's or says it is not for clinical use."""
    use = str(card.raw.get("intended_use", "")).upper()
    return card.raw.get("name") == DEFAULT_WEIGHTS_NAME or "NOT FOR CLINICAL USE" in use


METAL_REDUCTION_NAMES = {"linear": "LI-MAR", "normalised": "NMAR"}


def weightsDescription(card: ModelCard) -> str:
    """One line naming the model (name + version) for the GUI, with what its input adds to the paper's (a
    physicist must see that a model reduces metal artefacts, or that it runs several networks: an
    ensemble costs one network pass per member); the demo weights clearly marked."""
    members = card.member_thresholds
    kind = card.architecture if members is None else f"{len(members)} x {card.architecture} voting"
    text = f"{card.label} ({kind}), threshold {card.threshold:.2f}"
    spec = card.input_spec
    extras = ([f"{spec.applicator_prior} prior channel"] if spec.applicator_prior != "none" else []) + \
        ([f"{METAL_REDUCTION_NAMES[spec.metal_reduction]} metal-artefact reduction"] if spec.metal_reduction != "none" else [])
    if extras:
        text += ", input + " + " + ".join(extras)
    if card.config.get("prior_bias"):
        text += ", output = the prior corrected by the network (prior bias)"
    if isDemoCard(card):
        text += " - DEMO WEIGHTS, NOT FOR CLINICAL USE"
    return text


def demoTags(card: ModelCard) -> dict:
    """The segment tag marking a CTV made by demo weights ({} for other weights)."""
    return {DEMO_TAG: DEMO_TAG_VALUE} if isDemoCard(card) else {}
