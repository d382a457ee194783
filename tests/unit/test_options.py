"""Every option is checked before anything starts: a bad value is one line on stderr, exit 2, and no
recording directory, no child process, no collector (issue: --bucket -5 started a recording whose
collector died and `record` exited 0 with its data gone; -d nan wrote NaN into manifest.json)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from autoglm_trace.tracer import cli

BAD_RECORD = [
    ["--bucket", "-5"], ["--bucket", "0"], ["--bucket", "1e3"],
    ["--scrape-interval", "0"], ["--scrape-interval", "nan"], ["--scrape-interval", "inf"],
    ["--probe-interval", "-1"], ["--probe-interval", "1e12"],
    ["--gpu-interval", "-5"], ["--gpu-interval", "0"],
    ["-d", "nan"], ["-d", "inf"], ["-d", "-1"], ["-d", "0"], ["-d", "1e12"],
    ["-i", "0"], ["-i", "999999"], ["-p", "0"], ["-p", "-3"],
    ["--scrape", "file:///etc/shadow"], ["--scrape", "ftp://x/metrics"], ["--scrape", "http://"],
    ["--scrape", "http://h:99999/metrics"], ["--probe", "file:///etc/passwd"],
    ["--prometheus", "99999"], ["--prometheus", "x:y"], ["--probe-body", "{not json"],
    ["--ring", "5m", "--keep", "0"],
]


def _run(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("bad", BAD_RECORD, ids=lambda a: " ".join(a))
def test_record_refuses_bad_option_before_starting(bad: list[str], tmp_path: Path) -> None:
    out = tmp_path / "rec"
    code, err = _run(["record", "-q", "--no-bpf", "--no-gpu", "-o", str(out), *bad, "--", "/bin/true"])
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("autoglm-trace: error: record:"), err
    assert not out.exists()  # nothing started


@pytest.mark.parametrize("argv", [
    ["analyze", "REC", "--window", "1e12"], ["analyze", "REC", "--window", "nan"],
    ["analyze", "REC", "--window", "-1"], ["analyze", "REC", "--window", "inf"],
    ["report", "REC", "--max-points", "1e9"], ["report", "REC", "--max-points", "999999999999"],
    ["diff", "REC", "REC", "--top", "-1"], ["diff", "REC", "REC", "--top", "99999999999999999999"],
    ["top", "-w", "nan", "--host"], ["top", "--bucket", "-5", "--host"],
], ids=lambda a: " ".join(a))
def test_reading_commands_refuse_bad_numbers(argv: list[str], tmp_path: Path) -> None:
    code, err = _run([a.replace("REC", str(tmp_path)) for a in argv])
    assert code == 2, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_good_values_still_parse() -> None:
    from autoglm_trace.tracer.commands import record

    _args, opts = record.parse_options(["--bucket", "50", "--gpu-interval", "250", "--scrape-interval", "0.5",
                                        "--scrape", "http://127.0.0.1:8000/metrics", "-d", "2.5", "--host"])
    assert opts.collector_options["bucket_ms"] == 50 and opts.collector_options["gpu_interval_ms"] == 250
    assert opts.scrape_interval_s == 0.5 and opts.duration_s == 2.5
