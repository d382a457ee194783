"""Synthetic recordings with a known answer, written through the real ``RecordingWriter``.

Each scenario has a baseline (Poisson requests whose latency is ``30 ms + 6 ms/token``, jittered) and
one injected incident with the kernel-table evidence a real one leaves: preemptions by an outside pid
(``cpu``), block I/O by a neighbour on the same device (``io``), direct-reclaim stalls and major
faults (``memory``), GPU clocks throttled (``gpu_throttle``), GPU memory filled by another process
(``gpu_memory``), a memory leak ending in a memcg OOM kill (``leak_oom``), KV-cache growth with a
burst of load ending in an OOM kill (``kv_oom``), a CUDA OOM (``cuda_oom``) -- or nothing (``clean``).

``write_recording(path, Scenario(...))`` returns the ground truth (culprit pid, incident window, ...)
for tests to check against. Generation is vectorised and chunked in time, so the one-hour and
six-hour benchmark recordings are cheap to make and bounded in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.tracer.writer import RecordingWriter

START_NS = 5_000_000_000_000  # monotonic clock at the recording's start
WALL_OFFSET_NS = 1_764_000_000_000_000_000 - START_NS  # 2025-11-24T16:00:00Z at the start
GiB = 1 << 30
MiB = 1 << 20

ROOT_PID = 1000
WORKER_PID = 1001
TARGET_PIDS = (ROOT_PID, WORKER_PID, 1002)
CULPRITS = {"cpu": (4242, "stress-ng"), "io": (5151, "fio"), "memory": (6161, "memhog"),
            "gpu_memory": (7777, "trainer")}
KWORKER = (77, "kworker/0:1")
RSYSLOG = (333, "rsyslogd")
NEIGHBOUR = (3100, "python")
DEV = "8:0"
KERNEL_TABLES = ("sched", "preemptions", "faults", "block_io", "reclaim", "oom_kills", "proc_events")
GPU_TABLES = ("gpu_devices", "gpu_processes", "gpu_events")
CHUNK_S = 600


@dataclass
class Scenario:
    kind: str = "clean"
    duration_s: float = 60.0
    interval_ms: int = 100
    requests_per_s: float = 5.0
    threads: int = 4
    incident_start_s: float | None = None  # default: 60 % into the recording
    incident_len_s: float = 6.0
    slowdown: float = 3.0
    bpf: bool = True
    gpu: bool = True
    spans: bool = True
    seed: int = 0
    latency_sigma: float = 0.08  # lognormal jitter of request latency
    base_runq_ms: float = 0.3  # mean run-queue wait per thread per 100 ms bucket at baseline
    inc_runq_ms: tuple[float, float] = (50.0, 70.0)  # ... during a cpu incident (uniform range)
    hog_wait_ms: float = 110.0  # run-queue wait charged to the hog per target pid per bucket
    hog_count: float = 40.0  # involuntary switches in favour of the hog per target pid per bucket
    neighbour_wait_ms: float = 0.0  # a busy neighbour (pid 3100 "python") charged all the time
    drop_tables: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # Who and when, for recordings that look like several hosts' (fleet tests)
    hostname: str = "synthetic"
    boot_id: str = ""
    wall_offset_ns: int = WALL_OFFSET_NS
    labels: dict[str, str] | None = None
    latency_scale: float = 1.0  # every request this much slower (a regressed build)

    @property
    def inc_start(self) -> float:
        return self.incident_start_s if self.incident_start_s is not None else 0.6 * self.duration_s

    @property
    def inc_end(self) -> float:
        return self.inc_start + self.incident_len_s

    @property
    def has_incident(self) -> bool:
        return self.kind in ("cpu", "io", "memory", "gpu_throttle", "gpu_memory")

    @property
    def kill_s(self) -> float:
        return 0.9 * self.duration_s


def _ns(t: np.ndarray | float) -> np.ndarray:
    return (START_NS + np.asarray(t, dtype=np.float64) * 1e9).astype(np.int64)


class _Emitter:
    def __init__(self, w: RecordingWriter, drop: set[str]) -> None:
        self.w, self.drop = w, drop

    def __call__(self, table: str, cols: dict[str, Any]) -> None:
        if table in self.drop:
            return
        sch = schema.schema_for(table)
        n = len(next(iter(cols.values())))
        if n == 0:
            self.w.writer(table)  # recorded, nothing happened
            return
        arrays = []
        for f in sch:
            v = cols.get(f.name)
            if v is None:
                arrays.append(pa.nulls(n, f.type))
            elif isinstance(v, pa.Array):
                arrays.append(v.cast(f.type))
            else:
                arrays.append(pa.array(v, type=f.type))
        self.w.writer(table).append_batch(pa.RecordBatch.from_arrays(arrays, schema=sch))


def _rate(sc: Scenario, t: np.ndarray) -> np.ndarray:
    """Request arrival rate at time t (bursty for the OOM scenarios so idle floors exist)."""
    r = np.full(len(t), sc.requests_per_s)
    if sc.kind in ("leak_oom", "kv_oom"):
        r = np.where((t % 30) < 20, r, 0.0)
        if sc.kind == "kv_oom":
            r = np.where((t > sc.kill_s - 12) & (t <= sc.kill_s), r * 6, r)
    return r


def _in_inc(sc: Scenario, t: np.ndarray) -> np.ndarray:
    if not sc.has_incident:
        return np.zeros(len(t), bool)
    inside = (t >= sc.inc_start) & (t < sc.inc_end)
    period = sc.extra.get("period_s")
    if period:  # periodic stalls: the trouble only during the first stall_s of each period
        inside &= ((t - sc.inc_start) % period) < sc.extra.get("stall_s", 0.2)
    return inside


def _rss_model(sc: Scenario, t: np.ndarray) -> np.ndarray:
    """Worker RSS: a floor (rising for a leak) plus memory that tracks the load (KV cache)."""
    base = 1.0 * GiB
    load = _rate(sc, t) / max(sc.requests_per_s, 1e-9)
    if sc.kind == "leak_oom":
        return base + (3.0 * GiB) * t / sc.kill_s + 0.3 * GiB * load
    if sc.kind == "kv_oom":
        return base + 0.55 * GiB * load
    return base + 0.2 * GiB * load


MEMCG_LIMIT = 4 * GiB


def write_recording(path: str | Path, sc: Scenario) -> dict[str, Any]:
    rng = np.random.default_rng(sc.seed)
    drop = set(sc.drop_tables)
    if not sc.bpf:
        drop |= set(KERNEL_TABLES)
    if not sc.gpu:
        drop |= set(GPU_TABLES)
    if not sc.spans:
        drop.add("spans")
    end_s = sc.duration_s
    if sc.kind in ("leak_oom", "kv_oom", "cuda_oom"):
        end_s = sc.kill_s + 2.0
    collectors: dict[str, Any] = {"procfs": {"status": "ok", "tables": ["processes", "proc_samples",
                                                                          "host_samples", "host_cpu"]}}
    collectors["bpf"] = ({"status": "ok", "tables": list(KERNEL_TABLES)} if sc.bpf else
                         {"status": "unavailable", "reason": "needs root (run with sudo)",
                          "tables": list(KERNEL_TABLES)})
    collectors["nvml"] = ({"status": "ok", "tables": list(GPU_TABLES)} if sc.gpu else
                          {"status": "unavailable", "reason": "no NVIDIA driver (libnvidia-ml.so.1 not found)",
                           "tables": list(GPU_TABLES)})
    target: dict[str, Any] = {"pid": ROOT_PID, "comm": "python3", "command": "python3 server.py",
                              "exit_code": None, "signal": None, "stderr_tail": []}
    if sc.kind == "cuda_oom":
        target.update(exit_code=1, stderr_tail=[
            "Traceback (most recent call last):",
            '  File "server.py", line 88, in generate',
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
            "capacity of 79.19 GiB of which 120.00 MiB is free."])
    manifest = {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "target": target,
                "start_ns": START_NS, "end_ns": int(_ns(end_s)), "interval_ns": sc.interval_ms * 1_000_000,
                "clock": {"monotonic_to_wall_ns": sc.wall_offset_ns}, "collectors": collectors,
                "host": {"hostname": sc.hostname, "cpus": 2, "boot_id": sc.boot_id}, "complete": True,
                "synthetic": {"kind": sc.kind, "seed": sc.seed}}
    if sc.labels:
        manifest["labels"] = dict(sc.labels)
    if sc.extra.get("engine"):
        collectors["scrape"] = {"status": "ok", "tables": ["scrape_samples"]}
    w = RecordingWriter(Path(path), manifest)
    emit = _Emitter(w, drop)
    truth: dict[str, Any] = {"kind": sc.kind, "incident": None, "culprit_pid": None}
    if sc.has_incident:
        truth["incident"] = (int(_ns(sc.inc_start)), int(_ns(sc.inc_end)))
    if sc.kind in CULPRITS:
        truth["culprit_pid"], truth["culprit_comm"] = CULPRITS[sc.kind]

    emit("processes", {
        "ts_ns": _ns(np.zeros(3)), "pid": np.array(TARGET_PIDS), "ppid": np.array([1, ROOT_PID, ROOT_PID]),
        "comm": ["python3", "python3", "tokenizer"], "cmdline": ["python3 server.py"] * 3,
        "uid": np.zeros(3, int), "cgroup": ["/system.slice/llm.service"] * 3,
        "start_time_ns": _ns(np.zeros(3)), "is_root": np.array([True, False, False])})

    dt = sc.interval_ms / 1000.0
    cum = {"cpu": np.zeros(3), "ctx": np.zeros(3), "inv": np.zeros(3), "minflt": np.zeros(3),
           "majflt": np.zeros(3), "io": np.zeros(3), "psi": np.zeros(5), "vm": np.zeros(4),
           "hcpu": np.zeros((2, 6)), "energy": 0.0}
    t0 = 0.0
    while t0 < end_s - 1e-9:
        t1 = min(end_s, t0 + CHUNK_S)
        ticks = np.arange(np.ceil(t0 / dt - 1e-9), np.floor((t1 - 1e-9) / dt) + 1) * dt
        ticks = ticks[(ticks >= t0) & (ticks < t1)]
        _chunk(sc, rng, emit, ticks, dt, cum, truth)
        if sc.spans:
            _spans(sc, rng, emit, t0, t1)
        t0 = t1
    if sc.extra.get("engine"):
        _scrapes(sc, w, end_s)
    if sc.kind in ("leak_oom", "kv_oom"):
        _oom_kill(sc, emit, truth)
    if sc.kind == "cuda_oom":
        emit("proc_events", {"ts_ns": _ns([sc.kill_s + 0.5]), "event": ["exit"], "pid": [ROOT_PID],
                             "tid": [ROOT_PID], "comm": ["python3"], "exit_code": [1], "source": ["waitpid"]})
        truth["kill_ns"] = int(_ns(sc.kill_s + 0.5))
    for tname in ("reclaim", "oom_kills", "gpu_events", "proc_events"):
        if tname not in drop:
            w.writer(tname)
    w.close()
    w.write_manifest()
    return truth


def _scrapes(sc: Scenario, w: RecordingWriter, end_s: float) -> None:
    """``record --scrape`` of a vLLM / SGLang engine every second (``extra['engine']``; names from
    tests/fakes/engine_sim.py, copied from the engines' source, through the recorder's own parser):
    running requests follow the load, KV-cache usage follows it too (``extra['kv'] == 'load'``, the
    default) or stays flat (``'flat'``)."""
    from prometheus_client import generate_latest

    from autoglm_trace.probes.scrape import parse_samples
    from tests.fakes.engine_sim import Metrics

    m = Metrics(sc.extra["engine"], bool(sc.extra.get("old_names")))
    ts = np.arange(0.0, end_s, 1.0)
    rate = _rate(sc, ts)
    peak = max(float(rate.max()), 1e-9)
    rows: list[dict[str, Any]] = []
    for t, r in zip(ts.tolist(), rate.tolist(), strict=True):
        m.running.set(round(r))
        m.kv.set(0.4 if sc.extra.get("kv") == "flat" else 0.1 + 0.8 * r / peak)
        for name, labels, value in parse_samples(generate_latest(m.registry).decode()):
            rows.append({"ts_ns": int(_ns(t)), "url": "http://127.0.0.1:8000/metrics", "metric": name,
                         "labels": labels, "value": value})
    w.writer("scrape_samples").append_batch(pa.RecordBatch.from_pylist(rows, schema=schema.schema_for("scrape_samples")))


def _oom_kill(sc: Scenario, emit: _Emitter, truth: dict[str, Any]) -> None:
    t = sc.kill_s
    rss = min(float(_rss_model(sc, np.array([t - 0.05]))[0]), 0.98 * MEMCG_LIMIT)
    if sc.extra.get("victim_outside"):  # the OOM killer picked a process outside the target
        emit("oom_kills", {"ts_ns": _ns([t]), "pid": [8888], "comm": ["batch-job"], "uid": [1000],
                           "in_target": [False], "anon_rss_bytes": [int(2 * GiB)], "memcg": [""]})
        truth.update(kill_ns=int(_ns(t)), victim_pid=8888)
        return
    emit("oom_kills", {"ts_ns": _ns([t]), "pid": [WORKER_PID], "comm": ["python3"], "uid": [0],
                       "in_target": [True], "total_vm_bytes": [int(rss * 3)], "anon_rss_bytes": [int(rss * 0.97)],
                       "file_rss_bytes": [int(rss * 0.03)], "shmem_rss_bytes": [0], "oom_score_adj": [0],
                       "memcg": ["/llm"], "memcg_limit_bytes": [MEMCG_LIMIT], "memcg_usage_bytes": [MEMCG_LIMIT],
                       "memcg_max_usage_bytes": [MEMCG_LIMIT]})
    emit("proc_events", {"ts_ns": _ns([t + 0.01]), "event": ["exit"], "pid": [WORKER_PID], "tid": [WORKER_PID],
                         "comm": ["python3"], "signal": [9], "source": ["bpf"]})
    truth.update(kill_ns=int(_ns(t)), victim_pid=WORKER_PID,
                 verdict="leak" if sc.kind == "leak_oom" else "kv_cache_growth")


def _spans(sc: Scenario, rng: np.random.Generator, emit: _Emitter, t0: float, t1: float) -> None:
    # Thinned Poisson arrivals at the scenario's (piecewise) rate.
    peak = sc.requests_per_s * (6 if sc.kind == "kv_oom" else 1)
    n = rng.poisson(peak * (t1 - t0))
    t = np.sort(rng.uniform(t0, t1, n))
    t = t[rng.uniform(0, peak, n) < _rate(sc, t)]
    if sc.kind in ("leak_oom", "kv_oom", "cuda_oom"):
        t = t[t < sc.kill_s - 0.5]
    tok = rng.integers(16, 257, len(t))
    lat = (0.030 + 0.006 * tok) * sc.latency_scale * rng.lognormal(0, sc.latency_sigma, len(t))
    if sc.has_incident and sc.extra.get("period_s"):
        # Each stall holds every request in flight for the rest of the stall.
        stall = sc.extra.get("stall_s", 0.2)
        for tau in np.arange(sc.inc_start, sc.inc_end, sc.extra["period_s"]):
            hit = (t <= tau + stall) & (t + lat >= tau)
            lat = np.where(hit, lat + np.minimum(stall, tau + stall - t), lat)
    elif sc.has_incident:
        hit = (t + lat >= sc.inc_start) & (t < sc.inc_end)
        lat = np.where(hit, lat * sc.slowdown, lat)
    ok = np.ones(len(t), bool)
    emit("spans", {"ts_ns": _ns(t), "end_ns": _ns(t + lat), "name": np.full(len(t), "generate"),
                   "source": np.full(len(t), "api"), "pid": np.full(len(t), WORKER_PID),
                   "tid": np.full(len(t), WORKER_PID), "ttft_ns": (lat * 0.1 * 1e9).astype(np.int64),
                   "prompt_tokens": rng.integers(50, 500, len(t)), "output_tokens": tok, "ok": ok})


def _chunk(sc: Scenario, rng: np.random.Generator, emit: _Emitter, ticks: np.ndarray, dt: float,
           cum: dict[str, Any], truth: dict[str, Any]) -> None:
    nb = len(ticks)
    if nb == 0:
        return
    inc = _in_inc(sc, ticks)
    k = sc.kind
    bns = int(dt * 1e9)
    ms = 1e6 * dt / 0.1  # 1 ms per 100 ms bucket, scaled to the bucket length
    alive = ticks < sc.kill_s if k in ("leak_oom", "kv_oom") else np.ones(nb, bool)

    # ---- sched: one row per target thread per bucket -------------------------------------------
    th = sc.threads
    tt = np.repeat(ticks, th)
    tinc = np.repeat(inc, th)
    tid = np.tile(np.arange(th) + ROOT_PID, nb)
    pid = np.where(tid % 2 == 0, ROOT_PID, WORKER_PID)
    tid = np.where(pid == WORKER_PID, tid + 100, tid)
    m = len(tt)
    oncpu = rng.uniform(20, 40, m) * ms
    runq = rng.exponential(sc.base_runq_ms, m) * ms
    dstate = rng.exponential(0.1, m) * ms
    inv = rng.poisson(2, m)
    if k == "cpu":
        runq = np.where(tinc, rng.uniform(*sc.inc_runq_ms, m) * ms, runq)
        inv = np.where(tinc, rng.poisson(sc.hog_count, m), inv)
    if k == "io":
        dstate = np.where(tinc, rng.uniform(50, 70, m) * ms, dstate)
    if k == "memory":
        dstate = np.where(tinc, rng.uniform(30, 50, m) * ms, dstate)
    runq_count = rng.poisson(50, m) + 1
    avg_us = runq / runq_count / 1e3
    b = np.clip(np.floor(np.log2(np.maximum(avg_us, 1))) + 1, 0, schema.LOG2_BUCKETS - 1).astype(np.int64)
    hist = np.zeros((m, schema.LOG2_BUCKETS), np.uint32)
    hist[np.arange(m), b] = runq_count
    hist_arr = pa.ListArray.from_arrays(pa.array(np.arange(m + 1) * schema.LOG2_BUCKETS, pa.int32()),
                                        pa.array(hist.ravel(), pa.uint32()))
    emit("sched", {"ts_ns": _ns(tt), "bucket_ns": np.full(m, bns), "pid": pid, "tid": tid,
                   "comm": np.where(pid == ROOT_PID, "python3", "worker"),
                   "switches_voluntary": rng.poisson(50, m), "switches_involuntary": inv,
                   "oncpu_ns": oncpu.astype(np.int64), "runq_count": runq_count, "runq_wait_ns": runq.astype(np.int64),
                   "runq_max_ns": (runq / runq_count * 4).astype(np.int64), "runq_hist": hist_arr,
                   "offcpu_sleep_ns": np.maximum(0, 100 * ms - oncpu - runq - dstate).astype(np.int64),
                   "offcpu_dstate_ns": dstate.astype(np.int64), "offcpu_preempted_ns": (runq * 0.8).astype(np.int64),
                   "migrations": rng.poisson(1, m)})

    # ---- preemptions ---------------------------------------------------------------------------
    base_rows = rng.uniform(0, 1, nb) < 0.3
    bt = ticks[base_rows]
    pt = [bt, bt]
    ppid = [np.full(len(bt), ROOT_PID), np.full(len(bt), ROOT_PID)]
    pre = [np.full(len(bt), KWORKER[0]), np.full(len(bt), WORKER_PID)]
    pcomm = [np.full(len(bt), KWORKER[1]), np.full(len(bt), "worker")]
    pin = [np.zeros(len(bt), bool), np.ones(len(bt), bool)]
    pcount = [np.ones(len(bt), int), np.ones(len(bt), int)]
    pwait = [np.full(len(bt), 0.2 * ms), np.full(len(bt), 0.2 * ms)]
    pcpu = [np.zeros(len(bt), int), np.ones(len(bt), int)]
    if k == "cpu" and inc.any():
        it = ticks[inc]
        cid, ccomm = CULPRITS["cpu"]
        pt += [it, it]
        ppid += [np.full(len(it), ROOT_PID), np.full(len(it), WORKER_PID)]
        pre += [np.full(len(it), cid), np.full(len(it), cid)]
        pcomm += [np.full(len(it), ccomm), np.full(len(it), ccomm)]
        pin += [np.zeros(len(it), bool), np.zeros(len(it), bool)]
        pcount += [rng.poisson(sc.hog_count, len(it)), rng.poisson(sc.hog_count, len(it))]
        pwait += [np.full(len(it), sc.hog_wait_ms * ms), np.full(len(it), sc.hog_wait_ms * ms)]
        pcpu += [np.zeros(len(it), int), np.zeros(len(it), int)]
        # a second, minor outside process
        pt.append(it)
        ppid.append(np.full(len(it), ROOT_PID))
        pre.append(np.full(len(it), 999))
        pcomm.append(np.full(len(it), "sshd"))
        pin.append(np.zeros(len(it), bool))
        pcount.append(np.ones(len(it), int))
        pwait.append(np.full(len(it), 5 * ms))
        pcpu.append(np.ones(len(it), int))
    if sc.neighbour_wait_ms > 0:
        pt.append(ticks)
        ppid.append(np.full(nb, ROOT_PID))
        pre.append(np.full(nb, NEIGHBOUR[0]))
        pcomm.append(np.full(nb, NEIGHBOUR[1]))
        pin.append(np.zeros(nb, bool))
        pcount.append(rng.poisson(5, nb))
        pwait.append(rng.uniform(0.5, 1.5, nb) * sc.neighbour_wait_ms * ms)
        pcpu.append(np.zeros(nb, int))
    n_p = sum(len(x) for x in pt)
    emit("preemptions", {"ts_ns": _ns(np.concatenate(pt)), "bucket_ns": np.full(n_p, bns),
                         "pid": np.concatenate(ppid), "preemptor_pid": np.concatenate(pre),
                         "preemptor_tid": np.concatenate(pre), "preemptor_comm": np.concatenate(pcomm),
                         "preemptor_in_target": np.concatenate(pin), "cpu": np.concatenate(pcpu),
                         "count": np.concatenate(pcount), "wait_ns": np.concatenate(pwait).astype(np.int64)})

    # ---- faults --------------------------------------------------------------------------------
    major = rng.poisson(0.02, m)
    if k == "memory":
        major = np.where(tinc, rng.poisson(30, m), major)
    allf = rng.poisson(100, m) + major
    emit("faults", {"ts_ns": _ns(tt), "bucket_ns": np.full(m, bns), "pid": pid, "tid": tid, "faults": allf,
                    "major": major})

    # ---- block_io ------------------------------------------------------------------------------
    tr = rng.poisson(2, nb)
    tlat = rng.uniform(0.15, 0.3, nb) * 1e6
    if k == "io":
        tlat = np.where(inc, rng.uniform(15, 25, nb) * 1e6, tlat)
    if k == "memory":
        tr = np.where(inc, tr + rng.poisson(30 * th, nb), tr)
    rows_t = tr > 0
    bio: dict[str, list[np.ndarray]] = {c: [] for c in ("ts", "pid", "comm", "in", "op", "count", "bytes", "lat")}

    def add_bio(ts, p, c, inn, op, cnt, byt, lat):
        bio["ts"].append(ts)
        bio["pid"].append(np.full(len(ts), p))
        bio["comm"].append(np.full(len(ts), c))
        bio["in"].append(np.full(len(ts), inn))
        bio["op"].append(np.full(len(ts), op))
        bio["count"].append(cnt)
        bio["bytes"].append(byt)
        bio["lat"].append(lat)

    add_bio(ticks[rows_t], ROOT_PID, "python3", True, "R", tr[rows_t], tr[rows_t] * 16384,
            tr[rows_t] * tlat[rows_t])
    srow = rng.uniform(0, 1, nb) < 0.2
    add_bio(ticks[srow], RSYSLOG[0], RSYSLOG[1], False, "W", np.ones(srow.sum(), int),
            np.full(srow.sum(), 4096), np.full(srow.sum(), 0.2e6))
    if k == "io" and inc.any():
        it = ticks[inc]
        c = rng.poisson(200 * dt / 0.1, len(it))
        add_bio(it, CULPRITS["io"][0], CULPRITS["io"][1], False, "W", c, c * 131072, c * 20e6)
    nbio = sum(len(x) for x in bio["ts"])
    lat_all = np.concatenate(bio["lat"])
    cnt_all = np.concatenate(bio["count"])
    emit("block_io", {"ts_ns": _ns(np.concatenate(bio["ts"])), "bucket_ns": np.full(nbio, bns),
                      "pid": np.concatenate(bio["pid"]), "comm": np.concatenate(bio["comm"]),
                      "in_target": np.concatenate(bio["in"]), "dev": np.full(nbio, DEV),
                      "op": np.concatenate(bio["op"]), "count": cnt_all, "bytes": np.concatenate(bio["bytes"]),
                      "lat_sum_ns": lat_all.astype(np.int64),
                      "lat_max_ns": (lat_all / np.maximum(cnt_all, 1) * 2).astype(np.int64)})

    # ---- reclaim (one row per stall) -----------------------------------------------------------
    r_ts, r_pid, r_comm, r_in, r_kind, r_dur = [], [], [], [], [], []
    wake = ticks[rng.uniform(0, 1, nb) < 0.002]
    r_ts.append(wake)
    r_pid.append(np.full(len(wake), 45))
    r_comm.append(np.full(len(wake), "kswapd0"))
    r_in.append(np.zeros(len(wake), bool))
    r_kind.append(np.full(len(wake), "kswapd_wake"))
    r_dur.append(np.zeros(len(wake)))
    if k == "memory" and inc.any():
        it = ticks[inc]
        hog_n = rng.poisson(8 * dt / 0.1, len(it))
        hts = np.repeat(it, hog_n) + rng.uniform(0, dt, hog_n.sum())
        r_ts.append(hts)
        r_pid.append(np.full(len(hts), CULPRITS["memory"][0]))
        r_comm.append(np.full(len(hts), CULPRITS["memory"][1]))
        r_in.append(np.zeros(len(hts), bool))
        r_kind.append(np.full(len(hts), "direct"))
        r_dur.append(rng.uniform(2, 10, len(hts)) * 1e6)
        tgt_n = rng.poisson(2 * th * dt / 0.1, len(it))
        tts = np.repeat(it, tgt_n) + rng.uniform(0, dt, tgt_n.sum())
        r_ts.append(tts)
        r_pid.append(np.full(len(tts), WORKER_PID))
        r_comm.append(np.full(len(tts), "worker"))
        r_in.append(np.ones(len(tts), bool))
        r_kind.append(np.full(len(tts), "direct"))
        r_dur.append(rng.uniform(1, 3, len(tts)) * 1e6)
    nr = sum(len(x) for x in r_ts)
    if nr:
        dur = np.concatenate(r_dur)
        emit("reclaim", {"ts_ns": _ns(np.concatenate(r_ts)), "pid": np.concatenate(r_pid),
                         "tid": np.concatenate(r_pid), "comm": np.concatenate(r_comm),
                         "in_target": np.concatenate(r_in), "kind": np.concatenate(r_kind),
                         "duration_ns": dur.astype(np.int64), "nr_reclaimed": (dur / 1e4).astype(np.int64)})

    # ---- proc_samples (cumulative counters per target pid) -------------------------------------
    ps_ts, ps_pid = [], []
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("cpu", "rss", "inv", "vol", "minflt", "majflt", "io")}
    for j, p in enumerate(TARGET_PIDS):
        live = alive if p == WORKER_PID else np.ones(nb, bool)
        tk = ticks[live]
        nn = len(tk)
        if nn == 0:
            continue
        cpu = cum["cpu"][j] + np.cumsum(rng.uniform(0.2, 0.4, nn) * dt)
        ivs = cum["inv"][j] + np.cumsum(rng.poisson(np.where(inc[live] & (k == "cpu"), 200, 10) * dt * 10 / 1))
        vol = cum["ctx"][j] + np.cumsum(rng.poisson(100, nn))
        mj = cum["majflt"][j] + np.cumsum(rng.poisson(np.where(inc[live] & (k == "memory"), 60, 0.05), nn))
        mn = cum["minflt"][j] + np.cumsum(rng.poisson(200, nn))
        io = cum["io"][j] + np.cumsum(rng.poisson(2, nn) * 16384)
        cum["cpu"][j], cum["inv"][j], cum["ctx"][j] = cpu[-1], ivs[-1], vol[-1]
        cum["majflt"][j], cum["minflt"][j], cum["io"][j] = mj[-1], mn[-1], io[-1]
        if p == WORKER_PID:
            rss = _rss_model(sc, tk) + rng.normal(0, 4 * MiB, nn)
        else:
            rss = np.full(nn, (600 if p == ROOT_PID else 100) * MiB) + rng.normal(0, 1 * MiB, nn)
        ps_ts.append(tk)
        ps_pid.append(np.full(nn, p))
        for c, v in (("cpu", cpu), ("rss", rss), ("inv", ivs), ("vol", vol), ("minflt", mn), ("majflt", mj),
                     ("io", io)):
            cols[c].append(v)
    if ps_ts:
        cc = {c: np.concatenate(v) for c, v in cols.items()}
        n_ps = len(cc["cpu"])
        emit("proc_samples", {"ts_ns": _ns(np.concatenate(ps_ts)), "pid": np.concatenate(ps_pid),
                              "cpu_user_s": cc["cpu"] * 0.8, "cpu_system_s": cc["cpu"] * 0.2,
                              "rss_bytes": cc["rss"].astype(np.int64), "vms_bytes": (cc["rss"] * 3).astype(np.int64),
                              "shared_bytes": np.full(n_ps, 50 * MiB), "num_threads": np.full(n_ps, th),
                              "ctx_voluntary": cc["vol"].astype(np.int64),
                              "ctx_involuntary": cc["inv"].astype(np.int64),
                              "minflt": cc["minflt"].astype(np.int64), "majflt": cc["majflt"].astype(np.int64),
                              "io_read_bytes": cc["io"].astype(np.int64), "io_write_bytes": np.zeros(n_ps, int),
                              "num_fds": np.full(n_ps, 40), "state": np.full(n_ps, "S")})

    # ---- host_samples / host_cpu ---------------------------------------------------------------
    def psi_step(base_ms: float, inc_ms: float, which: bool) -> np.ndarray:
        per = np.where(inc & which, inc_ms, base_ms) * 1000 * dt  # us per tick
        return rng.uniform(0.5, 1.5, nb) * per

    psi = cum["psi"]
    busy_ms = 2 + 5 * sc.neighbour_wait_ms  # a busy neighbour keeps CPU pressure up all the time
    steps = [psi_step(busy_ms, 600 + busy_ms, k == "cpu"), psi_step(0.1, 500, k == "memory"), psi_step(0, 200, k == "memory"),
             psi_step(3, 700, k == "io"), psi_step(1, 400, k == "io")]
    psis = []
    for j, s in enumerate(steps):
        v = psi[j] + np.cumsum(s)
        psi[j] = v[-1]
        psis.append(v.astype(np.int64))
    vm = cum["vm"]
    vsteps = [rng.poisson(np.where(inc & (k == "memory"), 300, 0.2)),
              rng.poisson(np.where(inc & (k == "memory"), 5000, 0)),
              rng.poisson(np.where(inc & (k == "memory"), 40, 0)), rng.poisson(2000, nb)]
    vms = []
    for j, s in enumerate(vsteps):
        v = vm[j] + np.cumsum(s)
        vm[j] = v[-1]
        vms.append(v.astype(np.int64))
    avail = np.where(inc & (k == "memory"), 0.3 * GiB, 16 * GiB) + rng.normal(0, 50 * MiB, nb)
    emit("host_samples", {"ts_ns": _ns(ticks), "mem_total_bytes": np.full(nb, 24 * GiB),
                          "mem_available_bytes": avail.astype(np.int64), "mem_free_bytes": (avail * 0.5).astype(np.int64),
                          "mem_cached_bytes": np.full(nb, 6 * GiB), "swap_total_bytes": np.zeros(nb, int),
                          "swap_free_bytes": np.zeros(nb, int), "load1": np.full(nb, 1.2), "load5": np.full(nb, 1.1),
                          "load15": np.full(nb, 1.0), "psi_cpu_some_us": psis[0], "psi_mem_some_us": psis[1],
                          "psi_mem_full_us": psis[2], "psi_io_some_us": psis[3], "psi_io_full_us": psis[4],
                          "pgmajfault": vms[0], "pgscan_direct": vms[1], "allocstall": vms[2], "ctxt": vms[3]})
    hc = cum["hcpu"]
    rows = []
    for c in range(2):
        busy = np.where(inc & (k == "cpu"), 0.98, 0.35)
        iow = np.where(inc & (k == "io"), 0.4, 0.01)
        parts = np.stack([busy * 0.8, busy * 0.2, np.maximum(0, 1 - busy - iow), iow, np.full(nb, 0.01),
                          np.zeros(nb)], axis=1) * dt
        v = hc[c] + np.cumsum(parts, axis=0)
        hc[c] = v[-1]
        rows.append(v)
    allc = np.concatenate(rows)
    emit("host_cpu", {"ts_ns": _ns(np.concatenate([ticks, ticks])), "cpu": np.repeat([0, 1], nb),
                      "user_s": allc[:, 0], "system_s": allc[:, 1], "idle_s": allc[:, 2], "iowait_s": allc[:, 3],
                      "irq_s": allc[:, 4], "steal_s": allc[:, 5]})

    # ---- GPU -----------------------------------------------------------------------------------
    total = 80 * GiB
    used = np.full(nb, 60.0 * GiB) + rng.normal(0, 50 * MiB, nb)
    if k == "gpu_memory":
        used = np.where(inc, total - 300 * MiB, used)
    if k == "cuda_oom":
        used = 50 * GiB + (total - 50 * GiB - 100 * MiB) * np.clip(ticks / sc.kill_s, 0, 1)
    clk = np.full(nb, 1980)
    reasons = np.zeros(nb, np.uint64)
    temp = np.full(nb, 65)
    if k == "gpu_throttle":
        clk = np.where(inc, 990, clk)
        reasons = np.where(inc, np.uint64(0x20 | 0x40), reasons)
        temp = np.where(inc, 91, temp)
    emit("gpu_devices", {"ts_ns": _ns(ticks), "gpu": np.zeros(nb, int), "mem_total_bytes": np.full(nb, total),
                         "mem_used_bytes": used.astype(np.int64), "mem_free_bytes": (total - used).astype(np.int64),
                         "mem_reserved_bytes": np.zeros(nb, int), "util_gpu_pct": rng.uniform(60, 80, nb),
                         "util_mem_pct": rng.uniform(20, 40, nb), "sm_clock_mhz": clk, "mem_clock_mhz": np.full(nb, 2619),
                         "power_mw": np.full(nb, 350000), "power_limit_mw": np.full(nb, 700000),
                         "energy_mj": np.cumsum(np.full(nb, 35.0)).astype(np.int64) + int(cum["energy"]),
                         "temp_c": temp, "clocks_event_reasons": reasons, "pcie_tx_kbps": np.full(nb, 100000),
                         "pcie_rx_kbps": np.full(nb, 200000), "ecc_corrected": np.zeros(nb, int),
                         "ecc_uncorrected": np.zeros(nb, int)})
    cum["energy"] += 35.0 * nb
    g_ts, g_pid, g_in, g_used = [ticks], [np.full(nb, WORKER_PID)], [np.ones(nb, bool)], [used - 1 * GiB]
    if k == "gpu_memory" and inc.any():
        it = ticks[inc]
        g_ts.append(it)
        g_pid.append(np.full(len(it), CULPRITS["gpu_memory"][0]))
        g_in.append(np.zeros(len(it), bool))
        g_used.append(np.full(len(it), 19.0 * GiB))
        g_used[0] = np.where(inc, 60 * GiB, g_used[0])
    ng = sum(len(x) for x in g_ts)
    emit("gpu_processes", {"ts_ns": _ns(np.concatenate(g_ts)), "gpu": np.zeros(ng, int),
                           "pid": np.concatenate(g_pid), "in_target": np.concatenate(g_in),
                           "used_bytes": np.concatenate(g_used).astype(np.int64)})
    emit("probe_stats", {"ts_ns": _ns(ticks[::10]), "probe": np.full(len(ticks[::10]), "sched"),
                         "events": np.full(len(ticks[::10]), 5000), "lost": np.zeros(len(ticks[::10]), int)})
