"""The live view rendered to text from sources whose answers are known.

The fake live source is the real read path: tables written with RecordingWriter into a directory and
read back through analysis.reader.Recording (the same API LiveRecording offers), and, separately, a
real RingSink wrapped in LiveRecording. Expected numbers are computed here from the rows we wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from autoglm_trace import schema
from autoglm_trace.analysis.live import LiveRecording
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.sinks import rows_to_batch
from autoglm_trace.tracer.live_view import (
    LiveView,
    compute,
    fmt_s,
    log2_quantile,
    render,
)
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.ring import RingSink
from autoglm_trace.tracer.writer import RecordingWriter

NS = 1_000_000_000
T0 = 1_000 * NS  # recording start (monotonic)
NOW = T0 + 30 * NS  # the frame's "now": 30 s in, window = the last 10 s
GiB = 1 << 30


def _hist(bucket: int, n: int) -> list[int]:
    h = [0] * schema.LOG2_BUCKETS
    h[bucket] = n
    return h


def _tables() -> dict[str, list[dict]]:
    w0 = NOW - 10 * NS  # window start
    spans = [  # 100 requests in the window, 1..100 ms; 3 failed
        {"ts_ns": w0 + i * 90_000_000, "end_ns": w0 + i * 90_000_000 + (i + 1) * 1_000_000, "name": "generate",
         "source": "api", "ok": i not in (5, 6, 7)}
        for i in range(100)
    ]
    # Spans that ended before the window must not count (a 9 s outlier).
    spans.append({"ts_ns": T0, "end_ns": T0 + 9 * NS, "name": "generate", "source": "api", "ok": True})
    sched = [  # ten 1 s buckets in the window: 50 involuntary switches each, run-queue waits in [512, 1024) us
        {"ts_ns": w0 + i * NS, "bucket_ns": NS, "pid": 100, "tid": 100, "comm": "server",
         "switches_voluntary": 20, "switches_involuntary": 50, "oncpu_ns": 500_000_000,
         "runq_count": 40, "runq_wait_ns": 40 * 700_000, "runq_max_ns": 3_000_000 if i == 4 else 1_000_000,
         "runq_hist": _hist(10, 40), "offcpu_dstate_ns": 20_000_000}
        for i in range(10)
    ]
    sched.append({"ts_ns": T0, "bucket_ns": NS, "pid": 100, "tid": 100, "comm": "server",
                  "switches_involuntary": 100_000, "runq_hist": _hist(20, 1000), "runq_max_ns": 900_000_000})
    preempt = [
        {"ts_ns": w0 + NS, "bucket_ns": NS, "pid": 100, "preemptor_pid": 777, "preemptor_comm": "noisy-neighbor",
         "preemptor_in_target": False, "count": 300, "wait_ns": 50_000_000},
        {"ts_ns": w0 + 2 * NS, "bucket_ns": NS, "pid": 100, "preemptor_pid": 777,
         "preemptor_comm": "noisy-neighbor", "preemptor_in_target": False, "count": 200, "wait_ns": 30_000_000},
        {"ts_ns": w0 + NS, "bucket_ns": NS, "pid": 100, "preemptor_pid": 15, "preemptor_comm": "kworker/0:1",
         "preemptor_in_target": False, "count": 10, "wait_ns": 1_000_000},
    ]
    procs = [
        {"ts_ns": T0, "pid": 100, "ppid": 1, "comm": "server", "is_root": True},
        {"ts_ns": T0, "pid": 101, "ppid": 100, "comm": "worker"},
    ]
    samples = []
    for i in range(11):  # the worker grows 10 MiB/s
        t = w0 + i * NS
        samples.append({"ts_ns": t, "pid": 100, "rss_bytes": GiB, "minflt": 1000 + 100 * i, "majflt": 0,
                        "ctx_voluntary": 0, "ctx_involuntary": 0})
        samples.append({"ts_ns": t, "pid": 101, "rss_bytes": GiB // 2 + i * 10 * (1 << 20),
                        "minflt": 0, "majflt": 5 * i, "ctx_voluntary": 0, "ctx_involuntary": 0})
    gpu = [{"ts_ns": NOW - NS, "gpu": 0, "mem_total_bytes": 80 * GiB, "mem_used_bytes": 30 * GiB,
            "util_gpu_pct": 97.0, "sm_clock_mhz": 1410, "power_mw": 350_000, "power_limit_mw": 400_000,
            "temp_c": 71, "clocks_event_reasons": 0x4},
           {"ts_ns": NOW - 5 * NS, "gpu": 0, "mem_used_bytes": 1 * GiB, "util_gpu_pct": 3.0}]
    alerts = [{"ts_ns": NOW - 2 * NS, "kind": "gpu_memory_growth", "subject": "GPU0", "eta_s": 42.0,
               "message": "GPU0 memory full in ~42 s"},
              {"ts_ns": NOW - 20 * NS, "kind": "gpu_memory_growth", "subject": "GPU0", "eta_s": 400.0,
               "message": "older"}]
    probe_stats = [{"ts_ns": NOW - 3 * NS, "probe": "sched", "events": 10_000, "lost": 7, "reason": "perf_buffer"},
                   {"ts_ns": T0, "probe": "sched", "events": 10, "lost": 1, "reason": "perf_buffer"}]
    oom = [{"ts_ns": NOW - 4 * NS, "pid": 4242, "comm": "hog", "in_target": False}]
    reclaim = [{"ts_ns": NOW - 3 * NS + i, "pid": 101, "tid": 101, "comm": "worker", "in_target": True,
                "kind": "direct", "duration_ns": 2_000_000 * (i + 1)} for i in range(3)]
    reclaim.append({"ts_ns": NOW - 3 * NS, "pid": 50, "comm": "kswapd0", "kind": "kswapd_wake", "duration_ns": 0})
    block = [{"ts_ns": w0 + i * NS, "bucket_ns": NS, "pid": 100, "comm": "server", "in_target": True, "dev": "8:0",
              "op": "R", "count": 10, "bytes": 10 * 4096, "lat_sum_ns": 10 * 300_000, "lat_max_ns": 2_000_000,
              "lat_hist": _hist(9, 10)} for i in range(10)]
    return {"spans": spans, "sched": sched, "preemptions": preempt, "processes": procs, "proc_samples": samples,
            "gpu_devices": gpu, "alerts": alerts, "probe_stats": probe_stats, "oom_kills": oom, "reclaim": reclaim,
            "block_io": block}


def _manifest() -> dict:
    m = new_manifest({"mode": "command", "pid": 100, "comm": "server"}, {}, 100_000_000)
    m["start_ns"] = T0
    m["collectors"] = {"proc": {"status": "ok"}, "kernel": {"status": "ok"}, "gpu": {"status": "ok"}}
    return m


@pytest.fixture
def recording(tmp_path) -> Recording:
    w = RecordingWriter(tmp_path / "rec", _manifest())
    for table, rows in _tables().items():
        w.emit(table, rows)
    w.close()
    return Recording(tmp_path / "rec")


def _text(source, **kw) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(source, NOW, 10.0, **kw))
    return console.export_text()


def test_log2_quantile_interpolates_inside_the_bucket():
    h = np.zeros(schema.LOG2_BUCKETS)
    h[10] = 100  # [512, 1024) us
    assert log2_quantile(h, 0.5) == pytest.approx(768e-6)
    assert log2_quantile(h, 1.0) == pytest.approx(1024e-6)
    h[0] = 100  # zeros
    assert log2_quantile(h, 0.25) == pytest.approx(0.5e-6)
    assert log2_quantile(np.zeros(4), 0.5) is None


def test_frame_numbers_match_the_rows(recording):
    f = compute(recording, NOW, 10.0)
    assert f.span_s == pytest.approx(10.0)
    lat = np.arange(1, 101) / 1e3
    (s,) = f.spans
    assert s["name"] == "generate" and s["count"] == 100 and s["errors"] == 3
    assert s["p50"] == pytest.approx(np.quantile(lat, 0.5))
    assert s["p99"] == pytest.approx(np.quantile(lat, 0.99))
    assert s["max"] == pytest.approx(0.1)
    assert f.runq_p50_s == pytest.approx(768e-6)  # the old 1 s bucket is outside the window
    assert f.runq_max_s == pytest.approx(3e-3)
    assert f.switches_invol_per_s == pytest.approx(50.0)
    assert f.switches_source == "kernel"
    assert f.dstate_frac == pytest.approx(0.02)
    assert [p["comm"] for p in f.preemptors] == ["noisy-neighbor", "kworker/0:1"]
    assert f.preemptors[0]["count"] == 500 and f.preemptors[0]["wait_s"] == pytest.approx(0.08)
    assert f.rss_total == GiB + GiB // 2 + 100 * (1 << 20)
    assert f.processes[0]["comm"] == "server"
    assert f.processes[1]["growth"] == pytest.approx(10 * (1 << 20))
    assert f.faults_source == "/proc"
    assert f.faults_per_s == pytest.approx(100 + 5)
    assert f.major_faults_per_s == pytest.approx(5)
    assert f.reclaim_stalls == 3 and f.reclaim_ms == pytest.approx(12.0) and f.kswapd_wakes == 1
    assert f.oom_kills == 1 and f.last_oom.startswith("hog (4242)")
    assert f.io["target"]["iops"] == pytest.approx(10.0)
    assert f.gpus[0]["used"] == 30 * GiB and f.gpus[0]["throttle"] == ["SW power cap"]
    assert [(e["subject"], e["eta_s"]) for e in f.etas] == [("GPU0", 42.0)]
    assert f.lost_total == 8 and f.lost == [{"probe": "sched", "lost": 7, "events": 10_000}]


def test_rendered_text_shows_the_panels(recording):
    text = _text(recording)
    for needle in ("pid 100 (server)", "Request latency", "generate", fmt_s(np.quantile(np.arange(1, 101) / 1e3, 0.99)),
                   "768 us", "50/s", "noisy-neighbor", "777", "kworker/0:1", "30.0 GiB / 80.0 GiB", "97%",
                   "1410 MHz", "350/400 W", "SW power cap", "time to full GPU0", "42 s", "hog (4242)",
                   "lost 7", "1.6 GiB", "worker", "10.0 MiB/s"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert text.index("noisy-neighbor") < text.index("kworker/0:1")
    assert "400 s" not in text  # the superseded alert


def test_live_recording_over_a_ring_renders_the_same(recording):
    ring = RingSink(duration_ns=60 * NS)
    for table, rows in _tables().items():
        rows = sorted(rows, key=lambda r: r["ts_ns"])
        ring.emit_batch(table, rows_to_batch(table, rows))
    live = LiveRecording(ring, _manifest())
    a, b = compute(live, NOW, 10.0), compute(recording, NOW, 10.0)
    assert a.spans == b.spans and a.preemptors == b.preemptors and a.gpus == b.gpus
    assert a.switches_invol_per_s == b.switches_invol_per_s and a.rss_total == b.rss_total


def test_empty_source_renders_placeholders(tmp_path):
    w = RecordingWriter(tmp_path / "empty", _manifest())
    w.close()
    text = _text(Recording(tmp_path / "empty"))
    assert "no spans in the window" in text and "no GPU samples" in text and "Block I/O" in text


def test_live_view_driver_binds_the_ring_on_the_first_tick():
    ring = RingSink(duration_ns=60 * NS)
    console = Console(record=True, width=120, color_system=None, force_terminal=False)
    view = LiveView(ring=ring, console=console)
    assert "starting" in str(view.frame())

    class Rec:
        manifest = _manifest()
        started_ns = T0
        ctx = None

    view.update(Rec())
    for table, rows in _tables().items():
        ring.emit_batch(table, rows_to_batch(table, sorted(rows, key=lambda r: r["ts_ns"])))
    console.print(view.frame())
    assert view.last_error is None and view.frames == 1
    assert "Request latency" in console.export_text()


def test_narrow_terminal_stacks_the_panels(recording):
    console = Console(record=True, width=80, color_system=None)
    console.print(render(recording, NOW, 10.0))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    # One panel per row: CPU above Memory, and no value is cut short.
    assert text.index("CPU / scheduler") < text.index("Memory")
    for needle in ("noisy-neighbor", "777", "30.0 GiB / 80.0 GiB", "350/400 W", "SW power", "10.0 MiB/s"):
        assert needle in text, needle
