"""Cost of the Prometheus exporter and the live view at a busy server's data rate.

Synthetic batches shaped like one 100 ms tick of a large target: ``sched`` rows for THREADS threads
(each with a 32-bucket histogram), ``proc_samples`` for PROCS processes, SPANS spans, ``block_io``
and ``preemptions`` rows. Measures the exporter's per-tick ingest, one scrape (generate_latest),
and one live-view frame (compute + render to text) over a ring holding 30 s of those ticks.

    .venv/bin/python bench/live_exporter.py [--threads 200] [--procs 50] [--spans 100] [--ticks 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from prometheus_client import generate_latest
from rich.console import Console

from autoglm_trace.analysis.live import LiveRecording
from autoglm_trace.sinks import columns_to_batch
from autoglm_trace.tracer.exporter import PrometheusExporter
from autoglm_trace.tracer.live_view import compute, render
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.ring import RingSink

NS = 1_000_000_000
TICK = NS // 10


def tick_batches(i: int, t0: int, a: argparse.Namespace, rng: np.random.Generator) -> list[tuple[str, object]]:
    ts = t0 + i * TICK
    th = a.threads
    pids = 1000 + (np.arange(th) % a.procs)
    hist = rng.integers(0, 20, size=(th, 32)).astype(np.uint32)
    hist[:, 20:] = 0
    sched = columns_to_batch("sched", {
        "ts_ns": [ts] * th, "bucket_ns": [TICK] * th, "pid": pids, "tid": 1000 + np.arange(th),
        "comm": ["worker"] * th, "switches_voluntary": rng.integers(0, 50, th),
        "switches_involuntary": rng.integers(0, 10, th), "oncpu_ns": rng.integers(0, TICK, th),
        "runq_count": hist.sum(1), "runq_wait_ns": rng.integers(0, 10**7, th), "runq_max_ns": rng.integers(0, 10**7, th),
        "runq_hist": list(hist), "offcpu_sleep_ns": rng.integers(0, TICK, th), "offcpu_dstate_ns": rng.integers(0, 10**6, th),
        "offcpu_preempted_ns": rng.integers(0, 10**6, th), "migrations": rng.integers(0, 5, th)})
    p = a.procs
    proc = columns_to_batch("proc_samples", {
        "ts_ns": [ts] * p, "pid": 1000 + np.arange(p), "cpu_user_s": [i * 0.01] * p, "cpu_system_s": [i * 0.001] * p,
        "rss_bytes": [1 << 30] * p, "ctx_voluntary": [i * 10] * p, "ctx_involuntary": [i] * p,
        "minflt": [i * 100] * p, "majflt": [0] * p})
    n = a.spans
    start = ts - rng.integers(10**6, 10**9, n)
    spans = columns_to_batch("spans", {"ts_ns": start, "end_ns": [ts] * n, "name": ["generate"] * n,
                                       "source": ["api"] * n, "ok": [True] * n})
    blk = columns_to_batch("block_io", {
        "ts_ns": [ts] * 4, "bucket_ns": [TICK] * 4, "pid": [1000, 1001, 0, 5], "in_target": [True, True, False, False],
        "dev": ["8:0"] * 4, "op": ["R", "W", "W", "R"], "count": [10] * 4, "bytes": [40960] * 4,
        "lat_sum_ns": [10**6] * 4, "lat_max_ns": [10**5] * 4, "lat_hist": list(hist[:4])})
    pre = columns_to_batch("preemptions", {
        "ts_ns": [ts] * 10, "bucket_ns": [TICK] * 10, "pid": [1000] * 10, "preemptor_pid": np.arange(10),
        "preemptor_comm": [f"task{k}" for k in range(10)], "preemptor_in_target": [False] * 10, "count": [3] * 10,
        "wait_ns": [10**5] * 10})
    return [("proc_samples", proc), ("sched", sched), ("spans", spans), ("block_io", blk), ("preemptions", pre)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--procs", type=int, default=50)
    ap.add_argument("--spans", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=300)
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    t0 = time.monotonic_ns() - a.ticks * TICK
    ticks = [tick_batches(i, t0, a, rng) for i in range(a.ticks)]
    exp = PrometheusExporter()
    ring = RingSink(duration_ns=30 * NS, max_bytes=256 << 20)
    ingest, ring_ns = [], []
    for batches in ticks:
        s = time.perf_counter_ns()
        for table, b in batches:
            exp.emit_batch(table, b)
        ingest.append(time.perf_counter_ns() - s)
        s = time.perf_counter_ns()
        for table, b in batches:
            ring.emit_batch(table, b)
        ring_ns.append(time.perf_counter_ns() - s)
    scrape = []
    for _ in range(20):
        s = time.perf_counter_ns()
        body = generate_latest(exp.registry)
        scrape.append(time.perf_counter_ns() - s)
    m = new_manifest({"mode": "pid", "pid": 1000, "comm": "server"}, {}, TICK)
    m["start_ns"] = t0
    live = LiveRecording(ring, m)
    now = t0 + a.ticks * TICK
    frames, comp = [], []
    console = Console(width=160, file=open("/dev/null", "w"), color_system=None)  # noqa: SIM115
    for _ in range(10):
        s = time.perf_counter_ns()
        compute(live, now, 10.0)
        comp.append(time.perf_counter_ns() - s)
        s = time.perf_counter_ns()
        console.print(render(live, now, 10.0))
        frames.append(time.perf_counter_ns() - s)
    ms = lambda v: f"{np.median(v) / 1e6:.2f} ms (p95 {np.percentile(v, 95) / 1e6:.2f})"  # noqa: E731
    rows = sum(b.num_rows for _, b in ticks[0])
    print(f"per 100 ms tick: {rows} rows ({a.threads} sched, {a.procs} proc, {a.spans} spans, 4 block_io, 10 preemptions)")
    print(f"exporter ingest per tick: {ms(ingest)}  -> {np.median(ingest) / TICK * 100:.2f}% of one core")
    print(f"ring ingest per tick:     {ms(ring_ns)}")
    lines = body.count(b"\n")
    print(f"scrape (generate_latest): {ms(scrape)}  body {len(body) / 1024:.0f} KiB, {lines} lines")
    print(f"live frame compute:       {ms(comp)}  (ring: {ring.stats()['rows']} rows)")
    print(f"live frame compute+render:{ms(frames)}  -> at 2 Hz {np.median(frames) * 2 / NS * 100:.1f}% of one core")


if __name__ == "__main__":
    main()
