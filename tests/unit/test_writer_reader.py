import json
import os

import pyarrow as pa
import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording, read_stream_file
from autoglm_trace.errors import NewerSchemaError, RecordingError, WriteError
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.writer import RecordingWriter


def _manifest():
    return new_manifest({"mode": "pid", "pid": 1, "comm": "init", "command": ["init"]}, {}, 100_000_000)


def _proc_row(ts, pid=10, vol=5):
    return {"ts_ns": ts, "pid": pid, "cpu_user_s": 0.5, "cpu_system_s": 0.1, "rss_bytes": 1 << 20,
            "ctx_voluntary": vol, "ctx_involuntary": 1, "minflt": 100, "majflt": 0, "state": "S"}


def test_round_trip_rows_columns_and_batches(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    w.emit("proc_samples", [_proc_row(1), _proc_row(2, vol=7)])
    w.flush()
    w.emit_columns("host_cpu", {"ts_ns": [1, 1], "cpu": [0, 1], "user_s": [1.0, 2.0]})
    batch = pa.RecordBatch.from_pylist([_proc_row(3, vol=9)], schema=schema.TABLES["proc_samples"])
    w.emit_batch("proc_samples", batch)
    w.close()
    w.manifest["complete"] = True
    w.write_manifest()

    rec = Recording(tmp_path / "rec")
    t = rec.table("proc_samples")
    assert t.column("ctx_voluntary").to_pylist() == [5, 7, 9]
    assert t.schema.equals(schema.TABLES["proc_samples"], check_metadata=False)
    cpu = rec.table("host_cpu")
    assert cpu.column("idle_s").null_count == 2  # absent columns become nulls
    assert rec.complete and not rec.truncated
    assert rec.rows() == {"host_cpu": 2, "proc_samples": 3}
    # An unrecorded table reads empty with the right schema, and has() says it was not recorded.
    assert rec.table("sched").num_rows == 0 and not rec.has("sched")


def test_files_open_with_plain_pyarrow(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    w.emit("proc_samples", [_proc_row(1)])
    w.close()
    with pa.ipc.open_stream(tmp_path / "rec" / "proc_samples.arrow") as r:
        t = r.read_all()
    assert t.num_rows == 1
    assert t.schema.metadata[b"autoglm_trace.schema_version"] == str(schema.SCHEMA_VERSION).encode()


def test_truncated_tail_keeps_whole_batches(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    for i in range(3):
        w.emit("proc_samples", [_proc_row(i, vol=i)])
        w.flush()
    w.close()
    p = tmp_path / "rec" / "proc_samples.arrow"
    data = p.read_bytes()
    # Cut into the middle of the last batch (and drop the end-of-stream marker).
    p.write_bytes(data[: len(data) - 8 - 60])
    rec = Recording(tmp_path / "rec")
    t = rec.table("proc_samples")
    assert t.column("ctx_voluntary").to_pylist() == [0, 1]
    assert "proc_samples" in rec.truncated
    assert not rec.complete


def test_scan_reads_the_rows_table_reads_without_keeping_them(tmp_path):
    """scan / count give table()'s rows -- the truncated tail and implausible rows left out the same
    way -- one batch at a time, and keep nothing (the recorder's exit summary reads this way)."""
    w = RecordingWriter(tmp_path / "rec", _manifest())
    for i in range(4):
        w.emit("proc_samples", [_proc_row(i, vol=i), _proc_row(-5 - i, pid=11)])  # ts < 0: implausible
        w.flush()
    w.close()
    p = tmp_path / "rec" / "proc_samples.arrow"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 8 - 60])  # the last batch cut
    scanned = Recording(tmp_path / "rec")
    got = scanned.scan("proc_samples", ["pid", "ctx_voluntary"])
    assert got.column_names == ["pid", "ctx_voluntary"]
    assert got.column("ctx_voluntary").to_pylist() == [0, 1, 2]
    assert scanned.count("proc_samples") == 3 and scanned.rows() == {"proc_samples": 3}
    assert scanned.truncated == {"proc_samples": "damaged after 3 whole batch(es)"}
    assert scanned.implausible == {"proc_samples": 3}
    assert not scanned._cache  # nothing kept
    whole = Recording(tmp_path / "rec")
    t = whole.table("proc_samples")
    assert t.select(["pid", "ctx_voluntary"]).equals(got)
    assert whole.truncated == scanned.truncated and whole.implausible == scanned.implausible
    assert scanned.scan("sched", ["tid"]).num_rows == 0  # not recorded: empty, right column


def test_summary_keeps_no_table(tmp_path):
    from autoglm_trace.analysis.summary import summarize

    w = RecordingWriter(tmp_path / "rec", _manifest())
    w.emit("proc_samples", [_proc_row(1), _proc_row(2, vol=7)])
    w.close()
    w.manifest["complete"] = True
    w.write_manifest()
    rec = Recording(tmp_path / "rec")
    s = summarize(rec)
    assert s["tables"] == {"proc_samples": 2}
    assert s["totals"]["ctx_switches_voluntary"]["value"] == 7
    assert not rec._cache


def test_unflushed_file_without_schema_reads_empty(tmp_path):
    p = tmp_path / "x.arrow"
    p.write_bytes(b"")
    r = read_stream_file(p, schema.TABLES["faults"])
    assert r.truncated and r.table.num_rows == 0


def test_buffer_bound_forces_a_flush(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    tw = w.writer("proc_samples")
    tw.max_buffered_rows = 10
    w.emit("proc_samples", [_proc_row(i) for i in range(25)])
    assert tw.pending_rows == 0 and tw.rows_written == 25
    w.close()


def test_refuses_non_empty_directory_and_symlinks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(WriteError, match="not empty"):
        RecordingWriter(tmp_path / "full", _manifest())
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(WriteError, match="symbolic link"):
        RecordingWriter(tmp_path / "link", _manifest())


def test_planted_symlink_for_a_table_is_not_followed(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    os.symlink(victim, tmp_path / "rec" / "faults.arrow")
    with pytest.raises(WriteError, match="exists|symbolic"):
        w.writer("faults")
    assert victim.read_text() == "do not touch"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such recording"),
        (lambda p: p.mkdir(), "empty"),
        (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "not an autoglm-trace recording"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{nope")), "unreadable"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text(json.dumps({"format": "other"}))), "not an autoglm-trace"),
        (lambda p: p.write_text("file"), "not a recording directory"),
    ],
)
def test_bad_recordings_raise_recording_error(tmp_path, setup, message):
    p = tmp_path / "r"
    setup(p)
    with pytest.raises(RecordingError, match=message):
        Recording(p)


def test_newer_schema_is_refused(tmp_path):
    m = _manifest()
    m["schema_version"] = schema.SCHEMA_VERSION + 1
    RecordingWriter(tmp_path / "rec", m).close()
    with pytest.raises(NewerSchemaError, match="upgrade"):
        Recording(tmp_path / "rec")


def test_newer_schema_table_file_is_refused(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    w.close()
    newer = schema.TABLES["faults"].with_metadata({"autoglm_trace.schema_version": str(schema.SCHEMA_VERSION + 1)})
    with pa.ipc.new_stream(str(tmp_path / "rec" / "faults.arrow"), newer) as s:
        s.write_table(newer.empty_table())
    with pytest.raises(NewerSchemaError):
        Recording(tmp_path / "rec").table("faults")


def test_garbage_table_file_is_a_recording_error(tmp_path):
    w = RecordingWriter(tmp_path / "rec", _manifest())
    w.close()
    (tmp_path / "rec" / "faults.arrow").write_bytes(os.urandom(300))
    with pytest.raises(RecordingError, match="not an Arrow IPC stream"):
        Recording(tmp_path / "rec").table("faults")
