"""Weights folders: ``model.safetensors`` + ``model.json`` (the model card).

Loading never unpickles (safetensors holds raw tensors only, so a weights file cannot run code) and
validates everything before a single tensor reaches the network: the card's schema and version, the
architecture and its configuration, the SHA-256 of the tensor file, and every tensor's name and
shape against the model the card describes.

An ensemble card (``"ensemble": {"member_thresholds": [...], "members": [...]}``) describes several
networks of the card's one architecture and configuration: member i's tensors are the file
``member<i>.safetensors`` beside the card (its trained ``model.safetensors``, byte for byte, checked
against ``ensemble.members[i].tensors_sha256``), ``model.safetensors`` holds the input tensors only, and
the model is a :class:`~MnetImSegmentLib.models.ensemble.OutputEnsemble`.

Input-side tensors that are not network parameters (the CTV atlas of weights trained with
``--applicator-prior atlas``) live in the same file under the ``input_prior.`` prefix, so the card's
single SHA-256 covers them too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.commit import check_tree_sha256, os_error_reason, output_error
from ..core.errors import WeightsError
from ..core.files import transaction
from ..core.validate import MAX_CARD_BYTES, check_finite_tensors, load_card_json, validate_card
from .applicator_prior import CtvAtlas
from .quality import QualitySpec
from .roi import RoiSpec
from .windows import InputSpec

CARD_FORMAT = 1
TENSORS = "model.safetensors"
CARD = "model.json"
INPUT_TENSOR_PREFIX = "input_prior."
REQUIRED = ("format_version", "name", "version", "architecture", "config", "input", "threshold",
            "intended_use", "tensors_sha256")

# Shipped with the project (see model_weights/README): a source checkout keeps them beside the
# module folder, an installed Slicer extension inside the module's Resources.
_HERE = Path(__file__).resolve().parent.parent  # the MnetImSegmentLib folder
DEFAULT_WEIGHTS_NAME = "Mnet_Im_phantom_demo"
_SEARCH = (_HERE.parent.parent / "model_weights", _HERE.parent / "Resources" / "model_weights")


def default_weights_dir() -> Path:
    """The shipped demo weights (synthetic training data: not for clinical use)."""
    for root in _SEARCH:
        if (root / DEFAULT_WEIGHTS_NAME / CARD).is_file():
            return root / DEFAULT_WEIGHTS_NAME
    raise WeightsError(
        f"The shipped weights '{DEFAULT_WEIGHTS_NAME}' were not found (looked in "
        + ", ".join(str(p) for p in _SEARCH) + "); pass a weights folder explicitly."
    )


def resolve_weights_dir(weights=None) -> Path:
    """The weights folder to use: ``None``, '' or '.' mean the shipped demo weights; ``~`` is expanded."""
    if weights is None or str(weights).strip() in ("", "."):
        return default_weights_dir()
    return Path(weights).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelCard:
    """The parsed ``model.json``; ``raw`` keeps every field (training summary, metrics...)."""

    raw: dict
    atlas: Optional[CtvAtlas] = field(default=None, compare=False)  # set by load_weights for "atlas" weights

    @property
    def architecture(self) -> str:
        return self.raw["architecture"]

    @property
    def config(self) -> dict:
        return self.raw["config"]

    @property
    def threshold(self) -> float:
        return float(self.raw["threshold"])

    @property
    def member_thresholds(self) -> Optional[list]:
        """Each member's own threshold for an ensemble card (``"ensemble"``), else None."""
        ensemble = self.raw.get("ensemble")
        return None if ensemble is None else [float(t) for t in ensemble["member_thresholds"]]

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.raw["input"])

    @property
    def roi_spec(self) -> RoiSpec:
        return RoiSpec.from_dict(self.raw["input"].get("roi", {}))

    @property
    def largest_component(self) -> bool:
        return bool(self.raw.get("postprocessing", {}).get("largest_component", True))

    @property
    def quality_spec(self):
        """Quality thresholds: the engine's defaults, overridden by the optional ``"quality"`` object."""
        return QualitySpec.from_card(self.raw.get("quality"))

    @property
    def label(self) -> str:
        return f"{self.raw['name']} {self.raw['version']}"


