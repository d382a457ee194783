"""RingSink (tracer/ring.py) and LiveRecording (analysis/live.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.live import LiveRecording
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import RecordingError
from autoglm_trace.sinks import rows_to_batch
from autoglm_trace.tracer.fanout import FanOut
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.ring import RingSink
from autoglm_trace.tracer.writer import RecordingWriter

S = 1_000_000_000


def _samples(ts: list[int], pid: int = 7, rss: int = 1000) -> pa.RecordBatch:
    return rows_to_batch("proc_samples", [{"ts_ns": t, "pid": pid, "rss_bytes": rss + i} for i, t in enumerate(ts)])


def _host(ts: int) -> pa.RecordBatch:
    return rows_to_batch("host_samples", [{"ts_ns": ts, "mem_total_bytes": 100, "mem_available_bytes": 50}])


def test_time_eviction_keeps_last_duration():
    ring = RingSink(duration_ns=10 * S, max_bytes=1 << 30)
    # One batch per 100 ms for 60 s.
    for i in range(600):
        ring.emit_batch("proc_samples", _samples([i * S // 10]))
    t = ring.table("proc_samples")
    ts = t.column("ts_ns").to_pylist()
    newest = 599 * S // 10
    assert ts == sorted(ts) and ts[-1] == newest
    # Everything newer than newest - duration is kept ...
    assert min(ts) <= newest - 10 * S
    # ... and nothing much older than one chunk beyond the duration.
    assert min(ts) >= newest - 10 * S - ring.chunk_ns - S // 10
    st = ring.stats()
    assert st["tables"]["proc_samples"]["rows"] == len(ts)
    assert st["tables"]["proc_samples"]["evicted_rows"] == 600 - len(ts)
    assert st["tables"]["proc_samples"]["rows_in"] == 600
    assert st["dropped_rows"] == 0
    assert st["bytes"] == ring.nbytes > 0
    # Chunking bounds the number of held objects whatever the batch count.
    assert st["tables"]["proc_samples"]["chunks"] <= 70


def test_time_eviction_across_tables_uses_newest_data_of_any_table():
    ring = RingSink(duration_ns=5 * S, max_bytes=1 << 30, chunk_ns=S // 10)
    ring.emit_batch("host_samples", _host(1 * S))
    ring.emit_batch("proc_samples", _samples([2 * S]))
    # A table that stops receiving data still ages out once other tables move on.
    ring.emit_batch("proc_samples", _samples([20 * S]))
    assert ring.table("host_samples").num_rows == 0
    assert ring.table("proc_samples").column("ts_ns").to_pylist() == [20 * S]
    assert ring.stats()["tables"]["host_samples"]["evicted_rows"] == 1
    assert ring.has("host_samples")  # seen, even though aged out
    assert not ring.has("sched")


def test_byte_limit_evicts_oldest_across_tables_and_reports_drops():
    limit = 256 << 10
    ring = RingSink(duration_ns=3600 * S, max_bytes=limit, chunk_ns=S)
    rows_per_batch = 500
    sent = 0
    for i in range(400):
        base = i * S
        ring.emit_batch("proc_samples", _samples([base + k for k in range(rows_per_batch)]))
        ring.emit_batch("host_samples", _host(base + 1))
        sent += rows_per_batch
        assert ring.nbytes <= limit
    st = ring.stats()
    ps = st["tables"]["proc_samples"]
    assert ps["dropped_rows"] > 0 and ps["dropped_bytes"] > 0
    assert ps["rows"] + ps["dropped_rows"] + ps["evicted_rows"] == sent
    assert st["dropped_rows"] >= ps["dropped_rows"]
    assert ring.nbytes >= 0.8 * limit
    # What stays is the newest data, contiguous up to the last row sent.
    ts = ring.table("proc_samples").column("ts_ns").to_pylist()
    assert ts[-1] == 399 * S + rows_per_batch - 1
    assert ts == sorted(ts)
    assert ring.table("host_samples").column("ts_ns").to_pylist()[-1] == 399 * S + 1


def test_ring_memory_is_bounded_under_a_flood():
    """Independent ground truth: the Arrow memory pool, not the ring's own accounting."""
    limit = 8 << 20
    ring = RingSink(duration_ns=3600 * S, max_bytes=limit)
    before = pa.total_allocated_bytes()
    peak = 0
    sent_bytes = 0
    n = 2000
    for i in range(300):  # ~300 batches x 2000 rows x ~100 B/row ~ 60 MB pushed through an 8 MB ring
        ts = pa.array(range(i * n, (i + 1) * n), pa.int64())
        cols = {f.name: (ts if f.name == "ts_ns" else pa.array([i] * n, pa.int32()) if f.name == "pid"
                         else pa.nulls(n, f.type) if f.type == pa.string() else pa.array([i] * n).cast(f.type))
                for f in schema.TABLES["proc_samples"]}
        b = pa.RecordBatch.from_arrays([cols[f.name] for f in schema.TABLES["proc_samples"]],
                                       schema=schema.TABLES["proc_samples"])
        sent_bytes += b.nbytes
        ring.emit_batch("proc_samples", b)
        del b, cols, ts
        peak = max(peak, pa.total_allocated_bytes() - before)
    assert sent_bytes > 6 * limit
    assert ring.nbytes <= limit
    # The limit evicts in small steps: the ring stays nearly full rather than emptying.
    assert ring.nbytes >= 0.8 * limit
    # Pool usage stays within the limit plus one open chunk's worth of batches and their merge.
    assert peak <= 2.5 * limit, (peak, limit)
    st = ring.stats()
    assert st["dropped_rows"] > 0
    ring.clear()
    assert pa.total_allocated_bytes() - before <= 1 << 20


