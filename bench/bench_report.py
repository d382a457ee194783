"""How long `report` and `export --perfetto` take on a large recording, and how big their output is.

Writes a synthetic recording shaped like a long session of a busy server (defaults: 30 minutes at
100 ms, 64 threads in sched, 8 processes, 100 requests/s, 8 GPUs), then times ``write_report`` and
``export_perfetto`` (best of ``--repeat``). Run:

    .venv/bin/python bench/bench_report.py [--minutes 30] [--threads 64] [--rps 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autoglm_trace import schema
from autoglm_trace.analysis.perfetto import export_perfetto
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.report import write_report
from autoglm_trace.tracer.writer import RecordingWriter

NS = 1_000_000_000
T0 = 1_000 * NS


def build(path: Path, minutes: int, threads: int, rps: int, gpus: int, procs: int) -> dict[str, int]:
    n = minutes * 600
    ts = T0 + np.arange(n, dtype=np.int64) * (NS // 10)
    rng = np.random.default_rng(0)
    man = {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "start_ns": T0,
           "end_ns": int(ts[-1]) + NS // 10, "complete": True, "interval_ns": NS // 10,
           "clock": {"monotonic_to_wall_ns": 1_764_000_000 * NS},
           "target": {"mode": "command", "pid": 1000, "comm": "python3", "command": ["python3", "serve.py"]},
           "host": {"hostname": "bench", "cpus": 2}, "collectors": {"proc": {"status": "ok"}}}
    w = RecordingWriter(path, man)
    spike = ((ts - T0) // NS) % 300 < 5  # a 5 s stall every 5 minutes
    # sched: threads x buckets, in chunks to bound memory.
    for k in range(threads):
        w.emit_columns("sched", {
            "ts_ns": ts, "bucket_ns": np.full(n, NS // 10), "pid": np.full(n, 1000 + k % procs),
            "tid": np.full(n, 1000 + k), "comm": [f"worker-{k}"] * n, "oncpu_ns": rng.integers(0, 50_000_000, n),
            "runq_wait_ns": np.where(spike, 30_000_000, rng.integers(0, 500_000, n)),
            "runq_max_ns": rng.integers(0, 5_000_000, n), "offcpu_dstate_ns": rng.integers(0, 1_000_000, n),
            "switches_involuntary": rng.integers(0, 20, n)})
        w.writer("sched").flush()
    for p in range(procs):
        w.emit_columns("proc_samples", {
            "ts_ns": ts, "pid": np.full(n, 1000 + p), "cpu_user_s": np.arange(n) * 0.05,
            "cpu_system_s": np.arange(n) * 0.01, "rss_bytes": (1 << 30) + np.arange(n, dtype=np.int64) * 1000,
            "ctx_involuntary": np.cumsum(rng.integers(0, 50, n)), "minflt": np.cumsum(rng.integers(0, 500, n)),
            "majflt": np.cumsum(rng.integers(0, 2, n)), "io_read_bytes": np.cumsum(rng.integers(0, 1 << 20, n))})
    w.emit_columns("faults", {"ts_ns": ts, "bucket_ns": np.full(n, NS // 10), "pid": np.full(n, 1000),
                              "faults": rng.integers(0, 2000, n), "major": rng.integers(0, 3, n)})
    w.emit_columns("host_samples", {"ts_ns": ts, "mem_available_bytes": np.full(n, 8 << 30),
                                    "psi_mem_some_us": np.cumsum(rng.integers(0, 1000, n)),
                                    "psi_cpu_some_us": np.cumsum(rng.integers(0, 10_000, n))})
    for g in range(gpus):
        w.emit_columns("gpu_devices", {"ts_ns": ts, "gpu": np.full(n, g), "mem_used_bytes": np.full(n, 60 << 30),
                                       "util_gpu_pct": rng.uniform(50, 100, n), "power_mw": rng.integers(2e5, 7e5, n),
                                       "clocks_event_reasons": np.zeros(n, np.uint64)})
    m = minutes * 60 * rps
    start = T0 + np.sort(rng.integers(0, minutes * 60 * NS, m))
    lat = rng.integers(50_000_000, 150_000_000, m)
    w.emit_columns("spans", {"ts_ns": start, "end_ns": start + lat, "name": ["POST /v1/completions"] * m,
                             "source": ["api"] * m, "pid": np.full(m, 1000), "tid": np.full(m, 1000 + threads),
                             "ok": np.ones(m, bool), "output_tokens": np.full(m, 200)})
    rows = w.rows()
    w.close()
    return rows


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--rps", type=int, default=100)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--with-diagnosis", action="store_true", help="also run analysis.diagnosis in the report")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        t = time.perf_counter()
        rows = build(d / "rec", a.minutes, a.threads, a.rps, a.gpus, a.procs)
        build_s = time.perf_counter() - t
        rec_bytes = sum(f.stat().st_size for f in (d / "rec").iterdir())
        # Without diagnosis the report times only this module (plots + tables); with it, the whole thing.
        diag = None if a.with_diagnosis else {"incidents": [], "findings": [], "not_checked": []}

        def report():
            write_report(Recording(d / "rec"), d / "r.html", diagnosis=diag, oom=None if a.with_diagnosis else {"kills": []})

        def export():
            return export_perfetto(Recording(d / "rec"), d / "t.json")

        rep_s = best(report, a.repeat)
        exp_s = best(export, a.repeat)
        st = export()
        gz_s = best(lambda: export_perfetto(Recording(d / "rec"), d / "t.json.gz"), 1)
        out = {
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
            "rows": rows, "recording_MB": round(rec_bytes / 1e6, 1), "build_s": round(build_s, 2),
            "report_s": round(rep_s, 2), "report_MB": round((d / "r.html").stat().st_size / 1e6, 2),
            "export_s": round(exp_s, 2), "export_events": st["events"],
            "export_events_per_s": round(st["events"] / exp_s), "export_MB": round(st["bytes"] / 1e6, 1),
            "export_gz_s": round(gz_s, 2), "export_gz_MB": round((d / "t.json.gz").stat().st_size / 1e6, 1),
            "max_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
