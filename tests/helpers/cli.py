"""Running the ``mnetim`` CLI in-process, and the shape of a refusal (one ``mnetim: error:`` line)."""

from MnetImSegmentLib.cli import main


def run_cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``mnetim argv`` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, match):
    """Non-zero exit, one ``mnetim: error:`` line, no traceback, and one of ``match`` ('a|b') in it."""
    assert code != 0, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("mnetim: error:"), err
    assert "Traceback" not in err
    assert any(m.lower() in err.lower() for m in match.split("|")), err
