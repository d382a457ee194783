"""A synthetic but realistic recording for the report / Perfetto tests (and the README screenshot).

60 s of an inference server (pid 1000) with a worker (pid 1001, comm chosen by the test -- e.g. a
malicious ``<script>`` string), 100 ms sampling and buckets. Between 30 s and 35 s a CPU hog
(``stress-ng``, pid 4242, outside the target) preempts the server: run-queue wait and request
latency spike. At 50 s the worker is OOM-killed. GPU memory grows steadily. Every number is
derived from a few constants so tests can check the plots and the export against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoglm_trace import schema
from autoglm_trace.tracer.writer import RecordingWriter

NS = 1_000_000_000
T0 = 5_000 * NS  # monotonic start
WALL_OFFSET = 1_764_000_000 * NS  # 2025-11-24T16:00:00Z (start: 17:23:20Z)
DURATION_S = 60
BUCKET = NS // 10
SPIKE = (30 * NS, 35 * NS)  # relative to T0
OOM_AT = 50 * NS
ROOT, WORKER, HOG = 1000, 1001, 4242
EVIL = "<script>alert(1)</script>"


def manifest(tables_ok: bool = True, **extra) -> dict:
    m = {
        "format": schema.FORMAT_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "start_ns": T0,
        "end_ns": T0 + DURATION_S * NS,
        "complete": True,
        "clock": {"monotonic_to_wall_ns": WALL_OFFSET},
        "start_time": "2025-11-24T17:23:20.000+00:00",
        "duration_s": float(DURATION_S),
        "tool": {"name": "autoglm-trace", "version": "0.1.0"},
        "target": {"mode": "command", "pid": ROOT, "comm": "python3",
                   "command": ["python3", "server.py", "--port", "8000"], "user": 1000},
        "host": {"hostname": "gpu-node-7", "kernel": "6.18.0", "machine": "x86_64", "cpus": 2,
                 "mem_total_bytes": 24 << 30},
        "interval_ns": BUCKET,
        "notes": [],
        "stop_reason": "finished",
        "collectors": {
            "proc": {"status": "ok", "tables": ["processes", "proc_samples", "host_samples", "host_cpu"]},
            "kernel": ({"status": "ok", "tables": ["sched", "preemptions", "faults", "block_io", "reclaim",
                                                   "oom_kills", "proc_events"]}
                       if tables_ok else {"status": "unavailable",
                                          "reason": "not running as root: kernel probes need root (run with sudo)"}),
            "gpu": ({"status": "ok", "tables": ["gpu_devices", "gpu_processes", "gpu_events"]} if tables_ok
                    else {"status": "unavailable", "reason": "no NVIDIA driver (libnvidia-ml.so.1 not found)"}),
            "spans": {"status": "ok", "tables": ["spans"]},
        },
    }
    m.update(extra)
    return m


def _grid() -> np.ndarray:
    return T0 + np.arange(DURATION_S * 10, dtype=np.int64) * BUCKET


def _in_spike(ts: np.ndarray) -> np.ndarray:
    rel = ts - T0
    return (rel >= SPIKE[0]) & (rel < SPIKE[1])


def write_recording(path: Path, worker_comm: str = EVIL, full: bool = True) -> Path:
    """Write the recording; ``full=False`` writes only the /proc tables (no BPF, no GPU, no spans)."""
    w = RecordingWriter(path, manifest(tables_ok=full))
    ts = _grid()
    n = ts.size
    rng = np.random.default_rng(7)
    alive_worker = (ts - T0) < OOM_AT

    w.emit("processes", [
        {"ts_ns": T0, "pid": ROOT, "ppid": 1, "comm": "python3", "cmdline": "python3 server.py --port 8000",
         "uid": 1000, "is_root": True},
        {"ts_ns": T0, "pid": WORKER, "ppid": ROOT, "comm": worker_comm, "cmdline": f"{worker_comm} --worker",
         "uid": 1000, "is_root": False},
    ])
    # proc_samples: cumulative counters for both processes; the worker's RSS grows until the OOM.
    for pid, alive, rss0, growth in [(ROOT, np.ones(n, bool), 2 << 30, 0), (WORKER, alive_worker, 1 << 30, 40 << 20)]:
        k = int(alive.sum())
        t = ts[:k]
        w.emit_columns("proc_samples", {
            "ts_ns": t, "pid": np.full(k, pid, np.int32),
            "cpu_user_s": np.arange(k) * 0.08, "cpu_system_s": np.arange(k) * 0.01,
            "rss_bytes": rss0 + np.arange(k, dtype=np.int64) * (growth // 10),
            "ctx_involuntary": np.cumsum(np.where(_in_spike(t), 40, 2)),
            "ctx_voluntary": np.arange(k) * 50,
            "minflt": np.arange(k) * 100, "majflt": np.arange(k) // 10,
            "io_read_bytes": np.arange(k, dtype=np.int64) * 4096, "io_write_bytes": np.zeros(k, np.int64),
            "num_threads": np.full(k, 8, np.int32), "state": ["S"] * k, "vms_bytes": np.full(k, 8 << 30),
            "shared_bytes": np.full(k, 64 << 20), "num_fds": np.full(k, 40, np.int32),
        })
    mem_total = 24 << 30
    w.emit_columns("host_samples", {
        "ts_ns": ts, "mem_total_bytes": np.full(n, mem_total, np.int64),
        "mem_available_bytes": (12 << 30) - np.minimum(np.arange(n), 500) * (16 << 20),
        "psi_mem_some_us": np.cumsum(np.where((ts - T0) > 45 * NS, 30_000, 100)),
        "psi_cpu_some_us": np.cumsum(np.where(_in_spike(ts), 60_000, 1000)),
        "psi_io_some_us": np.cumsum(np.full(n, 500)), "psi_io_full_us": np.cumsum(np.full(n, 100)),
        "psi_mem_full_us": np.cumsum(np.where((ts - T0) > 45 * NS, 10_000, 0)),
        "mem_free_bytes": np.full(n, 1 << 30), "mem_cached_bytes": np.full(n, 4 << 30),
        "pgscan_direct": np.zeros(n, np.int64), "ctxt": np.arange(n) * 5000,
        "load5": np.full(n, 1.2), "load15": np.full(n, 1.0),
        "pgmajfault": np.arange(n) * 3, "allocstall": np.zeros(n, np.int64),
        "swap_total_bytes": np.zeros(n, np.int64), "swap_free_bytes": np.zeros(n, np.int64),
        "load1": np.full(n, 1.5),
    })
    cores = np.repeat(np.arange(2), n)
    tt = np.tile(ts, 2)
    step = np.tile(np.where(_in_spike(ts), 0.1, 0.04), 2)
    busy = np.concatenate([np.cumsum(step[:n]), np.cumsum(step[n:])])
    w.emit_columns("host_cpu", {"ts_ns": tt, "cpu": cores, "user_s": busy, "system_s": busy * 0.1,
                                "idle_s": np.arange(2 * n) * 0.05, "iowait_s": np.zeros(2 * n),
                                "irq_s": np.zeros(2 * n), "steal_s": np.zeros(2 * n)})
    if full:
        _write_bpf_and_gpu(w, ts, rng, worker_comm, alive_worker)
    w.manifest["tables"] = w.rows()
    w.close()
    w.write_manifest()
    return Path(path)


def _write_bpf_and_gpu(w, ts, rng, worker_comm, alive_worker) -> None:
    n = ts.size
    spike = _in_spike(ts)
    # sched: two threads of the server and one of the worker, every bucket.
    rows_ts, rows_tid, rows_pid, rows_comm = [], [], [], []
    for pid, tid, comm, alive in [(ROOT, ROOT, "python3", np.ones(n, bool)), (ROOT, 1002, "uvicorn-loop", np.ones(n, bool)),
                                  (WORKER, WORKER, worker_comm, alive_worker)]:
        k = int(alive.sum())
        rows_ts.append(ts[:k])
        rows_tid.append(np.full(k, tid))
        rows_pid.append(np.full(k, pid))
        rows_comm += [comm] * k
    sts = np.concatenate(rows_ts)
    m = sts.size
    sp = _in_spike(sts)
    runq_wait = np.where(sp, 40_000_000, 200_000).astype(np.int64)  # 40 ms of each 100 ms bucket
    w.emit_columns("sched", {
        "ts_ns": sts, "bucket_ns": np.full(m, BUCKET), "pid": np.concatenate(rows_pid),
        "tid": np.concatenate(rows_tid), "comm": rows_comm,
        "switches_voluntary": np.full(m, 20), "switches_involuntary": np.where(sp, 30, 1),
        "oncpu_ns": np.where(sp, 20_000_000, 50_000_000), "runq_count": np.full(m, 20),
        "runq_wait_ns": runq_wait, "runq_max_ns": np.where(sp, 9_000_000, 50_000),
        "offcpu_sleep_ns": np.full(m, 30_000_000), "offcpu_dstate_ns": np.full(m, 1_000_000),
        "offcpu_preempted_ns": runq_wait, "migrations": np.zeros(m, np.int64),
    })
    hog_ts = ts[spike]
    k = hog_ts.size
    w.emit_columns("preemptions", {
        "ts_ns": hog_ts, "bucket_ns": np.full(k, BUCKET), "pid": np.full(k, ROOT), "preemptor_pid": np.full(k, HOG),
        "preemptor_tid": np.full(k, HOG), "preemptor_comm": ["stress-ng"] * k,
        "preemptor_in_target": np.zeros(k, bool), "cpu": np.zeros(k, np.int16), "count": np.full(k, 60),
        "wait_ns": np.full(k, 80_000_000),
    })
    w.emit_columns("faults", {"ts_ns": ts, "bucket_ns": np.full(n, BUCKET), "pid": np.full(n, ROOT),
                              "tid": np.full(n, ROOT), "faults": np.full(n, 120), "major": np.where(spike, 5, 0)})
    w.emit_columns("block_io", {
        "ts_ns": np.concatenate([ts, ts]), "bucket_ns": np.full(2 * n, BUCKET),
        "pid": np.r_[np.full(n, ROOT), np.full(n, 777)], "comm": ["python3"] * n + ["dd"] * n,
        "in_target": np.r_[np.ones(n, bool), np.zeros(n, bool)], "dev": ["8:0"] * (2 * n), "op": ["R"] * (2 * n),
        "count": np.full(2 * n, 4), "bytes": np.r_[np.full(n, 65536), np.full(n, 4 << 20)],
        "lat_sum_ns": np.full(2 * n, 4 * 300_000), "lat_max_ns": np.full(2 * n, 500_000),
    })
    w.emit("oom_kills", [{
        "ts_ns": T0 + OOM_AT, "pid": WORKER, "comm": worker_comm, "uid": 1000, "in_target": True,
        "total_vm_bytes": 8 << 30, "anon_rss_bytes": 3 << 30, "file_rss_bytes": 1 << 20, "shmem_rss_bytes": 0,
        "oom_score_adj": 0, "memcg": "/autoglm", "memcg_limit_bytes": 3 << 30, "memcg_usage_bytes": 3 << 30,
    }])
    w.emit("proc_events", [
        {"ts_ns": T0 + OOM_AT + 1_000_000, "event": "exit", "pid": WORKER, "tid": WORKER, "comm": worker_comm,
         "signal": 9, "source": "bpf"},
    ])
    w.emit_columns("gpu_devices", {
        "ts_ns": ts, "gpu": np.zeros(n, np.int16), "mem_total_bytes": np.full(n, 80 << 30),
        "mem_used_bytes": (20 << 30) + np.arange(n, dtype=np.int64) * (50 << 20),
        "util_gpu_pct": np.where(spike, 20.0, 95.0), "power_mw": np.where(spike, 150_000, 350_000),
        "clocks_event_reasons": np.where((ts - T0) > 55 * NS, 0x20, 0).astype(np.uint64),
        "mem_free_bytes": (60 << 30) - np.arange(n, dtype=np.int64) * (50 << 20), "mem_reserved_bytes": np.full(n, 512 << 20),
        "util_mem_pct": np.where(spike, 10.0, 60.0), "sm_clock_mhz": np.full(n, 1980), "mem_clock_mhz": np.full(n, 2619),
        "power_limit_mw": np.full(n, 700_000), "energy_mj": np.arange(n) * 35_000, "temp_c": np.full(n, 61),
        "pcie_tx_kbps": np.full(n, 1000), "pcie_rx_kbps": np.full(n, 2000), "ecc_corrected": np.zeros(n, np.int64),
        "ecc_uncorrected": np.zeros(n, np.int64),
    })
    w.emit("gpu_events", [{"ts_ns": T0 + 58 * NS, "gpu": 0, "event": "xid", "data": 79, "pid": ROOT}])
    # spans: a request every 50 ms, 80 ms baseline (+noise), 600 ms during the CPU hog.
    start = T0 + np.arange(0, (DURATION_S - 1) * 20, dtype=np.int64) * (NS // 20)
    lat = np.where(_in_spike(start), 600_000_000, 80_000_000) + rng.integers(0, 10_000_000, start.size)
    ns_ = start.size
    w.emit_columns("spans", {
        "ts_ns": start, "end_ns": start + lat, "name": [f"POST /v1/chat/completions {EVIL}"] * ns_,
        "source": ["api"] * ns_, "pid": np.full(ns_, ROOT), "tid": np.full(ns_, 1002),
        "ok": np.arange(ns_) % 97 != 0, "output_tokens": np.full(ns_, 128, np.int32),
        "attrs": [json.dumps({"model": "glm-4"})] * ns_,
    })
    w.emit_columns("alerts", {"ts_ns": [T0 + 40 * NS], "kind": ["memory_growth"], "subject": [f"pid {WORKER}"],
                              "message": [f"{worker_comm} RSS grows 40 MiB/s; limit in 10 s"], "eta_s": [10.0]})
