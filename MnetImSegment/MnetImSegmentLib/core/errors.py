"""Exceptions whose message is written for the user: one clear sentence, no traceback.

The CLI prints ``str(error)`` of these and exits non-zero; the Slicer widget shows it in a dialog.
Anything else escaping is a bug in this project, not in the user's data.
"""


class MnetImError(Exception):
    """Base class: the message is meant for the person who ran the tool."""

    exit_code = 2


class InputError(MnetImError):
    """The input image (or its folder) cannot be used."""


class WeightsError(MnetImError):
    """A weights folder is missing, incomplete, or does not match its model card."""


class OutputError(MnetImError):
    """The output cannot be written where the user asked."""


class DatasetError(MnetImError):
    """A training / evaluation dataset is inconsistent."""


class Cancelled(MnetImError):
    """The user cancelled a running segmentation; nothing was written."""

    exit_code = 130
