"""``mnetim``: the command line of MnetImSegment.

One module per command group, each with ``add_parser(sub)`` and ``run(args)``: ``segment``,
``demo``, ``phantom``, ``train``, ``import_rt`` (``import-rt``), ``evaluate`` (``evaluate``,
``evaluate-models``) and ``research`` (``crossval``, ``compare``, ``export``); shared flags and
``--json`` output in ``options``. argparse lives only in this package.

Contract (DESIGN.md): bad input -> exit code != 0 and one clear line on stderr, no traceback, no
partial output file; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import copy
import sys

from .. import __version__
from ..core.commit import os_error_reason
from ..core.errors import Cancelled, MnetImError
from ..core.validate import validate_options
from . import demo, evaluate, import_rt, phantom, research, segment, train

# In the order ``mnetim --help`` lists them.
COMMAND_GROUPS = (segment, demo, phantom, train, import_rt, evaluate, research)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, except where there is none to show.

    ``None`` (the value comes from elsewhere: the model card, the data) and ``False`` (a plain flag)
    would only add noise; such options say in their own help where the value comes from.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text:
            return action.help
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return action.help
        return (text + " " if text else "") + "(default: %(default)s)"

    def _format_action(self, action):
        # argparse expands help text only when there is some: give a bare option its default line.
        if action.help is None and action.option_strings:
            clone = copy.copy(action)
            clone.help = ""
            clone.help = self._get_help_string(clone) or None
            action = clone
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    """Every ``mnetim`` (sub)command lists its defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mnetim", description="CTV segmentation for cervical-cancer brachytherapy CT (Mnet_Im).")
    p.add_argument("--version", action="version", version=f"mnetim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    return p


def main(argv=None) -> int:
    import SimpleITK as sitk

    # ITK prints its own warnings (e.g. "No Series were found" for every sub-folder) straight to
    # stderr; the contract is one clear line from us, so they are silenced here, not in the library.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_options(args)  # every numeric option of every command, before any work
        return args.func(args)
    except Cancelled as exc:
        print(f"mnetim: {exc}", file=sys.stderr)
        return exc.exit_code
    except MnetImError as exc:
        print(f"mnetim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnetim: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except OSError as exc:  # an OS error no writer or reader turned into a sentence: still one line
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        print(f"mnetim: error: cannot access{where}: {os_error_reason(exc)}.", file=sys.stderr)
        return 2
    except MemoryError:
        print("mnetim: error: out of memory.", file=sys.stderr)
        return 1
