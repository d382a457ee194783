"""Seeded fuzzing of whole recordings through every reading command.

A small but complete recording (kernel, GPU, spans, OOM tables) is damaged -- the manifest mutated
(wrong types, huge integers, deep nesting, large strings, keys removed) or a table file replaced
(random bytes, cut short, bytes flipped, swapped with another table, a link to /dev/zero, a FIFO, a
directory, empty, removed) -- and one of analyze / oom / summary / diff / report / export runs on it in
a forked child with a deadline. Every run must end in a correct result (exit 0; JSON output parses) or
one ``autoglm-trace: error:`` line with the exit code of a bad recording -- never a traceback, never a
hang. Seeded (``derandomize``) so a failure reproduces; about a minute in all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.synthetic import Scenario, write_recording
from tests.unit.test_hostile_reader import run_cli

DEADLINE_S = 20
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

COMMANDS = {
    "summary": lambda r, o: ["summary", r, "--json"],
    "analyze": lambda r, o: ["analyze", r, "--json"],
    "analyze-text": lambda r, o: ["analyze", r, "-v"],
    "oom": lambda r, o: ["oom", r, "--json"],
    "diff": lambda r, o: ["diff", r, r, "--json"],
    "report": lambda r, o: ["report", r, "-o", str(o / "r.html")],
    "export": lambda r, o: ["export", r, "--perfetto", str(o / "t.json")],
}


class _Base(str):
    def __repr__(self) -> str:
        return "<base recording>"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> _Base:
    p = tmp_path_factory.mktemp("fuzzbase") / "rec"
    write_recording(p, Scenario(kind="memory", duration_s=5, seed=5))
    return _Base(str(p))


def _check(base: str, damage: Any, command: str) -> None:
    d = Path(tempfile.mkdtemp(prefix="autoglm-fuzz-"))
    try:
        rec = d / "rec"
        shutil.copytree(base, rec)
        damage(rec)
        argv = COMMANDS[command](str(rec), d)
        code, err, out = run_cli(argv, DEADLINE_S)
        assert "Traceback" not in err, (argv, err)
        if code == 0:
            if "--json" in argv:
                json.loads(out)  # a correct result: the documented JSON
        else:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("autoglm-trace: error:")]
            assert len(errors) == 1 and code in (3, 4), (argv, code, err)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# Manifest mutations ------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.integers(-5, 5),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_values = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                       max_leaves=12)
_FIELDS = ["schema_version", "format", "start_ns", "end_ns", "duration_s", "interval_ns", "complete", "stop_reason",
           "error", "notes", "tables", "stats", "options", "tool", "recorder", "host", "clock", "target",
           "collectors", "trigger", "flight", "target.pid", "target.comm", "target.command", "target.mode",
           "target.exit_code", "target.signal", "target.rusage", "target.stderr_tail", "clock.monotonic_to_wall_ns",
           "host.cpus", "collectors.kernel", "collectors.kernel.status", "collectors.kernel.tables",
           "collectors.kernel.skipped", "collectors.gpu.reason", "recorder.pid"]


def _set(m: dict, dotted: str, value: Any, delete: bool) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        nxt = m.get(p)
        if not isinstance(nxt, dict):
            nxt = m[p] = {}
        m = nxt
    if delete:
        m.pop(last, None)
    else:
        m[last] = value


_manifest_edit = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_FIELDS), _values, st.booleans()),
    st.tuples(st.just("deep"), st.sampled_from(_FIELDS), st.integers(20, 3000), st.booleans()),
    st.tuples(st.just("big"), st.sampled_from(_FIELDS), st.integers(1 << 10, 3 << 20), st.booleans()),
)


@SETTINGS
@given(edits=st.lists(_manifest_edit, min_size=1, max_size=4), command=st.sampled_from(sorted(COMMANDS)))
def test_fuzzed_manifest(base: _Base, edits: list, command: str) -> None:
    def damage(rec: Path) -> None:
        m = json.loads((rec / "manifest.json").read_text())
        deep: list[str] = []
        for kind, field, arg, flag in edits:
            if kind == "set":
                _set(m, field, arg, delete=flag)
            elif kind == "deep":  # spliced in as text: json.dumps itself cannot nest this deep
                _set(m, field, f"@@deep{len(deep)}@@", False)
                deep.append(("[" * arg + "1" + "]" * arg) if flag else ('{"k":' * arg + "1" + "}" * arg))
            else:
                _set(m, field, "x" * arg if flag else list(range(arg // 8)), False)
        text = json.dumps(m)
        for i, d in enumerate(deep):
            text = text.replace(f'"@@deep{i}@@"', d)
        (rec / "manifest.json").write_text(text)

    _check(base, damage, command)


# Table-file mutations ----------------------------------------------------------------------------
_TABLES = ["proc_samples", "processes", "sched", "preemptions", "spans", "oom_kills", "gpu_devices", "faults",
           "reclaim", "probe_stats", "host_samples", "block_io"]
_table_edit = st.one_of(
    st.tuples(st.just("bytes"), st.sampled_from(_TABLES), st.binary(max_size=2048)),
    st.tuples(st.just("cut"), st.sampled_from(_TABLES), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.sampled_from(_TABLES),
              st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6)),
    st.tuples(st.just("swap"), st.sampled_from(_TABLES), st.sampled_from(_TABLES)),
    st.tuples(st.just("node"), st.sampled_from(_TABLES),
              st.sampled_from(["link-devzero", "link-devnull", "fifo", "dir", "empty", "remove", "link-self"])),
)


@SETTINGS
@given(edits=st.lists(_table_edit, min_size=1, max_size=3), command=st.sampled_from(sorted(COMMANDS)))
def test_fuzzed_tables(base: _Base, edits: list, command: str) -> None:
    def damage(rec: Path) -> None:
        for kind, table, arg in edits:
            p = rec / f"{table}.arrow"
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            if kind in ("bytes", "cut", "flip", "node") and (p.exists() or p.is_symlink()):
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                else:
                    p.unlink()
            if kind == "bytes":
                p.write_bytes(arg)
            elif kind == "cut":
                p.write_bytes(data[: int(len(data) * arg)])
            elif kind == "flip":
                b = bytearray(data) or bytearray(b"\0")
                for pos, x in arg:
                    b[int(len(b) * pos)] ^= x
                p.write_bytes(bytes(b))
            elif kind == "swap":
                q = rec / f"{arg}.arrow"
                if p.exists() and q.exists() and p != q:
                    tmp = rec / "swap.tmp"
                    os.rename(p, tmp)
                    os.rename(q, p)
                    os.rename(tmp, q)
            elif arg == "link-devzero":
                p.symlink_to("/dev/zero")
            elif arg == "link-devnull":
                p.symlink_to("/dev/null")
            elif arg == "link-self":
                p.symlink_to(p.name)
            elif arg == "fifo":
                os.mkfifo(p)
            elif arg == "dir":
                p.mkdir()
            elif arg == "empty":
                p.write_bytes(b"")

    _check(base, damage, command)
