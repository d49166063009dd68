"""Validation before any work: option values, model cards, weights, geometry, header strings.

Every check raises one sentence for the person who ran the tool (:mod:`.errors`), naming the
option, field or file and the accepted range, so a bad value is refused before a CT is read, not
turned into an empty CTV with exit status 0.

* Options: :func:`positive_int` (``--batch-size``), :func:`probability` (``--threshold``),
  :func:`finite_number`, :func:`hu_window`; :func:`validate_segment_options` for ``mnetim segment``.
* Model cards: :data:`CARD_SCHEMA` is the schema *as data*; :func:`load_card_json` bounds the file
  size and nesting depth and refuses ``NaN``/``Infinity`` and duplicate keys before parsing
  completes; :func:`validate_card` checks types and ranges field by field.
* Weights: :func:`check_finite_tensors` (a NaN tensor with a matching SHA-256 is still refused).
* Geometry: :func:`check_geometry` (finite origin/spacing/direction, spacing > 0, orthonormal
  direction) for what a NIfTI sform or a DICOM header may contain.
* Strings that reach a NRRD header or a DICOM attribute: :func:`sanitize_header_text`.

Inference-path module: numpy only (torch lazily, for tensors it is handed).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any, Callable, Iterable, Optional

from .errors import InputError, WeightsError

# --------------------------------------------------------------------------- options
_BOOL = bool


def _is_int(value) -> bool:
    if isinstance(value, _BOOL):
        return False
    if isinstance(value, int):
        return True
    try:
        import numpy as np

        return isinstance(value, np.integer)
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False


def _is_number(value) -> bool:
    if isinstance(value, _BOOL):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        import numpy as np

        return isinstance(value, (np.integer, np.floating))
    except ImportError:  # pragma: no cover
        return False


def positive_int(value, option: str, maximum: Optional[int] = None) -> int:
    """A whole number >= 1 (and <= ``maximum``): batch sizes, counts, workers."""
    if not _is_int(value) or value < 1 or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise InputError(f"{option} must be a whole number of at least 1{upper}, got {value!r}.")
    return int(value)


def finite_number(value, option: str, minimum: Optional[float] = None, maximum: Optional[float] = None) -> float:
    """A finite real number within ``[minimum, maximum]`` (either bound optional)."""
    ok = _is_number(value) and math.isfinite(float(value))
    if ok and minimum is not None and float(value) < minimum:
        ok = False
    if ok and maximum is not None and float(value) > maximum:
        ok = False
    if not ok:
        if minimum is not None and maximum is not None:
            rng = f" from {minimum:g} to {maximum:g}"
        elif minimum is not None:
            rng = f" of at least {minimum:g}"
        elif maximum is not None:
            rng = f" of at most {maximum:g}"
        else:
            rng = ""
        raise InputError(f"{option} must be a finite number{rng}, got {value!r}.")
    return float(value)


def probability(value, option: str) -> float:
    """A probability threshold strictly between 0 and 1 (0 and 1 would mark everything or nothing)."""
    if not (_is_number(value) and math.isfinite(float(value)) and 0.0 < float(value) < 1.0):
        raise InputError(f"{option} must be a number strictly between 0 and 1, got {value!r}.")
    return float(value)


def hu_window(low, high, option: str = "the HU window") -> tuple[float, float]:
    """An intensity window: two finite Hounsfield values with low < high."""
    lo = finite_number(low, f"The low end of {option}", -10000.0, 100000.0)
    hi = finite_number(high, f"The high end of {option}", -10000.0, 100000.0)
    if not lo < hi:
        raise InputError(f"{option} must have its low end below its high end, got [{lo:g}, {hi:g}].")
    return lo, hi


MAX_BATCH_SIZE = 4096


def validate_segment_options(args) -> None:
    """Refuse out-of-range ``mnetim segment`` options before any file is read."""
    positive_int(getattr(args, "batch_size", 1), "--batch-size", MAX_BATCH_SIZE)
    threshold = getattr(args, "threshold", None)
    if threshold is not None:
        probability(threshold, "--threshold")


# Every numeric option of every command, by its argparse ``dest``: (kind, minimum, maximum).
# "int": a whole number in [min, max]; "number": a finite number in [min, max]; "open": a finite
# number strictly above min, at most max; "probability": strictly between 0 and 1. One table, so a
# new option gets its range next to the others and :func:`validate_options` checks it for every command.
OPTION_RULES: dict[str, tuple] = {
    "batch_size": ("int", 1, MAX_BATCH_SIZE),
    "threshold": ("probability", None, None),
    "count": ("int", 1, 100_000),
    "workers": ("int", 0, 256),
    "matrix": ("int", 32, 2048),
    "slice_mm": ("open", 0.0, 20.0),
    "seed": ("int", 0, 2**32 - 1),
    "max_spread_mm": ("number", 0.0, 1000.0),
    "label": ("int", 1, 65535),
    "epochs": ("int", 1, 100_000),
    "windows_per_epoch": ("int", 0, 10_000_000),  # 0 = one pass over the training slices (the default)
    "lr": ("open", 0.0, 10.0),
    "lr_milestones": ("int", 0, 100_000),
    "lr_gamma": ("open", 0.0, 1.0),
    "patience": ("int", 0, 100_000),
    "threads": ("int", 0, 1024),
    "max_minutes": ("number", 0.0, 1e6),
    "roi_size": ("int", 8, 4096),
    "roi_spacing": ("open", 0.0, 50.0),
    "folds": ("int", 2, 100),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_option(dest: str, value) -> None:
    kind, lo, hi = OPTION_RULES[dest]
    flag = _flag(dest)
    if kind == "int":
        if not _is_int(value) or value < lo or value > hi:
            raise InputError(f"{flag} must be a whole number from {lo} to {hi}, got {value!r}.")
    elif kind == "probability":
        probability(value, flag)
    elif kind == "open":
        if not (_is_number(value) and math.isfinite(float(value)) and lo < float(value) <= hi):
            raise InputError(f"{flag} must be a finite number above {lo:g} and at most {hi:g}, got {value!r}.")
    else:
        finite_number(value, flag, lo, hi)


def validate_options(args) -> None:
    """Refuse every out-of-range numeric option of any command before any work (see :data:`OPTION_RULES`).

    Options left at ``None`` (meaning "the default") are not checked; lists are checked item by item.
    """
    for dest, value in sorted(vars(args).items()):
        if dest not in OPTION_RULES or value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            _check_option(dest, item)


# --------------------------------------------------------------------------- header strings
# Unicode categories that must never reach a header: controls, format characters (bidi
# overrides), surrogates, private use, unassigned, line and paragraph separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def sanitize_header_text(text, max_len: int = 256, dicom: bool = False, ascii_only: bool = False) -> str:
    """A string safe to put in one NRRD header line or one DICOM string attribute.

    Control characters, line breaks and invisible format characters become spaces (a newline in a
    model name must not start a new header field such as ``data file:``), runs of white space
    collapse, the result is stripped and cut to ``max_len`` characters.

    Args:
        text: Anything; ``str(text)`` is used.
        max_len: At most this many characters (DICOM LO: 64, SH: 16, LT: 10240).
        dicom: Also replace ``\\`` (DICOM's value separator) with ``/``.
        ascii_only: Replace non-ASCII characters with ``?`` (DICOM's default character set).
    """
    s = unicodedata.normalize("NFC", str(text))
    out = []
    for ch in s:
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append(" ")
        elif dicom and ch == "\\":
            out.append("/")
        elif ascii_only and ord(ch) > 126:
            out.append("?")
        else:
            out.append(ch)
    s = re.sub(r"\s+", " ", "".join(out)).strip()
    return s[: max(0, int(max_len))].rstrip()


def is_header_safe(text: str, max_len: int = 256) -> bool:
    """Whether ``text`` would pass :func:`sanitize_header_text` unchanged."""
    return isinstance(text, str) and sanitize_header_text(text, max_len) == text


# --------------------------------------------------------------------------- model card schema
MAX_CARD_BYTES = 1 << 20  # the demo card is ~6 KB; a megabyte is already absurd
MAX_CARD_DEPTH = 16
MAX_STRING = 20000
MAX_LIST = 10000
MAX_KEYS = 1000

# The schema *as data*. Node kinds: object (fields, required, extra), int, number, str, bool,
# list (items, len / min_len / max_len), any (bounded JSON). ``check`` names a cross-field rule
# from _RULES. Unknown keys in an object are validated by its ``extra`` node.
_LINE64 = {"type": "str", "line": True, "min_len": 1, "max_len": 64}
_SIZE = {"type": "int", "min": 1, "max": 4096}
_LEVEL = {"type": "int", "min": 0, "max": 16}
_MM = {"type": "number", "min": 0.0, "max": 2000.0}
_HU = {"type": "number", "min": -10000.0, "max": 100000.0}
_CONFIG_VALUE = {"type": "any", "min": 0.0, "max": 1e6, "line": True, "max_len": 256}
APPLICATOR_PRIOR_PATTERN = r"\A(none|tandem|atlas)\Z"  # engine.applicator_prior.APPLICATOR_PRIORS (core does not import the engine)
METAL_REDUCTION_PATTERN = r"\A(none|linear|normalised)\Z"  # engine.metal_reduction.METAL_REDUCTIONS

_SHA256 = {"type": "str", "pattern": r"^[0-9a-f]{64}$"}

CARD_SCHEMA: dict = {
    "type": "object",
    "required": ["format_version", "name", "version", "architecture", "config", "input", "threshold",
                 "intended_use", "tensors_sha256"],
    "fields": {
        "format_version": {"type": "int", "min": 1, "max": 1000},
        "name": _LINE64,
        "version": {"type": "str", "line": True, "min_len": 1, "max_len": 32, "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"},
        "architecture": {"type": "str", "line": True, "min_len": 1, "max_len": 64, "pattern": r"^[A-Za-z0-9_.+-]+$"},
        "config": {
            "type": "object",
            "fields": {
                "in_channels": {"type": "int", "min": 1, "max": 64},
                "out_channels": {"type": "int", "min": 1, "max": 16},
                "features": {"type": "list", "items": _SIZE, "min_len": 1, "max_len": 16},
                "input_levels": {"type": "list", "items": _LEVEL, "max_len": 16},
                "input_branch_channels": {"type": "list", "items": _SIZE, "max_len": 16},
                "output_levels": {"type": "list", "items": _LEVEL, "max_len": 16},
                "fusion": {"type": "str", "line": True, "max_len": 32},
                "norm": {"type": "str", "line": True, "max_len": 32},
            },
            "extra": _CONFIG_VALUE,  # baselines' own keys: non-negative finite numbers, short strings
        },
        "input": {
            "type": "object",
            "required": ["slices_per_window", "hu_window"],
            "fields": {
                "slices_per_window": {"type": "int", "min": 1, "max": 31, "odd": True},
                "hu_window": {"type": "list", "items": _HU, "len": 2, "check": "increasing"},
                "normalisation": {"type": "str", "max_len": 256},
                "applicator_prior": {"type": "str", "pattern": APPLICATOR_PRIOR_PATTERN},
                "metal_reduction": {"type": "str", "pattern": METAL_REDUCTION_PATTERN},
                "roi": {
                    "type": "object",
                    "fields": {
                        "size_px": {"type": "list", "items": {"type": "int", "min": 8, "max": 4096}, "len": 2},
                        "spacing_mm": {"type": "list", "items": {"type": "number", "gt": 0.0, "max": 50.0}, "len": 2},
                        "body_hu": _HU,
                        "metal_hu": _HU,
                        "min_metal_ml": {"type": "number", "min": 0.0, "max": 10000.0},
                        "z_margin_mm": _MM,
                        "metal_center_window_mm": _MM,
                        "z_below_peak_mm": _MM,
                        "z_above_peak_mm": _MM,
                    },
                    "extra": {"type": "any"},
                },
            },
            "extra": {"type": "any"},
        },
        "threshold": {"type": "number", "gt": 0.0, "lt": 1.0},
        # Several networks of the card's configuration (models.ensemble; MAX_MEMBERS there).
        "ensemble": {"type": "object", "required": ["member_thresholds", "members"],
                     "fields": {"member_thresholds": {"type": "list", "items": {"type": "number", "gt": 0.0, "lt": 1.0},
                                                      "min_len": 2, "max_len": 8},
                                "members": {"type": "list", "min_len": 2, "max_len": 8,
                                            "items": {"type": "object", "required": ["tensors_sha256"],
                                                      "fields": {"tensors_sha256": _SHA256}, "extra": {"type": "any"}}}},
                     "extra": {"type": "any"}},
        "postprocessing": {"type": "object", "fields": {"largest_component": {"type": "bool"}},
                           "extra": {"type": "any"}},
        "intended_use": {"type": "str", "min_len": 1, "max_len": 4000, "text": True},
        "tensors_sha256": _SHA256,
    },
    "extra": {"type": "any"},  # training summary, metrics, paper...: bounded JSON
    "check": "channels_match_window",
}


def _rule_increasing(value, where):
    if value[0] >= value[1]:
        return f"{where} is {value}; its low end must be below its high end"
    return None


def _rule_channels_match_window(card, where):
    config, spec = card.get("config", {}), card.get("input", {})
    prior = spec.get("applicator_prior", "none")
    expected = spec.get("slices_per_window", 0) + (0 if prior == "none" else 1)
    if "in_channels" in config and config["in_channels"] != expected:
        with_prior = "" if prior == "none" else f" plus 1 for the '{prior}' prior"
        return (f"config.in_channels ({config['in_channels']}) differs from input.slices_per_window "
                f"({spec.get('slices_per_window')}){with_prior}")
    return None


_RULES: dict[str, Callable[[Any, str], Optional[str]]] = {
    "increasing": _rule_increasing,
    "channels_match_window": _rule_channels_match_window,
}


class _Invalid(Exception):
    """Internal: the first problem found, as a clause ("x.y is 3; it must be ...")."""


def _show(value) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_number(node, value, where):
    if not _is_number(value):
        raise _Invalid(f"{where} is {_show(value)}; it must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise _Invalid(f"{where} is {_show(value)}; it must be a finite number")
    lo, hi, gt, lt = node.get("min"), node.get("max"), node.get("gt"), node.get("lt")
    bad = (lo is not None and v < lo) or (hi is not None and v > hi) or (gt is not None and v <= gt) \
        or (lt is not None and v >= lt)
    if bad:
        low = f"above {gt:g}" if gt is not None else (f"at least {lo:g}" if lo is not None else "")
        high = f"below {lt:g}" if lt is not None else (f"at most {hi:g}" if hi is not None else "")
        rng = " and ".join(x for x in (low, high) if x)
        raise _Invalid(f"{where} is {_show(value)}; it must be {rng}")


def _check_string(node, value, where):
    if not isinstance(value, str):
        raise _Invalid(f"{where} is {_show(value)}; it must be a text string")
    if len(value) < node.get("min_len", 0):
        raise _Invalid(f"{where} is empty")
    max_len = node.get("max_len", MAX_STRING)
    if len(value) > max_len:
        raise _Invalid(f"{where} is {len(value)} characters long; at most {max_len} are allowed")
    if node.get("line") and not is_header_safe(value, max_len):
        raise _Invalid(f"{where} is {_show(value)}; it must be one line of printable text without "
                       "control characters or surrounding spaces")
    if node.get("text") and any(unicodedata.category(c) in _UNSAFE_CATEGORIES and c not in "\n\t" for c in value):
        raise _Invalid(f"{where} holds control characters")
    pattern = node.get("pattern")
    if pattern and not re.match(pattern, value):
        raise _Invalid(f"{where} is {_show(value)}; it does not have the expected form")


def _check_any(node, value, where, depth=0):
    """Bounded JSON: finite numbers (optionally within min/max), bounded strings, lists and objects."""
    if depth > MAX_CARD_DEPTH:
        raise _Invalid(f"{where} is nested more than {MAX_CARD_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return
    if _is_number(value):
        _check_number({k: node[k] for k in ("min", "max") if k in node}, value, where)
    elif isinstance(value, str):
        _check_string({"max_len": node.get("max_len", MAX_STRING), "line": node.get("line", False)}, value, where)
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise _Invalid(f"{where} has {len(value)} items; at most {MAX_LIST} are allowed")
        for i, item in enumerate(value):
            _check_any(node, item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_KEYS:
            raise _Invalid(f"{where} has {len(value)} keys; at most {MAX_KEYS} are allowed")
        for key, item in value.items():
            _check_any(node, item, f"{where}.{key}", depth + 1)
    else:
        raise _Invalid(f"{where} has an unsupported type")


def _check(node: dict, value, where: str, depth: int = 0) -> None:
    kind = node["type"]
    if kind == "any":
        _check_any(node, value, where, depth)
    elif kind == "int":
        if not _is_int(value):
            raise _Invalid(f"{where} is {_show(value)}; it must be a whole number")
        _check_number(node, value, where)
        if node.get("odd") and value % 2 != 1:
            raise _Invalid(f"{where} is {value}; it must be odd")
    elif kind == "number":
        _check_number(node, value, where)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _Invalid(f"{where} is {_show(value)}; it must be true or false")
    elif kind == "str":
        _check_string(node, value, where)
    elif kind == "list":
        if not isinstance(value, list):
            raise _Invalid(f"{where} is {_show(value)}; it must be a list")
        n = len(value)
        if "len" in node and n != node["len"]:
            raise _Invalid(f"{where} has {n} values; it must have {node['len']}")
        if n < node.get("min_len", 0) or n > node.get("max_len", MAX_LIST):
            raise _Invalid(f"{where} has {n} values; it must have {node.get('min_len', 0)} to {node.get('max_len', MAX_LIST)}")
        for i, item in enumerate(value):
            _check(node["items"], item, f"{where}[{i}]", depth + 1)
    elif kind == "object":
        if not isinstance(value, dict):
            raise _Invalid(f"{where} is {_show(value)}; it must be a JSON object")
        if len(value) > MAX_KEYS:
            raise _Invalid(f"{where} has {len(value)} keys; at most {MAX_KEYS} are allowed")
        missing = [k for k in node.get("required", ()) if k not in value]
        if missing:
            raise _Invalid(f"{where} lacks the field(s) {', '.join(missing)}")
        fields = node.get("fields", {})
        extra = node.get("extra")
        for key, item in value.items():
            sub = f"{where}.{key}" if where else key
            if not isinstance(key, str) or len(key) > 128 or not is_header_safe(key, 128):
                raise _Invalid(f"{where or 'the card'} has a key that is not a short printable name ({_show(key)})")
            if key in fields:
                _check(fields[key], item, sub, depth + 1)
            elif extra is not None:
                _check(extra, item, sub, depth + 1)
            else:
                raise _Invalid(f"{sub} is not a known field")
    else:  # pragma: no cover - a schema bug, not a card problem
        raise ValueError(f"unknown schema node type {kind!r}")
    rule = node.get("check")
    if rule:
        problem = _RULES[rule](value, where)
        if problem:
            raise _Invalid(problem)


def validate_card(raw, source="the model card", schema: dict = CARD_SCHEMA) -> dict:
    """Check a parsed model card against ``schema``; return it unchanged or raise.

    Raises:
        WeightsError: one sentence naming the card, the field and the accepted values.
    """
    try:
        _check(schema, raw, "")
    except _Invalid as problem:
        raise WeightsError(f"The model card '{source}' is invalid: {problem}.") from None
    return raw


def validate_card_fields(values: dict, source: str) -> None:
    """Check top-level card fields given on a command line (name, version, intended use) before any work.

    Why: a version with a space would otherwise be found only when the trained weights are read back,
    after the whole training run.

    Raises:
        WeightsError: one sentence naming the field and the accepted values.
    """
    try:
        for key, value in values.items():
            _check(CARD_SCHEMA["fields"][key], value, key)
    except _Invalid as problem:
        raise WeightsError(f"The model card {source} would be invalid: {problem}.") from None


def json_nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text, found without parsing (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name):
    raise ValueError(f"the value {name} is not a finite number")


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key '{key}' appears twice")
        seen[key] = value
    return seen


def load_card_json(data: bytes | str, source="the model card") -> dict:
    """Parse a model card's bytes with bounded size and depth, no NaN/Infinity, no duplicate keys.

    Raises:
        WeightsError: one sentence naming the card and the problem.
    """
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > MAX_CARD_BYTES:
        raise WeightsError(f"The model card '{source}' is {size} bytes; at most {MAX_CARD_BYTES} are allowed.")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError:
        raise WeightsError(f"The model card '{source}' is not UTF-8 text.") from None
    depth = json_nesting_depth(text)
    if depth > MAX_CARD_DEPTH:
        raise WeightsError(f"The model card '{source}' is nested {depth} levels deep; at most {MAX_CARD_DEPTH} are allowed.")
    try:
        raw = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsError(f"The model card '{source}' is not valid JSON ({str(exc).splitlines()[0][:120]}).") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"The model card '{source}' must hold a JSON object.")
    return raw


# --------------------------------------------------------------------------- tensors
def check_finite_tensors(state_dict, source: str = "the weights") -> None:
    """Refuse NaN or infinite values in any floating-point tensor (torch or numpy).

    A checksum proves the file is the one the card names, not that training produced numbers:
    a NaN weight makes every probability NaN, which thresholds to an empty CTV.

    Raises:
        WeightsError: naming the first bad tensor and how many values are bad.
    """
    import numpy as np

    for name, tensor in state_dict.items():
        if hasattr(tensor, "is_floating_point"):  # torch, imported lazily by whoever made it
            if not tensor.is_floating_point():
                continue
            import torch

            bad = int((~torch.isfinite(tensor)).sum())
        else:
            array = np.asarray(tensor)
            if not np.issubdtype(array.dtype, np.floating):
                continue
            bad = int((~np.isfinite(array)).sum())
        if bad:
            raise WeightsError(f"'{source}' holds {bad} NaN or infinite value(s) in the tensor '{name}'; "
                               "the weights are unusable even though the file matches its checksum.")


# --------------------------------------------------------------------------- geometry
ORTHONORMAL_TOLERANCE = 1e-3  # DICOM writes orientation cosines to ~6 digits; NIfTI qforms to float32


def check_geometry(spacing: Iterable[float], origin: Iterable[float], direction: Iterable[float],
                   source: str = "the image") -> None:
    """Refuse a geometry that cannot place voxels in space.

    Finite origin, spacing and direction; spacing > 0; a direction matrix (row-major 3x3, columns =
    index axes, SimpleITK's convention) that is orthonormal within :data:`ORTHONORMAL_TOLERANCE`
    (flipped axes, det = -1, are fine; shear and scaling are not).

    Raises:
        InputError: one sentence naming ``source`` and the problem.
    """
    import numpy as np

    try:
        sp = np.asarray(list(spacing), dtype=float)
        og = np.asarray(list(origin), dtype=float)
        d = np.asarray(list(direction), dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{source} has a geometry that is not numeric.") from None
    if sp.size != 3 or og.size != 3 or d.size != 9:
        raise InputError(f"{source} has no 3D geometry (spacing {sp.size}, origin {og.size}, direction {d.size} values).")
    if not np.all(np.isfinite(sp)) or not np.all(sp > 0):
        raise InputError(f"{source} has voxel spacing {tuple(float(v) for v in sp)}; it must be positive and finite.")
    if not np.all(np.isfinite(og)):
        raise InputError(f"{source} has origin {tuple(float(v) for v in og)}; it must be finite.")
    if not np.all(np.isfinite(d)):
        raise InputError(f"{source} has a direction matrix with NaN or infinite values (a corrupt orientation).")
    m = d.reshape(3, 3)
    error = float(np.abs(m.T @ m - np.eye(3)).max())
    if error > ORTHONORMAL_TOLERANCE:
        raise InputError(f"{source} has a direction matrix that is not orthonormal (deviation {error:.3g}); "
                         "its orientation is sheared or scaled and cannot be trusted.")


def check_volume_geometry(geometry, source: str = "the image") -> None:
    """:func:`check_geometry` for a :class:`~.volume.Geometry` (or anything with the three fields)."""
    check_geometry(geometry.spacing, geometry.origin, geometry.direction, source)


__all__ = ["CARD_SCHEMA", "MAX_CARD_BYTES", "MAX_CARD_DEPTH", "check_finite_tensors", "check_geometry",
           "check_volume_geometry", "finite_number", "hu_window", "is_header_safe", "json_nesting_depth",
           "load_card_json", "positive_int", "probability", "sanitize_header_text", "validate_card",
           "validate_card_fields", "validate_options", "validate_segment_options", "OPTION_RULES"]
