"""Property-based tests of the reader: whatever bytes sit in a recording, it never crashes.

A recording is opened through ``analysis.reader.Recording`` by every command. For any content of a
table file -- random bytes, a real stream cut at any byte, a real stream with bytes flipped -- and
any manifest text, the reader must either return a valid table or raise ``RecordingError`` (which
the CLI prints as one line). Anything else would reach the user as a traceback. A table it returns
must pass Arrow's full validation: the analysis computes on it and a malformed buffer there could
crash the process rather than raise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import RecordingError
from autoglm_trace.tracer.writer import RecordingWriter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _manifest() -> dict:
    return {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "complete": True,
            "start_ns": 1, "end_ns": 10_000, "target": {"mode": "host"}, "collectors": {}}


def _good_recording(path: Path) -> dict[str, bytes]:
    """A real recording written by the writer: three batches of processes and proc_samples."""
    w = RecordingWriter(path, _manifest())
    for b in range(3):
        w.emit("processes", [{"ts_ns": 100 + b, "pid": 10 + b, "ppid": 1, "comm": f"w{b}", "cmdline": "x y",
                              "uid": 0, "cgroup": "/", "start_time_ns": 5, "is_root": b == 0}])
        w.emit("proc_samples", [{"ts_ns": 1000 * b + i, "pid": 10 + i, "cpu_user_s": 0.5 * i, "rss_bytes": 4096 * i,
                                 "state": "S"} for i in range(20)])
        w.flush()
    w.close()
    return {name: (path / f"{name}{schema.TABLE_SUFFIX}").read_bytes() for name in ("processes", "proc_samples")}


class _Good(tuple):
    def __repr__(self) -> str:  # hypothesis prints fixtures of a failing example: keep it short
        return f"<recording at {self[0]}>"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    p = tmp_path_factory.mktemp("good") / "rec"
    return _Good((p, _good_recording(p)))


def _check_table_bytes(good: tuple[Path, dict[str, bytes]], table: str, data: bytes) -> None:
    src, _ = good
    d = Path(tempfile.mkdtemp(prefix="fuzzrec-"))
    try:
        rec_dir = d / "rec"
        shutil.copytree(src, rec_dir)
        (rec_dir / f"{table}{schema.TABLE_SUFFIX}").write_bytes(data)
        rec = Recording(rec_dir)
        for name in rec.table_names:
            try:
                t = rec.table(name)
            except RecordingError as e:
                assert str(e) and "\n" not in str(e)
                continue
            assert isinstance(t, pa.Table)
            assert t.schema.equals(schema.TABLES[name], check_metadata=False)
            t.validate(full=True)
            t.to_pylist()  # every value materialises
        _ = rec.complete, rec.end_ns
    finally:
        shutil.rmtree(d)


@SETTINGS
@given(data=st.binary(max_size=4096), table=st.sampled_from(["processes", "proc_samples"]))
def test_random_bytes_as_table(good, data: bytes, table: str) -> None:
    _check_table_bytes(good, table, data)


@SETTINGS
@given(cut=st.floats(min_value=0, max_value=1, exclude_max=True), table=st.sampled_from(["processes", "proc_samples"]))
def test_truncated_stream(good, cut: float, table: str) -> None:
    data = good[1][table]
    _check_table_bytes(good, table, data[: int(len(data) * cut)])


@SETTINGS
@given(flips=st.lists(st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(1, 255)),
                      min_size=1, max_size=8),
       table=st.sampled_from(["processes", "proc_samples"]))
@example(flips=[(0.11365564941700514, 120)], table="processes")  # once made a field name invalid UTF-8
def test_flipped_bytes(good, flips: list[tuple[float, int]], table: str) -> None:
    data = bytearray(good[1][table])
    for pos, x in flips:
        data[int(len(data) * pos)] ^= x
    _check_table_bytes(good, table, bytes(data))


@SETTINGS
@given(text=st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.dictionaries(st.sampled_from(["format", "schema_version", "complete", "start_ns", "end_ns", "target",
                                     "collectors", "clock"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                              st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                   st.integers(), max_size=3)),
                    max_size=8).map(json.dumps),
))
def test_any_manifest_text(good, text: str) -> None:
    src, _ = good
    d = Path(tempfile.mkdtemp(prefix="fuzzrec-"))
    try:
        rec_dir = d / "rec"
        shutil.copytree(src, rec_dir)
        (rec_dir / schema.MANIFEST_NAME).write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            rec = Recording(rec_dir)
        except RecordingError as e:
            assert str(e) and "\n" not in str(e)
            return
        # Accepted: then every accessor the commands use must work on it.
        for name in rec.table_names:
            rec.table(name)
        _ = rec.complete, rec.start_ns, rec.end_ns, rec.target, rec.collectors, rec.wall_offset_ns
    finally:
        shutil.rmtree(d)
