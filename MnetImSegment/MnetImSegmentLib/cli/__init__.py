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
import sys

from .. import __version__
from ..core.commit import os_error_reason
from ..core.errors import Cancelled, MnetImError
from ..core.validate import validate_options
from . import demo, evaluate, import_rt, phantom, research, segment, train

# In the order ``mnetim --help`` lists them.
COMMAND_GROUPS = (segment, demo, phantom, train, import_rt, evaluate, research)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mnetim", description="CTV segmentation for cervical-cancer brachytherapy CT (Mnet_Im).")
    p.add_argument("--version", action="version", version=f"mnetim {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
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
