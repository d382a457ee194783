"""Text from outside reaches the terminal printable: a comm, a command line, a span name, a note or an
error carrying terminal escape sequences (ESC, OSC window-title/clipboard writes, C1 CSI, bidi
overrides) or rich markup prints as visible escapes / literal brackets, in every text view: summary,
analyze, oom, diff, the live view, the live status line and error messages. One sanitizer
(``autoglm_trace.printable``) does it."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from autoglm_trace.printable import escape_markup, printable
from tests.fakes import synthetic

OSC = "\x1b]0;PWNED\x07"
EVIL = f"x{OSC}\x1b[5;7mBLINK\x9b2J\u202eRTL[bold]MARKUP[/]"


def test_printable_escapes_controls_and_format_characters() -> None:
    s = printable(EVIL)
    assert "\x1b" not in s and "\x07" not in s and "\x9b" not in s and "\u202e" not in s
    assert "\\x1b]0;PWNED\\x07" in s and "\\u202e" in s
    assert printable("tab\tnl\ncr\r") == "tab\\x09nl\\x0acr\\x0d"
    assert printable("ünïcödé 中文 ok") == "ünïcödé 中文 ok"  # printable text is left alone
    assert printable("\ud800") == "\\ud800"
    assert printable("abcdef", 4) == "abc…"
    assert escape_markup("[bold]x[/]") == "\\[bold]x\\[/]"


def _clean(out: str) -> None:
    for bad in ("\x1b]", "\x1b[5;7m", "\x07", "\x9b", "\u202e"):
        assert bad not in out, (bad, out[:2000])


@pytest.fixture(scope="module")
def evil_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("evil") / "rec"
    saved = dict(synthetic.CULPRITS)
    synthetic.CULPRITS["cpu"] = (4242, EVIL)
    try:
        synthetic.write_recording(p, synthetic.Scenario(kind="cpu", duration_s=12, seed=2))
    finally:
        synthetic.CULPRITS.clear()
        synthetic.CULPRITS.update(saved)
    m = json.loads((p / "manifest.json").read_text())
    m["target"]["comm"] = EVIL
    m["target"]["command"] = [EVIL, "--flag"]
    m["notes"] = [f"scrape http://127.0.0.1:1/metrics: HTTP 500 {EVIL}"]
    m["collectors"]["gpu"] = {"status": "unavailable", "reason": EVIL}
    m["error"] = EVIL
    (p / "manifest.json").write_text(json.dumps(m))
    return p


def _run(argv: list[str]) -> tuple[int, str]:
    from autoglm_trace.tracer import cli

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("argv", [["summary", "REC"], ["analyze", "REC"], ["analyze", "REC", "-v"], ["oom", "REC"],
                                  ["diff", "REC", "REC"]], ids=lambda a: " ".join(a))
def test_text_views_print_outside_text_escaped(evil_rec: Path, argv: list[str]) -> None:
    code, out = _run([str(evil_rec) if a == "REC" else a for a in argv])
    assert code == 0, out
    _clean(out)
    if argv[0] in ("summary", "analyze"):
        assert "[bold]MARKUP[/]" in out, out  # markup in recorded text prints as itself
        assert "\\x1b]0;PWNED\\x07" in out


def test_error_messages_are_printable(tmp_path: Path) -> None:
    code, out = _run(["summary", str(tmp_path / f"missing{OSC}[red]x")])
    assert code == 3
    _clean(out)
    assert "[red]x" in out and out.count("\n") == 1


def test_live_view_and_status_line(evil_rec: Path) -> None:
    from rich.console import Console

    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.tracer import live_status, live_view

    rec = Recording(evil_rec)
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=160)
    con.print(live_view.render(rec, rec.end_ns, 10.0, header=EVIL))
    out = buf.getvalue()
    _clean(out)
    assert "PWNED" in out  # the hostile comm is shown, escaped

    class _Rec:
        started_ns = 0
        writer = None

        class ctx:  # noqa: N801 - stands in for the recorder's SessionContext
            notes = [EVIL]

        def status(self) -> dict:
            return {"scrape": {"alert": None}}

    buf = io.StringIO()
    Console(file=buf, force_terminal=True).print(live_status.status_text(_Rec(), None))
    _clean(buf.getvalue())