def read_card(folder) -> ModelCard:
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"Weights folder '{folder}' does not exist.")
    path = folder / CARD
    if not path.is_file():
        raise WeightsError(f"Weights folder '{folder}' has no model card ({CARD}).")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)  # bounded: a huge or endless "card" is refused, not read
    except OSError as exc:
        raise WeightsError(f"Cannot read the model card '{path}': {os_error_reason(exc)}.") from None
    raw = load_card_json(data, str(path))
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise WeightsError(f"The model card '{path}' lacks the field(s): {', '.join(missing)}.")
    if raw["format_version"] != CARD_FORMAT:
        raise WeightsError(f"The model card '{path}' has format_version {raw['format_version']}; "
                           f"this version of MnetImSegment reads {CARD_FORMAT}.")
    # Every field's type and range (schema as data in core.validate): a NaN threshold, an inverted
    # HU window or a name holding a newline is refused here, not turned into an empty CTV later.
    validate_card(raw, str(path))
    try:
        InputSpec.from_dict(raw["input"])
        RoiSpec.from_dict(raw["input"].get("roi", {}))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise WeightsError(f"The model card '{path}' has an invalid input spec ({exc}).") from None
    return ModelCard(raw)


def load_weights(folder, device: str = "cpu"):
    """Validate a weights folder and return ``(model in eval mode, ModelCard)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..models import build_model  # torch: imported only when weights are loaded

    folder = Path(folder)
    card = read_card(folder)
    tensors_path = folder / TENSORS
    if not tensors_path.is_file():
        raise WeightsError(f"Weights folder '{folder}' has no {TENSORS}.")
    if sha256_file(tensors_path) != card.raw["tensors_sha256"]:
        raise WeightsError(f"'{tensors_path}' does not match the SHA-256 in its model card: "
                           "the file was changed or belongs to another card.")
    if card.config.get("prior_bias") and card.input_spec.applicator_prior == "none":
        raise WeightsError(f"The model card in '{folder}' adds a prior's logit to the output (prior_bias) but its "
                           "input has no prior channel.")
    try:
        model = build_model(card.architecture, **card.config)
        if card.member_thresholds is not None:  # several networks of this configuration, one vote each
            from ..models.ensemble import OutputEnsemble

            model = OutputEnsemble([model] + [build_model(card.architecture, **card.config)
                                              for _ in card.member_thresholds[1:]], card.member_thresholds)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"The model card in '{folder}' describes no buildable model ({exc}).") from None

    def read(path: Path) -> dict:
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"'{path}' is not a readable safetensors file ({exc}).") from None

    state = read(tensors_path)
    inputs = {k: state.pop(k) for k in [k for k in state if k.startswith(INPUT_TENSOR_PREFIX)]}
    card.atlas = _atlas(card, inputs, tensors_path)
    for i, path in enumerate(_member_files(folder, card)):
        member = read(path)
        # A member file is its training's own model.safetensors, byte for byte: its input tensors (its own
        # atlas) are not used; the ensemble's input is the card's.
        state.update({f"members.{i}.{k}": v for k, v in member.items() if not k.startswith(INPUT_TENSOR_PREFIX)})
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"The tensors in '{tensors_path}' do not match the card's {card.architecture}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise WeightsError(f"The tensors in '{tensors_path}' do not match the card's {card.architecture}: "
                           f"'{k}' is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}.")
    # A matching checksum proves the file is the card's, not that training produced numbers.
    check_finite_tensors(state, str(tensors_path))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device), card


MEMBER_FILE = "member{}.safetensors"  # an ensemble member's tensors, beside the card (models/ensemble.py)


def _member_files(folder: Path, card: ModelCard) -> list:
    """The member tensor files of an ensemble card, each checked against its recorded SHA-256; [] otherwise."""
    if card.member_thresholds is None:
        return []
    members = card.raw["ensemble"].get("members")
    if not isinstance(members, list) or len(members) != len(card.member_thresholds):
        raise WeightsError(f"The model card in '{folder}' lists {len(card.member_thresholds)} member thresholds but "
                           f"not one entry under ensemble.members for each.")
    paths = []
    for i, entry in enumerate(members):
        path = folder / MEMBER_FILE.format(i)
        if not path.is_file():
            raise WeightsError(f"Weights folder '{folder}' has no {path.name} (ensemble member {i + 1}).")
        if sha256_file(path) != entry.get("tensors_sha256"):
            raise WeightsError(f"'{path}' does not match the SHA-256 its model card records for member {i + 1}: "
                               "the file was changed or belongs to another card.")
        paths.append(path)
    return paths


def _atlas(card: ModelCard, inputs: dict, tensors_path: Path) -> Optional[CtvAtlas]:
    """The CTV atlas of ``"atlas"`` weights, checked against the card; None for other weights."""
    prior = card.input_spec.applicator_prior
    if prior != "atlas":
        if inputs:
            raise WeightsError(f"'{tensors_path}' holds input tensors ({', '.join(sorted(inputs))}) that its card's "
                               f"'{prior}' input does not use.")
        return None
    entry, tensor = card.raw["input"].get("ctv_atlas"), inputs.get(CtvAtlas.TENSOR)
    if not isinstance(entry, dict) or tensor is None:
        raise WeightsError(f"The weights in '{tensors_path.parent}' use the 'atlas' input prior but lack its CTV atlas "
                           f"(card field input.ctv_atlas and tensor '{CtvAtlas.TENSOR}').")
    try:
        return CtvAtlas.from_card(entry, tensor.numpy())
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"The CTV atlas in '{tensors_path.parent}' is unusable ({exc}).") from None


def save_weights(model, folder, card: dict, atlas: Optional[CtvAtlas] = None, member_files=()) -> Path:
    """Write tensors and card through the commit path: a temporary folder, read back (the tensors'
    SHA-256 and the card's bytes), then created at ``folder``; nothing is left on failure.

    ``atlas``: the CTV atlas of weights with the ``"atlas"`` input prior; it is stored in the tensors
    file and described in the card's ``input.ctv_atlas``.
    ``member_files``: for an ensemble card, its members' tensor files, copied byte for byte as
    ``member<i>.safetensors`` (each checked against the card's ``ensemble.members[i].tensors_sha256``);
    ``model`` then contributes only the input tensors. Why separate files: a member stays the very
    file it was trained into (its checksum proves it), and no file grows with the number of members."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise WeightsError(f"'{folder}' already holds files; choose a new folder for the weights.")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.is_dir():
            folder.rmdir()  # an empty folder made beforehand: the committed one takes its place
    except OSError as exc:
        raise output_error(folder, exc) from None
    member_files = [Path(f) for f in member_files]
    state = {} if member_files else {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = dict(card)
    if atlas is not None:
        import torch

        state[CtvAtlas.TENSOR] = torch.from_numpy(np.ascontiguousarray(atlas.probability, np.float32))
        card["input"] = {**card["input"], "ctv_atlas": atlas.card_entry()}
    check_finite_tensors(state, str(folder / TENSORS))  # never save weights that could not be loaded
    with transaction() as t:
        tmp = t.dir_for(folder)
        save_file(state, str(tmp / TENSORS), metadata={"format": "pt"})
        card.setdefault("format_version", CARD_FORMAT)
        card["tensors_sha256"] = sha256_file(tmp / TENSORS)
        hashes = {TENSORS: card["tensors_sha256"]}
        for i, source in enumerate(member_files):
            name = MEMBER_FILE.format(i)
            shutil.copyfile(source, tmp / name)
            hashes[name] = card["ensemble"]["members"][i]["tensors_sha256"]
        text = json.dumps(card, indent=2) + "\n"
        (tmp / CARD).write_text(text, encoding="utf-8")
        hashes[CARD] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        t.verify(folder, check_tree_sha256(hashes))
    return folder
