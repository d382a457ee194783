"""Cost of GPU sampling (NvmlSampler): NVML calls per sample, microseconds per sample per device,
and the recorder CPU of a sampling loop at the default 100 ms interval.

    .venv/bin/python bench/bench_nvml.py                      # simulated NVML (default here)
    .venv/bin/python bench/bench_nvml.py --backend real       # a machine with an NVIDIA driver
    .venv/bin/python bench/bench_nvml.py --seconds 10 --json

With the simulated backend the numbers are the *sampler's* Python cost plus the simulation's (no
driver round trips); on a real GPU each NVML call is an ioctl into the driver, and PCIe throughput
blocks for its 20 ms measurement window, which is why it is read on the slow (1 s) tick only.
Rows are written through a real RecordingWriter into a temporary directory (flushed every second,
as the recorder does), so row building and Arrow encoding are included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoglm_trace import schema
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes import nvml_sim
from autoglm_trace.probes.nvml import NvmlSampler, load_nvml
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer.writer import RecordingWriter


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class FrozenSim(nvml_sim.SimulatedNvml):
    """The simulated driver with its per-call state computation taken out (state computed once
    per device): what is left is the sampler's own Python cost plus a minimal backend."""

    def device_state(self, index: int, t: float) -> dict:
        cache = self.__dict__.setdefault("_frozen", {})
        if index not in cache:
            cache[index] = super().device_state(index, 10.0)
        return dict(cache[index])


def make(tmp: Path, options: dict, nvml=None) -> tuple[NvmlSampler, RecordingWriter]:
    w = RecordingWriter(tmp / "rec", {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION})
    ctx = SessionContext(
        emit_rows=w.emit, emit_columns_fn=w.emit_columns, emit_batch_fn=w.emit_batch,
        target=TargetTree.for_pid(os.getpid()),
    )
    s = NvmlSampler(options, nvml=nvml if nvml is not None else load_nvml())
    s.start(ctx)
    return s, w


def per_sample_cost(tmp: Path, n: int, nvml=None) -> dict:
    """Back-to-back samples (no sleeping): calls and microseconds per sample per device."""
    # Slow fields inline, so the slow tick's cost (PCIe: 20 ms per call) shows in its own number.
    s, w = make(tmp, {"gpu_events": False, "gpu_slow_thread": False}, nvml)
    ndev = len(s.devices)
    fast_us, slow_us, fast_calls, slow_calls = [], [], [], []
    now = time.monotonic_ns()
    for k in range(n):
        now += 100_000_000
        c0, t0 = s.calls, time.perf_counter_ns()
        s.sample(now)
        dt, dc = time.perf_counter_ns() - t0, s.calls - c0
        slow = (k % 10) == 0
        (slow_us if slow else fast_us).append(dt / 1000 / ndev)
        (slow_calls if slow else fast_calls).append(dc / ndev)
        if k % 10 == 9:
            w.flush()
    s.stop()
    w.close()
    return {
        "devices": ndev,
        "backend": s.info()["backend"],
        "calls_per_sample_per_device": {"fast": statistics.median(fast_calls), "slow_tick": statistics.median(slow_calls)},
        "us_per_sample_per_device": {
            "fast_median": round(statistics.median(fast_us), 1),
            "fast_p90": round(sorted(fast_us)[int(len(fast_us) * 0.9)], 1),
            "slow_tick_median": round(statistics.median(slow_us), 1),
        },
        "samples": n,
    }


def loop_cpu(tmp: Path, seconds: float, interval_ms: float, events: bool) -> dict:
    """A recorder-like loop: sample every interval, flush every second; CPU over wall time."""
    s, w = make(tmp, {"gpu_events": events, "gpu_interval_ms": interval_ms})  # slow fields: side thread
    interval = int(interval_ms * 1e6)
    c0, w0 = cpu_s(), time.monotonic()
    nxt = time.monotonic_ns()
    last_flush = w0
    n = 0
    in_sample_ns: list[int] = []
    end = w0 + seconds
    while time.monotonic() < end:
        now = time.monotonic_ns()
        if now < nxt:
            time.sleep((nxt - now) / 1e9)
            continue
        t0 = time.perf_counter_ns()
        s.sample(now)
        in_sample_ns.append(time.perf_counter_ns() - t0)
        n += 1
        nxt += interval
        if time.monotonic() - last_flush >= 1.0:
            w.flush()
            last_flush = time.monotonic()
    wall = time.monotonic() - w0
    cpu = cpu_s() - c0
    s.stop()
    w.close()
    return {
        "seconds": round(wall, 2),
        "interval_ms": interval_ms,
        "events_thread": events,
        "samples": n,
        "cpu_s": round(cpu, 3),
        "cpu_pct_of_one_core": round(100 * cpu / wall, 2),
        "sampling_thread_us_per_sample": {
            "median": round(statistics.median(in_sample_ns) / 1000, 1),
            "max": round(max(in_sample_ns) / 1000, 1),
        },
        "rows": w.rows(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("simulated", "real"), default=None,
                    help="NVML backend (default: AUTOGLM_TRACE_NVML, else simulated)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the CPU loop (default 10)")
    ap.add_argument("--interval-ms", type=float, default=100.0, help="sampling interval (default 100)")
    ap.add_argument("--samples", type=int, default=2000, help="back-to-back samples for the per-sample cost")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    a = ap.parse_args(argv)
    backend = a.backend or os.environ.get("AUTOGLM_TRACE_NVML") or "simulated"
    os.environ["AUTOGLM_TRACE_NVML"] = backend
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = {
            "backend": backend,
            "python": sys.version.split()[0],
            "per_sample": per_sample_cost(tmp / "a", a.samples),
        }
        if backend == "simulated":
            out["per_sample_frozen_sim"] = per_sample_cost(tmp / "f", a.samples, FrozenSim())
        out |= {
            "loop_no_events": loop_cpu(tmp / "b", a.seconds, a.interval_ms, events=False),
            "loop_with_events": loop_cpu(tmp / "c", a.seconds, a.interval_ms, events=True),
        }
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    ps = out["per_sample"]
    print(f"backend: {backend} ({ps['devices']} device(s))")
    print(f"NVML calls per sample per device: {ps['calls_per_sample_per_device']['fast']:g} "
          f"(slow tick, once a second: {ps['calls_per_sample_per_device']['slow_tick']:g})")
    us = ps["us_per_sample_per_device"]
    print(f"us per sample per device: median {us['fast_median']}, p90 {us['fast_p90']}, slow tick {us['slow_tick_median']}")
    if "per_sample_frozen_sim" in out:
        us = out["per_sample_frozen_sim"]["us_per_sample_per_device"]
        print(f"  same with the simulation's state computation frozen (sampler's own cost): "
              f"median {us['fast_median']}, p90 {us['fast_p90']}, slow tick {us['slow_tick_median']}")
    for k in ("loop_no_events", "loop_with_events"):
        r = out[k]
        print(f"{k}: {r['samples']} samples in {r['seconds']} s at {r['interval_ms']:g} ms: "
              f"CPU {r['cpu_s']} s = {r['cpu_pct_of_one_core']}% of one core; sampling thread busy "
              f"{r['sampling_thread_us_per_sample']['median']} us/sample (max {r['sampling_thread_us_per_sample']['max']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