def test_snapshot_filters_and_is_consistent():
    ring = RingSink(duration_ns=100 * S, max_bytes=1 << 30, chunk_ns=S)
    for i in range(50):
        ring.emit_batch("proc_samples", _samples([i * S // 2]))
        ring.emit_batch("host_samples", _host(i * S // 2))
    snap = ring.snapshot(since_ns=10 * S)
    assert set(snap) == {"proc_samples", "host_samples"}
    ts = snap["proc_samples"].column("ts_ns").to_pylist()
    assert min(ts) == 10 * S and max(ts) == 49 * S // 2 and len(ts) == 30
    assert snap["host_samples"].num_rows == 30
    assert snap["proc_samples"].schema.equals(schema.TABLES["proc_samples"])
    both = ring.snapshot(since_ns=5 * S, until_ns=6 * S)
    assert both["proc_samples"].column("ts_ns").to_pylist() == [5 * S, 11 * S // 2, 6 * S]
    # A snapshot does not change when the ring moves on.
    ring.emit_batch("proc_samples", _samples([30 * S]))
    assert snap["proc_samples"].num_rows == 30
    assert ring.table("sched").schema.equals(schema.TABLES["sched"]) and ring.table("sched").num_rows == 0


def test_tables_and_casts_are_accepted():
    ring = RingSink(duration_ns=100 * S)
    t = pa.table({"ts_ns": pa.array([1, 2, 3], pa.int64()), "pid": pa.array([1, 1, 1], pa.int32())})
    full = pa.Table.from_arrays(
        [t.column(f.name) if f.name in t.column_names else pa.nulls(3, f.type) for f in schema.TABLES["proc_samples"]],
        schema=schema.TABLES["proc_samples"])
    ring.emit_batch("proc_samples", pa.concat_tables([full.slice(0, 1), full.slice(1)]))
    assert ring.table("proc_samples").column("ts_ns").to_pylist() == [1, 2, 3]
    with pytest.raises(KeyError):
        ring.emit_batch("no_such_table", rows_to_batch("host_samples", [{"ts_ns": 1}]))


def test_future_timestamp_does_not_flush_the_ring():
    import time

    ring = RingSink(duration_ns=10 * S)
    now = time.monotonic_ns()
    ring.emit_batch("proc_samples", _samples([now]))
    ring.emit_batch("proc_samples", _samples([now + 3600 * S]))  # a collector bug
    ring.emit_batch("proc_samples", _samples([now + S]))
    assert ring.table("proc_samples").num_rows == 3


def test_thread_safety_under_concurrent_emit_and_read():
    ring = RingSink(duration_ns=5 * S, max_bytes=2 << 20, chunk_ns=S // 10)
    errors: list[BaseException] = []

    def writer(pid: int) -> None:
        try:
            for i in range(400):
                ring.emit_batch("proc_samples", _samples([i * S // 50 + j for j in range(50)], pid=pid))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(100):
                snap = ring.snapshot()
                t = snap.get("proc_samples")
                if t is not None:
                    assert t.schema.equals(schema.TABLES["proc_samples"])
                ring.stats()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in (1, 2)] + [threading.Thread(target=reader)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    st = ring.stats()
    ps = st["tables"]["proc_samples"]
    assert ps["rows_in"] == 2 * 400 * 50
    assert ps["rows"] + ps["evicted_rows"] + ps["dropped_rows"] == ps["rows_in"]
    assert ps["rows"] == ring.table("proc_samples").num_rows


def _fill(sink_like, base: int) -> None:
    fan = FanOut(None, [sink_like]) if not isinstance(sink_like, FanOut) else sink_like
    for i in range(20):
        fan.emit("proc_samples", [{"ts_ns": base + i * S // 10, "pid": 42, "rss_bytes": 1000 * i}])
        fan.emit("host_samples", [{"ts_ns": base + i * S // 10, "mem_total_bytes": 10, "mem_available_bytes": 5}])
    fan.emit("oom_kills", [{"ts_ns": base + S, "pid": 42, "comm": "victim"}])


def test_live_recording_reads_like_a_recording(tmp_path: Path):
    manifest = new_manifest({"mode": "host", "pid": None}, {"interval_ms": 100}, 100_000_000)
    base = manifest["start_ns"]
    ring = RingSink(duration_ns=60 * S)
    writer = RecordingWriter(tmp_path / "rec", manifest)
    fan = FanOut(writer, [ring])
    _fill(fan, base)
    writer.close()
    writer.write_manifest()
    rec = Recording(tmp_path / "rec")
    live = LiveRecording(ring, manifest)
    assert live.table_names == rec.table_names == ["host_samples", "oom_kills", "proc_samples"]
    for name in rec.table_names + ["sched", "spans"]:
        assert live.table(name).equals(rec.table(name)), name
        assert live.has(name) == rec.has(name)
    assert live.rows() == rec.rows()
    assert live.wall_offset_ns == rec.wall_offset_ns
    assert live.to_wall_ns(5) == rec.to_wall_ns(5)
    assert live.target == rec.target and live.collectors == rec.collectors
    assert live.truncated == {} and live.manifest is manifest
    assert live.start_ns == base
    assert live.end_ns == base + 19 * S // 10  # no end yet: the newest data
    with pytest.raises(RecordingError):
        live.table("nope")
    # Cached until the table changes; then fresh.
    t1 = live.table("proc_samples")
    assert live.table("proc_samples") is t1
    frozen = live.freeze()
    ring.emit_batch("proc_samples", _samples([base + 3 * S], pid=42))
    t2 = live.table("proc_samples")
    assert t2.num_rows == t1.num_rows + 1
    assert frozen.table("proc_samples").num_rows == t1.num_rows
    assert frozen.end_ns == base + 19 * S // 10 and live.end_ns == base + 3 * S
    manifest["end_ns"] = base + 4 * S
    assert live.end_ns == base + 4 * S


def test_live_recording_runs_the_summary():
    """An analysis function written for Recording runs unchanged on live data."""
    from autoglm_trace.analysis.summary import summarize

    manifest = new_manifest({"mode": "host", "pid": None}, {"interval_ms": 100}, 100_000_000)
    ring = RingSink(duration_ns=60 * S)
    _fill(ring, manifest["start_ns"])
    out = summarize(LiveRecording(ring, manifest))
    assert isinstance(out, dict)
    assert str(out.get("path")) == "<live>"


def test_since_cursor_returns_exactly_the_rows_that_arrived_after_it():
    ring = RingSink(duration_ns=100 * S, max_bytes=1 << 30, chunk_ns=S)
    for i in range(10):
        ring.emit_batch("proc_samples", _samples([i * S // 4, i * S // 4 + 1], pid=1))
    cur = ring.cursor()
    assert cur == {"proc_samples": 20}
    # Late rows (timestamps older than what the ring holds) and several batches, some into the
    # chunk that is still open and compacted meanwhile.
    ring.emit_batch("proc_samples", _samples([5], pid=2))
    for i in range(70):
        ring.emit_batch("proc_samples", _samples([3 * S + i], pid=3))
    ring.emit_batch("host_samples", _host(4 * S))
    new, cur2 = ring.since(cur)
    assert new["proc_samples"].column("pid").to_pylist() == [2] + [3] * 70
    assert new["proc_samples"].column("ts_ns").to_pylist() == [5] + [3 * S + i for i in range(70)]
    assert new["host_samples"].num_rows == 1
    assert cur2 == {"proc_samples": 91, "host_samples": 1}
    again, cur3 = ring.since(cur2)
    assert all(t.num_rows == 0 for t in again.values()) and cur3 == cur2
    only, c4 = ring.since({}, tables=["host_samples", "sched"])
    assert set(only) == {"host_samples"} and c4 == {"host_samples": 1}
    # Rows evicted before they were read are simply not there.
    ring2 = RingSink(duration_ns=2 * S, max_bytes=1 << 30, chunk_ns=S // 10)
    ring2.emit_batch("proc_samples", _samples([0]))
    c = ring2.cursor()
    ring2.emit_batch("proc_samples", _samples([S // 2]))
    ring2.emit_batch("proc_samples", _samples([10 * S]))
    got, _ = ring2.since(c)
    assert got["proc_samples"].column("ts_ns").to_pylist() == [10 * S]


FLOOD = r"""
import json, sys
import numpy as np
from autoglm_trace.tracer.ring import RingSink
from autoglm_trace.sinks import columns_to_batch, rows_to_batch

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

S = 10**9
limit = int(sys.argv[1])
ring = RingSink(3600 * S, limit)
n = 400
r0 = rss()
trace = []
for tick in range(9000):  # 15 simulated minutes at 100 ms, ~4000 sched rows/s: ~8x the limit
    ts = tick * S // 10
    cols = {"ts_ns": np.full(n, ts), "bucket_ns": np.full(n, S // 10),
            "pid": np.random.randint(1, 500, n).astype(np.int32), "tid": np.random.randint(1, 5000, n).astype(np.int32),
            "comm": ["w%d" % (i % 50) for i in range(n)], "oncpu_ns": np.arange(n), "runq_hist": [list(range(12))] * n}
    ring.emit_batch("sched", columns_to_batch("sched", cols))
    ring.emit_batch("host_samples", rows_to_batch("host_samples", [{"ts_ns": ts, "mem_total_bytes": 1}]))
    if tick % 500 == 0:
        trace.append(rss() - r0)
st = ring.stats()
print(json.dumps({"trace": trace, "bytes": st["bytes"], "dropped": st["dropped_rows"]}))
"""


@pytest.mark.slow
def test_process_memory_stays_bounded_over_a_long_high_rate_run():
    """Ground truth is the process's RSS, not the ring's own accounting: allocator retention and
    fragmentation included, memory plateaus near the limit instead of growing with the run."""
    import json
    import subprocess
    import sys

    limit = 32 << 20
    r = subprocess.run([sys.executable, "-c", FLOOD, str(limit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    trace = out["trace"]
    assert out["bytes"] <= limit and out["dropped"] > 0
    settled = trace[len(trace) // 3:]
    assert max(trace) <= 2.5 * limit + (16 << 20), trace
    # No growth once full: the last third is not above the middle third.
    assert max(settled[len(settled) // 2:]) <= max(settled[: len(settled) // 2]) + (8 << 20), trace
