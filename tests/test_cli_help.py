"""Every ``mnetim`` option with a default says it in ``--help`` (issue 16)."""

import argparse

from MnetImSegmentLib.cli import build_parser


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_default_is_in_help():
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.default in (None, argparse.SUPPRESS) or action.default is False:
                continue
            flag = max(action.option_strings, key=len)
            after = text.rsplit(flag, 1)[1].split(" --", 1)[0] if flag in text else ""
            if "default" not in after:
                missing.append(f"{name} {flag}")
    assert not missing, missing


def test_train_help_shows_epochs_default():
    train = _subparsers(build_parser())["train"]
    assert "(default: 30)" in " ".join(train.format_help().split())
