"""Recordings and logs planted by someone else: the reader opens regular files only, bounds what it
reads, refuses swapped table files, checks the manifest against its schema once, and its messages
name paths, never the content of the files read.

Each command runs through ``cli.main`` in a child process with a deadline, so a hang is a failure
with a message rather than a stuck suite.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import RecordingError
from tests.fakes.synthetic import Scenario, write_recording

DEADLINE_S = 30


def _cli_child(argv: list[str], q: Any) -> None:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from autoglm_trace.tracer import cli

    err, out = io.StringIO(), io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(out):
            code = cli.main(argv)
    except BaseException as e:  # noqa: BLE001 - a traceback for the user: report it
        code, err = -1, io.StringIO(f"Traceback: {type(e).__name__}: {e}")
    q.put((code, err.getvalue(), out.getvalue()))


def run_cli(argv: list[str], deadline_s: float = DEADLINE_S) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of ``autoglm-trace ARGV`` run in a forked child with a deadline."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_cli_child, args=(argv, q))
    p.start()
    p.join(deadline_s)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"autoglm-trace {' '.join(argv)} hung (> {deadline_s} s)")
    return q.get(timeout=5)


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("autoglm-trace: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("good") / "rec"
    write_recording(p, Scenario(kind="cpu", duration_s=12, seed=3))
    return p


@pytest.fixture
def rec(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "rec"
    shutil.copytree(good, dst)
    return dst


def _manifest(rec: Path) -> dict[str, Any]:
    return json.loads((rec / "manifest.json").read_text())


def _write_manifest(rec: Path, m: Any) -> None:
    (rec / "manifest.json").write_text(json.dumps(m))


# Hangs and unbounded reads ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "devzero", "link-devzero", "link-file", "directory"])
def test_table_file_not_regular_is_refused(rec: Path, kind: str, tmp_path: Path) -> None:
    t = rec / "proc_samples.arrow"
    t.unlink()
    if kind == "fifo":
        os.mkfifo(t)
    elif kind == "devzero":
        os.mknod(t, 0o600 | 0o020000, os.makedev(1, 5)) if os.geteuid() == 0 else pytest.skip("mknod needs root")
    elif kind == "link-devzero":
        t.symlink_to("/dev/zero")
    elif kind == "link-file":
        (tmp_path / "elsewhere.arrow").write_bytes((rec / "faults.arrow").read_bytes())
        t.symlink_to(tmp_path / "elsewhere.arrow")
    else:
        t.mkdir()
    code, _err, _ = run_cli(["oom", str(rec)])  # reads no proc_samples when nothing was killed: any answer
    assert code in (0, 3)
    for cmd in (["summary", str(rec)], ["analyze", str(rec), "--json"]):
        code, err, _ = run_cli(cmd)
        assert code == 3, (cmd, err)
        line = one_line(err)
        assert "proc_samples.arrow" in line and "not a regular file" in line, line


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_latency_log_fifo_or_device_is_refused(rec: Path, kind: str, tmp_path: Path) -> None:
    if kind == "fifo":
        path = tmp_path / "lat.jsonl"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    code, err, _ = run_cli(["analyze", str(rec), "--latency", str(path)])
    assert code == 2, err
    assert "not a regular file" in one_line(err)


def test_manifest_fifo_and_huge_manifest(rec: Path) -> None:
    m = rec / "manifest.json"
    m.unlink()
    os.mkfifo(m)
    code, err, _ = run_cli(["summary", str(rec)])
    assert code == 3 and "not a regular file" in one_line(err)
    m.unlink()
    m.write_text('{"format": "autoglm-trace-recording", "pad": "' + "x" * (17 << 20) + '"}')
    code, err, _ = run_cli(["summary", str(rec)])
    assert code == 3 and "larger than" in one_line(err)


# Swapped tables ----------------------------------------------------------------------------------
def test_swapped_table_files_are_refused(rec: Path) -> None:
    a, b, tmp = rec / "sched.arrow", rec / "faults.arrow", rec / "swap.tmp"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(RecordingError, match="another table"):
        Recording(rec).table("sched")
    code, err, _ = run_cli(["analyze", str(rec), "--json"])
    assert code == 3 and "another table" in one_line(err)


# Messages quote paths, not content ---------------------------------------------------------------
def test_errors_do_not_quote_file_content(rec: Path, tmp_path: Path) -> None:
    secret = b"SECRETPW" * 4
    (rec / "sched.arrow").write_bytes(secret)
    code, err, _ = run_cli(["summary", str(rec)])
    line = one_line(err)
    assert code == 3 and "SECRET" not in line
    # Arrow's own message would say how many metadata bytes it expected: the first bytes as a length.
    for width in (4, 8):
        assert str(int.from_bytes(secret[:width], "little")) not in line, line
        assert str(int.from_bytes(secret[4:4 + width], "little")) not in line, line
    log = tmp_path / "root-only.jsonl"
    log.write_text('{"start": "hunter2-topsecret", "end": 1}\nstart,end\nhunter3,x\n')
    code, err, _ = run_cli(["analyze", str(rec), "--latency", str(log)])
    line = one_line(err)
    assert "hunter" not in line and "topsecret" not in line, line


# The manifest schema -------------------------------------------------------------------------------
BAD_MANIFESTS: dict[str, Any] = {
    "schema_version -1": {"schema_version": -1},
    "schema_version 0": {"schema_version": 0},
    "schema_version string": {"schema_version": "1"},
    "schema_version true": {"schema_version": True},
    "start after end": {"start_ns": 10_000_000_000_000, "end_ns": 5},
    "start_ns string": {"start_ns": "5"},
    "end_ns list": {"end_ns": [1]},
    "start_ns huge": {"start_ns": 1 << 70},
    "target string": {"target": "pid 3"},
    "target.pid string": {"target": {"mode": "command", "pid": "1000", "comm": "x"}},
    "target.comm int": {"target": {"mode": "command", "pid": 1000, "comm": 5}},
    "target.command dict": {"target": {"mode": "command", "command": {"a": 1}}},
    "target.rusage string": {"target": {"mode": "command", "rusage": "lots"}},
    "target.stderr_tail ints": {"target": {"mode": "command", "stderr_tail": [1, 2]}},
    "clock list": {"clock": [1]},
    "clock offset string": {"clock": {"monotonic_to_wall_ns": "x"}},
    "host list": {"host": ["x"]},
    "host.cpus string": {"host": {"cpus": "2"}},
    "collectors list": {"collectors": ["kernel"]},
    "collectors.kernel.tables string": {"collectors": {"kernel": {"status": "ok", "tables": "sched"}}},
    "notes dict": {"notes": {"a": 1}},
    "notes ints": {"notes": [1]},
    "complete string": {"complete": "yes"},
    "duration_s negative": {"duration_s": -1},
    "tables values": {"tables": {"sched": "many"}},
    "interval_ns float": {"interval_ns": 0.5},
    "tool string": {"tool": "me"},
    "recorder.pid string": {"recorder": {"pid": "1"}},
    "deep options": {"options": json.loads("[" * 200 + "]" * 200)},
}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_bad_manifest_fields_are_one_line_errors(rec: Path, name: str) -> None:
    m = _manifest(rec)
    m.update(BAD_MANIFESTS[name])
    _write_manifest(rec, m)
    with pytest.raises(RecordingError):
        Recording(rec)
    for cmd in (["summary", str(rec)], ["report", str(rec), "-o", str(rec.parent / "r.html")]):
        code, err, _ = run_cli(cmd)
        assert code == 3, (name, cmd, err)
        one_line(err)


@pytest.mark.parametrize("text", ['{"format": "autoglm-trace-recording", "schema_version": NaN}',
                                  '{"format": "autoglm-trace-recording", "schema_version": 1, "duration_s": Infinity}',
                                  "[" * 100_000 + "]" * 100_000])
def test_manifest_nan_and_deep_json(rec: Path, text: str) -> None:
    (rec / "manifest.json").write_text(text)
    with pytest.raises(RecordingError):
        Recording(rec)


def test_valid_manifest_still_reads(rec: Path) -> None:
    r = Recording(rec)
    assert r.manifest["schema_version"] == schema.SCHEMA_VERSION and r.end_ns >= r.start_ns
    code, err, out = run_cli(["summary", str(rec), "--json"])
    assert code == 0, err


def test_manifest_nulls_read_as_absent(rec: Path) -> None:
    m = _manifest(rec)
    m.update({"clock": None, "target": None, "host": None, "collectors": None, "notes": None, "end_ns": None})
    _write_manifest(rec, m)
    for cmd in (["summary", str(rec), "--json"], ["analyze", str(rec), "--json"], ["oom", str(rec), "--json"],
                ["report", str(rec), "-o", str(rec.parent / "r.html")],
                ["export", str(rec), "--perfetto", str(rec.parent / "t.json")]):
        code, err, _ = run_cli(cmd)
        assert code == 0, (cmd, err)
