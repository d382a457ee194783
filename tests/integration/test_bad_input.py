"""Bad recordings and bad inputs given to every command: a clear one-line error, never a traceback.

One real recording is made (the installed CLI recording a real process), then damaged copies are
handed to every command that reads recordings: missing, a plain file, empty, no manifest, manifest
garbage / not ours / a newer schema version, a table of random bytes, a table cut mid-batch, an
empty table file, a table written by a newer schema. Each command runs in-process through
``cli.main`` (what ``cli.entry`` exits with: an exception escaping it is a traceback for the user),
and a sample of cases also runs as a real subprocess to check stderr end to end.

Expected exit codes: 3 (RecordingError) for what is not a readable recording, 4 for a newer schema,
0 where the damage is one the reader recovers from (a truncated tail: the recording reads as
incomplete). Collectors fed garbage while recording (a scrape endpoint that sends junk or hangs, a
latency log of junk) must cost bounded time and leave the recording going.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow as pa
import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.tracer import cli

PY = sys.executable


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "autoglm-trace"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "autoglm_trace.tracer.cli"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real recording of a small busy process (kernel probes too when we are root)."""
    out = tmp_path_factory.mktemp("base") / "rec"
    prog = "import time\nx=[bytearray(4096) for _ in range(5000)]\nt=time.time()\nwhile time.time()-t<1.0: sum(range(1000))"
    r = subprocess.run([*_cli(), "record", "-q", "--json", "--no-gpu", "-o", str(out), "--", PY, "-c", prog],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    rec = Recording(out)
    assert rec.complete and rec.table("proc_samples").num_rows > 0
    return out


def _copy(base: Path, tmp: Path, name: str = "rec") -> Path:
    dst = tmp / name
    shutil.copytree(base, dst)
    return dst


# Every command that reads a recording, as argv builders (output paths inside tmp).
COMMANDS: dict[str, Callable[[str, Path], list[str]]] = {
    "summary": lambda rec, tmp: ["summary", rec, "--json"],
    "analyze": lambda rec, tmp: ["analyze", rec, "--json"],
    "oom": lambda rec, tmp: ["oom", rec],
    "diff": lambda rec, tmp: ["diff", rec, rec],
    "report": lambda rec, tmp: ["report", rec, "-o", str(tmp / "r.html")],
    "export": lambda rec, tmp: ["export", rec, "--perfetto", str(tmp / "t.json")],
}


def _available() -> list[str]:
    names = set(cli._commands())
    return [c for c in COMMANDS if c in names]


def _run_inprocess(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse --help paths only; a real run never exits this way
            rc = int(e.code or 0)
        except BaseException as e:  # noqa: BLE001 - this is the traceback a user would see
            raise AssertionError(f"{argv[0]} raised {type(e).__name__}: {e}") from e
    return rc, err.getvalue()


def _assert_clear_error(rc: int, stderr: str, code: int, argv: list[str]) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc == code, f"{argv}: exit {rc}, expected {code}; stderr: {stderr!r}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("autoglm-trace: error:"), f"{argv}: {stderr!r}"


# Damage, and the exit code every command must give for it ----------------------------------------
def _missing(rec: Path) -> Path:
    shutil.rmtree(rec)
    return rec


def _plain_file(rec: Path) -> Path:
    shutil.rmtree(rec)
    rec.write_text("not a recording\n")
    return rec


def _empty_dir(rec: Path) -> Path:
    shutil.rmtree(rec)
    rec.mkdir()
    return rec


def _no_manifest(rec: Path) -> Path:
    (rec / schema.MANIFEST_NAME).unlink()
    return rec


def _manifest_garbage(rec: Path) -> Path:
    (rec / schema.MANIFEST_NAME).write_bytes(random.Random(1).randbytes(300))
    return rec


def _manifest_cut(rec: Path) -> Path:
    m = (rec / schema.MANIFEST_NAME).read_bytes()
    (rec / schema.MANIFEST_NAME).write_bytes(m[: len(m) // 2])
    return rec


def _manifest_not_ours(rec: Path) -> Path:
    m = json.loads((rec / schema.MANIFEST_NAME).read_text())
    m["format"] = "something-else"
    (rec / schema.MANIFEST_NAME).write_text(json.dumps(m))
    return rec


def _manifest_list(rec: Path) -> Path:
    (rec / schema.MANIFEST_NAME).write_text("[1, 2, 3]")
    return rec


def _manifest_newer(rec: Path) -> Path:
    m = json.loads((rec / schema.MANIFEST_NAME).read_text())
    m["schema_version"] = schema.SCHEMA_VERSION + 1
    (rec / schema.MANIFEST_NAME).write_text(json.dumps(m))
    return rec


def _random_table(rec: Path) -> Path:
    (rec / "proc_samples.arrow").write_bytes(random.Random(2).randbytes(5000))
    return rec


def _newer_table(rec: Path) -> Path:
    """proc_samples rewritten as schema v+1 (as a future autoglm-trace would write it)."""
    path = rec / "proc_samples.arrow"
    t = pa.ipc.open_stream(path.read_bytes()).read_all()
    md = dict(t.schema.metadata or {})
    key = next((k for k in md if k.endswith(b"schema_version")), b"autoglm_trace.schema_version")
    md[key] = str(schema.SCHEMA_VERSION + 1).encode()
    t = t.replace_schema_metadata(md)
    path.unlink()
    with pa.ipc.new_stream(str(path), t.schema) as w:
        w.write_table(t)
    return rec


FATAL: dict[str, tuple[Callable[[Path], Path], int]] = {
    "missing": (_missing, 3),
    "plain-file": (_plain_file, 3),
    "empty-dir": (_empty_dir, 3),
    "no-manifest": (_no_manifest, 3),
    "manifest-garbage": (_manifest_garbage, 3),
    "manifest-cut": (_manifest_cut, 3),
    "manifest-not-ours": (_manifest_not_ours, 3),
    "manifest-list": (_manifest_list, 3),
    "manifest-newer": (_manifest_newer, 4),
}


@pytest.mark.parametrize("damage", sorted(FATAL))
def test_unreadable_recordings_are_one_line_errors(base: Path, tmp_path: Path, damage: str) -> None:
    fn, code = FATAL[damage]
    rec = fn(_copy(base, tmp_path))
    for c in _available():
        argv = COMMANDS[c](str(rec), tmp_path)
        rc, err = _run_inprocess(argv)
        _assert_clear_error(rc, err, code, argv)


@pytest.mark.parametrize("damage", ["random-table", "newer-table"])
def test_damaged_table_files(base: Path, tmp_path: Path, damage: str) -> None:
    rec = {"random-table": _random_table, "newer-table": _newer_table}[damage](_copy(base, tmp_path))
    code = 3 if damage == "random-table" else 4
    # summary reads every table: it must refuse; the others may not read this table at all.
    for c in _available():
        argv = COMMANDS[c](str(rec), tmp_path)
        rc, err = _run_inprocess(argv)
        if c == "summary" or rc != 0:
            _assert_clear_error(rc, err, code, argv)


def test_truncated_and_empty_tables_read_as_incomplete(base: Path, tmp_path: Path) -> None:
    rec = _copy(base, tmp_path)
    names = [p.name for p in rec.glob("*.arrow")]
    assert "proc_samples.arrow" in names
    cut_rows = {}
    for i, n in enumerate(sorted(names)):
        p = rec / n
        data = p.read_bytes()
        if i % 3 == 0:
            p.write_bytes(b"")  # created, died before the schema message
        else:
            full = pa.ipc.open_stream(data).read_all().num_rows
            p.write_bytes(data[: max(1, len(data) - 37)])  # cut inside the last batch
            cut_rows[n[:-6]] = full
    r = Recording(rec)
    for name, full in cut_rows.items():
        assert r.table(name).num_rows <= full
        assert name in r.truncated
    assert not r.complete
    for c in _available():
        argv = COMMANDS[c](str(rec), tmp_path)
        rc, err = _run_inprocess(argv)
        assert "Traceback" not in err
        assert rc == 0, f"{argv}: exit {rc}: {err!r}"
    rc, _ = _run_inprocess(["summary", str(rec), "--json"])
    assert rc == 0


def test_subprocess_end_to_end(base: Path, tmp_path: Path, cli: list[str]) -> None:
    """The same contract through the installed entry point (real stderr, real exit code)."""
    bad = _manifest_garbage(_copy(base, tmp_path, "bad"))
    newer = _manifest_newer(_copy(base, tmp_path, "newer"))
    for c in _available():
        for rec, code in ((bad, 3), (newer, 4)):
            argv = COMMANDS[c](str(rec), tmp_path)
            r = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=60)
            _assert_clear_error(r.returncode, r.stderr, code, argv)


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    cases = [
        ["record"],                                      # no target
        ["record", "-p", "1", "--", "true"],             # two targets
        ["record", "-i", "0", "--", "true"],
        ["record", "-d", "-5", "--", "true"],
        ["record", "--bogus", "--", "true"],
        ["summary"],
        ["summary", str(tmp_path), "--no-such-flag"],
    ]
    for argv in cases:
        rc, err = _run_inprocess(argv)
        _assert_clear_error(rc, err, 2, argv)
    rc, err = _run_inprocess(["no-such-command"])
    assert rc == 2 and "Traceback" not in err


def test_latency_log_missing_or_not_a_file(tmp_path: Path) -> None:
    rc, err = _run_inprocess(["record", "--latency-log", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r"),
                              "--", "true"])
    _assert_clear_error(rc, err, 2, ["record"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening a FIFO with no writer would block the recorder forever
    t0 = time.monotonic()
    rc, err = _run_inprocess(["record", "-q", "--no-bpf", "--no-gpu", "--latency-log", str(fifo),
                              "-o", str(tmp_path / "r2"), "--", "true"])
    assert time.monotonic() - t0 < 30
    _assert_clear_error(rc, err, 2, ["record"])


# Garbage from live sources while recording --------------------------------------------------
class _Junk(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = random.Random(3).randbytes(20000)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def test_scrape_garbage_and_hanging_endpoints_keep_recording(tmp_path: Path, cli: list[str]) -> None:
    junk = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Junk)
    threading.Thread(target=junk.serve_forever, daemon=True).start()
    # A server that accepts connections and never answers.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    junk_url, hang_url = (f"127.0.0.1:{junk.server_address[1]}", f"127.0.0.1:{hang.getsockname()[1]}")
    log = tmp_path / "lat.jsonl"
    log.write_bytes(b'{"latency_ms": 12, "ts": 1}\nnot json at all\n\x00\xff\xfe garbage\n{"latency_ms": "x"}\n{"trunc')
    out = tmp_path / "rec"
    try:
        t0 = time.monotonic()
        r = subprocess.run(
            [*cli, "record", "-q", "--json", "--no-gpu", "--no-bpf", "-o", str(out),
             "--scrape", f"http://{junk_url}/metrics", "--scrape", f"http://{hang_url}/metrics",
             "--scrape-interval", "0.5",
             "--latency-log", str(log), "--", PY, "-c", "import time; time.sleep(4)"],
            capture_output=True, text=True, env=_env(), timeout=60)
        took = time.monotonic() - t0
    finally:
        junk.shutdown()
        hang.close()
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert took < 25, f"recording of a 4 s target took {took:.1f} s"
    rec = Recording(out)
    assert rec.complete and rec.manifest["stop_reason"] == "target exited"
    # The sampler kept going through every bad scrape: samples cover the target's 4 s.
    ts = rec.table("proc_samples").column("ts_ns").to_pylist()
    assert (max(ts) - min(ts)) / 1e9 > 3.0
    # The failures are said, not silent: one note per bad endpoint naming what went wrong, and the
    # failed scrapes counted as lost in probe_stats.
    notes = rec.manifest.get("notes") or []
    assert any(junk_url in n and "parse" in n for n in notes), notes
    assert any(hang_url in n and "timeout" in n for n in notes), notes
    assert any("latency log" in n for n in notes), notes
    ps = rec.table("probe_stats")
    lost = sum(x or 0 for p, x in zip(ps.column("probe").to_pylist(), ps.column("lost").to_pylist())
               if p and p.startswith("scrape"))
    assert lost >= 4, ps.to_pylist()
