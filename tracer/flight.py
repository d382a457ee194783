"""The always-on flight recorder: ``autoglm-trace record --ring DURATION``.

The recorder runs with no recording files (``Recorder(write_files=False)``); every batch any collector
emits goes into a bounded in-memory ring (tracer/ring.py) that keeps the last DURATION of every table.
Each sampling tick ``FlightRecorder.tick`` looks at the rows that arrived since the previous tick and
fires a trigger on

* ``oom``       -- a new ``oom_kills`` row (the kernel probes see every victim on the host),
* ``exit``      -- the target exiting abnormally: a ``proc_events`` exit of a target process with a
                   crash signal (or of the target's root with any signal / non-zero code), a spawned
                   target's exit status, or CUDA out-of-memory text in its stderr,
* ``spike``     -- a slow request among the spans (the same detector as ``analyze``),
* ``signal``    -- SIGUSR1 (an on-demand snapshot),
* ``threshold`` -- a ``--trigger-expr`` such as ``gpu_mem_used_frac>0.97`` turning true.

A trigger captures the ring at once (zero-copy references to its batches plus a cursor), keeps
recording for ``--tail`` seconds, then writes ``DIR/<UTC time>-<trigger>/`` on a writer thread: the
captured ring plus every row that arrived after the capture, as an ordinary recording (``analyze``,
``oom``, ``report`` read it unchanged). Triggers during the tail join that snapshot; after it, a
cool-down suppresses new ones (counted and logged) so an OOM storm cannot fill the disk, and
retention (``--keep N``, ``--keep-bytes SIZE``) deletes the oldest snapshots.

Everything is logged one line per event on stderr (journald-friendly). SIGTERM / SIGINT end the
session cleanly: a snapshot in its tail is written first.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace import clock, schema
from autoglm_trace.analysis.spikes import score_spans
from autoglm_trace.errors import UsageError, WriteError
from autoglm_trace.printable import printable
from autoglm_trace.signals import (
    SIZE_UNITS,
    column,
    counter_step,
    human_bytes,
    log2_quantile,
    log2_rows,
    parse_duration,
    parse_size,
)
from autoglm_trace.tracer.manifest import wall_iso
from autoglm_trace.tracer.ring import RingSink
from autoglm_trace.tracer.session import Recorder, RecordOptions, install_signal_handlers
from autoglm_trace.tracer.writer import RecordingWriter

TRIGGERS = ("oom", "exit", "spike", "signal", "threshold")
DEFAULT_TRIGGERS = ("oom", "exit", "spike", "signal")
DEFAULT_RING_BYTES = 256 << 20
DEFAULT_TAIL_S = 10.0
DEFAULT_COOLDOWN_S = 60.0
SPIKE_CHECK_NS = 1_000_000_000
SPIKE_MIN_SPANS = 20
THRESHOLD_CHECK_NS = 1_000_000_000
# Signals that mean a process crashed or was killed, not asked to stop (SIGTERM/SIGINT/SIGHUP/SIGPIPE
# end processes during ordinary deploys and pipelines).
CRASH_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE,
                 signal.SIGILL, signal.SIGSYS, signal.SIGTRAP}
CUDA_OOM_RE = re.compile(r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|"
                         r"CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation", re.I)
SNAPSHOT_NAME_RE = re.compile(r"^\d{8}T\d{6}Z-[a-z]+(?:-\d+)?$")
# The tables each trigger reads each tick (only those of enabled triggers are fetched).
TRIGGER_TABLES = {"oom": ("oom_kills",), "exit": ("proc_events",), "spike": ("spans",)}
METRIC_TABLES = {"gpu_": ("gpu_devices",), "rss_bytes": ("proc_samples",), "max_rss_bytes": ("proc_samples",),
                 "host_": ("host_samples",), "swap_": ("host_samples",), "load1": ("host_samples",),
                 "psi_": ("host_samples",), "runq_": ("sched",)}
RING_WATCH_NS = 1_000_000_000
# A status line in the log every so often (ring size, process RSS, snapshots): the journal then shows
# the service's memory over days. AUTOGLM_TRACE_FLIGHT_STATUS_S overrides it (benchmarks use 60).
STATUS_EVERY_S = 600.0


# Threshold metrics ------------------------------------------------------------------------------
METRICS: dict[str, str] = {
    "gpu_mem_used_frac": "largest used/total memory fraction of any GPU (latest sample)",
    "gpu_util_pct": "largest GPU utilisation of any GPU (latest sample, %)",
    "gpu_temp_c": "hottest GPU (latest sample, degrees C)",
    "rss_bytes": "total RSS of the sampled processes (the target's; in host mode the top processes)",
    "max_rss_bytes": "largest RSS of one sampled process",
    "host_mem_available_frac": "MemAvailable / MemTotal (latest sample)",
    "host_mem_available_bytes": "MemAvailable (latest sample)",
    "swap_used_frac": "(SwapTotal - SwapFree) / SwapTotal (0 without swap)",
    "load1": "1-minute load average",
    "psi_mem_some_pct": "share of time some task stalled on memory, between the last two samples (%)",
    "psi_cpu_some_pct": "share of time some task waited for a CPU, between the last two samples (%)",
    "psi_io_some_pct": "share of time some task stalled on I/O, between the last two samples (%)",
    "runq_wait_ms_p99": "p99 run-queue wait over the last second of kernel buckets (ms)",
    "runq_wait_ms_max": "longest run-queue wait over the last second of kernel buckets (ms)",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


@dataclass
class Threshold:
    metric: str
    op: str
    value: float
    text: str

    def holds(self, v: float | None) -> bool:
        return v is not None and _OPS[self.op](v, self.value)


def parse_expr(text: str) -> Threshold:
    """``METRIC OP NUMBER[UNIT]`` with OP one of > >= < <= == != -- a comparison, nothing else
    (no eval). Units: %, size suffixes (K, M, G, MiB ...), ms / s for the *_ms metrics."""
    m = re.fullmatch(r"\s*([a-z][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
                     r"\s*([a-zA-Z%]*)\s*", text)
    if not m:
        raise ValueError(f"cannot parse trigger expression {text!r}: expected METRIC OP NUMBER, "
                         "e.g. gpu_mem_used_frac>0.97")
    metric, op, num, unit = m.groups()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} in {text!r}; known: {', '.join(sorted(METRICS))}")
    value = float(num)
    u = unit.lower()
    is_ms = metric.endswith("_ms") or "_ms_" in metric
    if u == "%":
        if metric.endswith("_frac"):
            value /= 100.0  # 97% of a fraction metric
        elif not metric.endswith("_pct"):
            raise ValueError(f"unit '%' does not fit metric {metric!r} in {text!r}")
    elif u in ("ms", "s") and is_ms:
        value *= 1000.0 if u == "s" else 1.0
    elif u:
        if u not in SIZE_UNITS or not metric.endswith("_bytes"):
            raise ValueError(f"unit {unit!r} does not fit metric {metric!r} in {text!r}")
        value *= SIZE_UNITS[u]
    return Threshold(metric, op, value, text.strip())


class MetricState:
    """The latest value of each threshold metric, updated from the rows of each tick."""

    def __init__(self) -> None:
        self.gpu: dict[int, tuple[float | None, float | None, float | None]] = {}
        self.proc_ts = -1
        self.proc_rss: dict[int, int] = {}
        self.host_prev: dict[str, Any] | None = None
        self.host: dict[str, Any] | None = None
        self.sched: list[tuple[int, np.ndarray, int]] = []  # (ts, summed hist, max wait ns)

    def update(self, new: dict[str, pa.Table]) -> None:
        g = new.get("gpu_devices")
        if g is not None and g.num_rows:
            for r in g.select(["gpu", "mem_used_bytes", "mem_total_bytes", "util_gpu_pct", "temp_c"]).to_pylist():
                frac = (r["mem_used_bytes"] / r["mem_total_bytes"]
                        if r["mem_used_bytes"] is not None and r["mem_total_bytes"] else None)
                self.gpu[r["gpu"]] = (frac, r["util_gpu_pct"], r["temp_c"])
        p = new.get("proc_samples")
        if p is not None and p.num_rows:
            ts = p.column("ts_ns").to_numpy()
            last = int(ts.max())
            rows = p.filter(pc.equal(p.column("ts_ns"), last))
            if last != self.proc_ts:
                self.proc_rss = {}
                self.proc_ts = last
            for pid, rss in zip(rows.column("pid").to_pylist(), rows.column("rss_bytes").to_pylist(), strict=True):
                if rss is not None:
                    self.proc_rss[pid] = rss
        h = new.get("host_samples")
        if h is not None and h.num_rows:
            rows = h.to_pylist()
            if len(rows) >= 2:
                self.host_prev = rows[-2]
            elif self.host is not None:
                self.host_prev = self.host
            self.host = rows[-1]
        s = new.get("sched")
        if s is not None and s.num_rows:
            ts = column(s, "ts_ns", np.int64)
            uts, inv = np.unique(ts, return_inverse=True)
            hists = np.zeros((uts.size, schema.LOG2_BUCKETS))
            np.add.at(hists, inv.reshape(-1), log2_rows(s.column("runq_hist")))
            mx = np.zeros(uts.size)
            np.maximum.at(mx, inv.reshape(-1), column(s, "runq_max_ns", fill=0))
            self.sched.extend((int(t), h, int(m)) for t, h, m in zip(uts.tolist(), hists, mx.tolist()))
            newest = max(t for t, _, _ in self.sched)
            self.sched = [x for x in self.sched if x[0] > newest - 1_000_000_000]

    def value(self, metric: str) -> float | None:
        h, hp = self.host, self.host_prev
        if metric == "gpu_mem_used_frac":
            vals = [v[0] for v in self.gpu.values() if v[0] is not None]
            return max(vals) if vals else None
        if metric == "gpu_util_pct":
            vals = [v[1] for v in self.gpu.values() if v[1] is not None]
            return max(vals) if vals else None
        if metric == "gpu_temp_c":
            vals = [v[2] for v in self.gpu.values() if v[2] is not None]
            return max(vals) if vals else None
        if metric == "rss_bytes":
            return float(sum(self.proc_rss.values())) if self.proc_rss else None
        if metric == "max_rss_bytes":
            return float(max(self.proc_rss.values())) if self.proc_rss else None
        if metric in ("host_mem_available_frac", "host_mem_available_bytes", "swap_used_frac", "load1"):
            if h is None:
                return None
            if metric == "host_mem_available_bytes":
                return _num(h.get("mem_available_bytes"))
            if metric == "host_mem_available_frac":
                a, t = h.get("mem_available_bytes"), h.get("mem_total_bytes")
                return a / t if a is not None and t else None
            if metric == "swap_used_frac":
                t, f = h.get("swap_total_bytes"), h.get("swap_free_bytes")
                return (t - f) / t if t and f is not None else 0.0
            return _num(h.get("load1"))
        if metric.startswith("psi_"):
            col = {"psi_mem_some_pct": "psi_mem_some_us", "psi_cpu_some_pct": "psi_cpu_some_us",
                   "psi_io_some_pct": "psi_io_some_us"}[metric]
            if h is None or hp is None or h.get(col) is None or hp.get(col) is None:
                return None
            dt_us = (h["ts_ns"] - hp["ts_ns"]) / 1000
            return 100.0 * float(counter_step(hp[col], h[col])) / dt_us if dt_us > 0 else None
        if metric == "runq_wait_ms_max":
            return max(x[2] for x in self.sched) / 1e6 if self.sched else None
        if metric == "runq_wait_ms_p99":
            if not self.sched:
                return None
            hist = np.sum([x[1] for x in self.sched], axis=0)
            p99 = log2_quantile(hist, 0.99)  # the same p99 as top, /metrics and the report
            return 0.0 if p99 is None else p99 * 1000.0
        raise KeyError(metric)


def _num(v: Any) -> float | None:
    return float(v) if v is not None else None


# Spike detection --------------------------------------------------------------------------------
def slow_spans(spans: pa.Table) -> np.ndarray:
    """Boolean mask of the spans that are slow for the work they did: the analysis' own detector
    (analysis/spikes.py), so ``analyze`` and the flight recorder agree."""
    sc = score_spans(spans)
    if sc is None:
        return np.zeros(spans.num_rows, dtype=bool)
    return np.asarray(sc.slow, dtype=bool)


# The flight recorder ----------------------------------------------------------------------------
def log(msg: str) -> None:
    """One line on stderr. Under systemd (JOURNAL_STREAM set) the journal stamps the time."""
    msg = printable(msg)  # trigger details carry comms and span names from the target
    if os.environ.get("JOURNAL_STREAM"):
        line = f"autoglm-trace flight: {msg}"
    else:
        line = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} autoglm-trace flight: {msg}"
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


@dataclass
class FlightOptions:
    out_dir: Path
    ring_s: float
    ring_bytes: int = DEFAULT_RING_BYTES
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    thresholds: list[Threshold] = field(default_factory=list)
    tail_s: float = DEFAULT_TAIL_S
    cooldown_s: float = DEFAULT_COOLDOWN_S
    keep: int | None = None
    keep_bytes: int | None = None


@dataclass
class _Pending:
    kind: str
    detail: str
    trigger_ns: int
    captured: dict[str, pa.Table]
    cursor: dict[str, int]
    deadline_ns: int
    also: list[dict[str, Any]] = field(default_factory=list)


class FlightRecorder:
    """Triggers, snapshots and retention around a ring; ``tick(recorder)`` is the Recorder's on_tick."""

    def __init__(self, fo: FlightOptions, ring: RingSink | None = None) -> None:
        self.fo = fo
        self.ring = ring or RingSink(int(fo.ring_s * 1e9), fo.ring_bytes)
        self.cursor: dict[str, int] = {}
        self.metrics = MetricState()
        self.pending: _Pending | None = None
        self.cooldown_until_ns = 0
        self.suppressed = 0
        self.snapshots: list[Path] = []
        self.signal_requested = threading.Event()
        self._threshold_state: dict[str, bool] = {}
        self._next_threshold_ns = 0
        self._next_spike_ns = 0
        self._spans_new = 0
        self._spike_seen_end_ns = 0
        self._exit_seen: set[int] = set()
        self._stderr_last: str | None = None
        self._drop_logged = 0
        self._full_logged = False
        self._errors: set[str] = set()
        self._started_logged = False
        self._next_ring_watch_ns = 0
        self._next_status_ns = 0
        try:
            self._status_every_s = float(os.environ.get("AUTOGLM_TRACE_FLIGHT_STATUS_S") or STATUS_EVERY_S)
        except ValueError:
            self._status_every_s = STATUS_EVERY_S
        watched = {t for k in fo.triggers for t in TRIGGER_TABLES.get(k, ())}
        if "threshold" in fo.triggers:
            for th in fo.thresholds:
                watched.update(t for prefix, tables in METRIC_TABLES.items() if th.metric.startswith(prefix)
                               for t in tables)
        self._watched = tuple(sorted(watched))
        self.saved: list[Path] = []
        self._queue: queue.Queue[tuple[Path, dict[str, Any], dict[str, pa.Table]] | None] = queue.Queue(maxsize=2)
        self._writer = threading.Thread(target=self._write_loop, name="flight-writer", daemon=True)
        self._writer.start()
        self.recorder: Recorder | None = None

    # Tick -------------------------------------------------------------------------------------
    def tick(self, rec: Recorder) -> None:
        """Runs on the sampling thread each interval. Never raises (the Recorder would swallow it)."""
        self.recorder = rec
        try:
            self._tick(rec)
        except Exception as e:  # noqa: BLE001
            key = f"{type(e).__name__}: {e}"
            if key not in self._errors:
                self._errors.add(key)
                log(f"internal error in the trigger loop (the recorder carries on): {key}")

    def _tick(self, rec: Recorder) -> None:
        now = clock.now_ns()
        if not self._started_logged:
            self._started_logged = True
            cols = rec.manifest.get("collectors") or {}
            for name, c in cols.items():
                if c.get("status") != "ok":
                    log(f"collector {name} {c.get('status')}: {c.get('reason')}")
            log(f"recording {rec.ctx.target.describe() if rec.ctx else '?'} into the ring; collectors running: "
                + (", ".join(n for n, c in cols.items() if c.get("status") == "ok") or "none"))
        new, cur = self.ring.since(self.cursor, self._watched)
        self.cursor.update(cur)
        fired: list[tuple[str, str]] = []
        trig = self.fo.triggers
        if "oom" in trig:
            fired += self._check_oom(new.get("oom_kills"))
        if "exit" in trig:
            fired += self._check_exit(rec, new.get("proc_events"))
        if "spike" in trig:
            fired += self._check_spike(new.get("spans"), now)
        if "threshold" in trig and self.fo.thresholds:
            self.metrics.update(new)
            fired += self._check_thresholds(now)
        if self.signal_requested.is_set():
            self.signal_requested.clear()
            if "signal" in trig:
                fired.append(("signal", "SIGUSR1 (on-demand snapshot)"))
        for kind, detail in fired:
            self.fire(kind, detail, now)
        if self.pending is not None and now >= self.pending.deadline_ns:
            self._finish_pending(now)
        if now >= self._next_ring_watch_ns:
            self._next_ring_watch_ns = now + RING_WATCH_NS
            self._watch_ring()

    def _check_oom(self, t: pa.Table | None) -> list[tuple[str, str]]:
        if t is None or t.num_rows == 0:
            return []
        out = []
        for r in t.select(["pid", "comm", "memcg", "anon_rss_bytes", "memcg_limit_bytes"]).to_pylist():
            where = f" in memcg {r['memcg']}" if r.get("memcg") else ""
            lim = f" (limit {human_bytes(r['memcg_limit_bytes'])})" if r.get("memcg_limit_bytes") else ""
            rss = f", anon RSS {human_bytes(r['anon_rss_bytes'])}" if r.get("anon_rss_bytes") is not None else ""
            out.append(("oom", f"OOM kill of pid {r['pid']} ({r.get('comm') or '?'}){where}{lim}{rss}"))
        return out

    def _check_exit(self, rec: Recorder, t: pa.Table | None) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        target = rec.ctx.target if rec.ctx is not None else None
        if target is not None and target.mode != "host" and t is not None and t.num_rows:
            ex = t.filter(pc.equal(t.column("event"), "exit"))
            for r in ex.select(["pid", "comm", "exit_code", "signal"]).to_pylist():
                pid, sig, code = r["pid"], r["signal"], r["exit_code"]
                is_root = pid == target.root_pid
                crashed = sig is not None and sig in CRASH_SIGNALS
                abnormal = is_root and ((sig is not None and sig != 0) or (code is not None and code != 0))
                if (crashed or abnormal) and pid not in self._exit_seen:
                    self._exit_seen.add(pid)
                    how = f"signal {_signame(sig)}" if sig else f"exit code {code}"
                    out.append(("exit", f"pid {pid} ({r.get('comm') or '?'}) exited with {how}"))
        child = rec.child
        if child is not None:
            # stderr_tail is a bounded deque of new str objects: the lines after the last one seen
            # (found by identity) are new, even once the deque is full and rotating.
            tail = list(child.stderr_tail)
            start = 0
            if self._stderr_last is not None:
                for i in range(len(tail) - 1, -1, -1):
                    if tail[i] is self._stderr_last:
                        start = i + 1
                        break
            for line in tail[start:]:
                if CUDA_OOM_RE.search(line):
                    out.append(("exit", f"CUDA out of memory in the target's stderr: {line.strip()[:160]}"))
                    break
            if tail:
                self._stderr_last = tail[-1]
        return out

    def _check_spike(self, spans: pa.Table | None, now: int) -> list[tuple[str, str]]:
        if spans is not None:
            self._spans_new += spans.num_rows
        if self._spans_new == 0 or now < self._next_spike_ns:
            return []
        self._next_spike_ns = now + SPIKE_CHECK_NS
        self._spans_new = 0
        allspans = self.ring.table("spans")
        if allspans.num_rows < SPIKE_MIN_SPANS:
            return []
        slow = slow_spans(allspans)
        end = allspans.column("end_ns").to_numpy(zero_copy_only=False)
        fresh = slow & (end > self._spike_seen_end_ns)
        self._spike_seen_end_ns = max(self._spike_seen_end_ns, int(end.max()))
        if not fresh.any():
            return []
        idx = np.flatnonzero(fresh)
        start = allspans.column("ts_ns").to_numpy(zero_copy_only=False)
        lat_ms = (end[idx] - start[idx]) / 1e6
        names = allspans.column("name").take(pa.array(idx)).to_pylist()
        med = float(np.median((end - start)[~slow])) / 1e6 if (~slow).any() else float("nan")
        return [("spike", f"{len(idx)} slow request(s) ({', '.join(sorted({str(n) for n in names}))[:80]}): "
                          f"up to {lat_ms.max():.0f} ms vs typical {med:.0f} ms")]

    def _check_thresholds(self, now: int) -> list[tuple[str, str]]:
        if now < self._next_threshold_ns:
            return []
        self._next_threshold_ns = now + THRESHOLD_CHECK_NS
        out = []
        for th in self.fo.thresholds:
            v = self.metrics.value(th.metric)
            holds = th.holds(v)
            was = self._threshold_state.get(th.text, False)
            self._threshold_state[th.text] = holds
            if holds and not was:  # edge-triggered: once per crossing
                out.append(("threshold", f"{th.text} (now {v:.4g})"))
        return out

    # Snapshots --------------------------------------------------------------------------------
    def fire(self, kind: str, detail: str, now_ns: int | None = None, force: bool = False) -> None:
        """Start a snapshot (or join the one in its tail). ``force`` ignores the cool-down, as
        SIGUSR1 does."""
        now = now_ns if now_ns is not None else clock.now_ns()
        if self.pending is not None:
            self.pending.also.append({"kind": kind, "detail": detail, "ts_ns": now})
            log(f"trigger {kind}: {detail}; joins the snapshot being captured ({self.pending.kind})")
            return
        if now < self.cooldown_until_ns and kind != "signal" and not force:
            self.suppressed += 1
            log(f"trigger {kind}: {detail}; suppressed (cool-down for another "
                f"{(self.cooldown_until_ns - now) / 1e9:.0f} s, {self.suppressed} suppressed so far)")
            return
        captured, cursor = self.ring.capture()
        self.pending = _Pending(kind, detail, now, captured, cursor, now + int(self.fo.tail_s * 1e9))
        log(f"trigger {kind}: {detail}; saving the last {self.fo.ring_s:g} s plus {self.fo.tail_s:g} s after it")

    def _finish_pending(self, now: int, cut_short: bool = False) -> Path | None:
        p = self.pending
        if p is None:
            return None
        self.pending = None
        self.cooldown_until_ns = p.trigger_ns + int(max(self.fo.cooldown_s, self.fo.tail_s) * 1e9)
        after, _ = self.ring.since(p.cursor)
        tables: dict[str, pa.Table] = {}
        for name in sorted(set(p.captured) | set(after)):
            parts = [t for t in (p.captured.get(name), after.get(name)) if t is not None and t.num_rows]
            if parts:
                tables[name] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            else:
                tables[name] = schema.TABLES[name].empty_table()
        manifest = self._snapshot_manifest(p, tables, now, cut_short)
        path = self._new_dir_name(p)
        try:
            self._queue.put_nowait((path, manifest, tables))
        except queue.Full:
            log(f"snapshot {path.name} dropped: the previous snapshots are still being written")
            return None
        return path

    def _snapshot_manifest(self, p: _Pending, tables: dict[str, pa.Table], now: int, cut_short: bool) -> dict[str, Any]:
        rec = self.recorder
        base = rec.manifest if rec is not None and getattr(rec, "manifest", None) else {}
        m: dict[str, Any] = json.loads(json.dumps(base, default=str))
        offset = int(m.get("clock", {}).get("monotonic_to_wall_ns") or clock.monotonic_to_wall_offset_ns())
        lo = hi = None
        for t in tables.values():
            if t.num_rows:
                mm = pc.min_max(t.column("ts_ns"))
                a, b = mm["min"].as_py(), mm["max"].as_py()
                lo = a if lo is None else min(lo, a)
                hi = b if hi is None else max(hi, b)
        start = lo if lo is not None else p.trigger_ns
        end = max(hi or now, p.trigger_ns)
        if rec is not None and rec.ctx is not None:
            m["notes"] = list(rec.ctx.notes)
            m["stats"] = rec.status()
        st = self.ring.stats()
        notes = m.setdefault("notes", [])
        if st["dropped_rows"]:
            notes.append(f"flight ring: {st['dropped_rows']} rows were evicted by the {human_bytes(self.fo.ring_bytes)} "
                         "size limit before they aged out; raise --ring-bytes to keep the full window")
        if cut_short:
            notes.append("flight snapshot: the recorder stopped before the tail after the trigger ended")
        m.update({
            "start_ns": start, "start_time": wall_iso(start + offset),
            "end_ns": end, "end_time": wall_iso(end + offset),
            "duration_s": round((end - start) / 1e9, 3),
            "complete": True, "stop_reason": f"flight snapshot ({p.kind})", "error": None,
            "tables": {k: v.num_rows for k, v in tables.items()},
            "trigger": {"kind": p.kind, "detail": p.detail, "ts_ns": p.trigger_ns,
                        "time": wall_iso(p.trigger_ns + offset), "also": p.also},
            "flight": {"ring_s": self.fo.ring_s, "ring_bytes": self.fo.ring_bytes, "tail_s": self.fo.tail_s,
                       "cut_short": cut_short, "recorder_start_ns": base.get("start_ns"),
                       "ring": {k: v for k, v in st.items() if k != "tables"}},
        })
        return m

    def _new_dir_name(self, p: _Pending) -> Path:
        rec = self.recorder
        offset = (rec.manifest.get("clock", {}).get("monotonic_to_wall_ns") if rec is not None and
                  getattr(rec, "manifest", None) else None) or clock.monotonic_to_wall_offset_ns()
        stamp = datetime.fromtimestamp((p.trigger_ns + offset) / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{p.kind}"
        path = self.fo.out_dir / name
        i = 2
        while path.exists() or path in self.snapshots:
            path = self.fo.out_dir / f"{name}-{i}"
            i += 1
        self.snapshots.append(path)
        return path

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            path, manifest, tables = item
            try:
                t0 = time.monotonic()
                size = write_snapshot(path, manifest, tables)
                rows = sum(t.num_rows for t in tables.values())
                self.saved.append(path)
                log(f"saved {path} ({rows} rows, {human_bytes(size)}, "
                    f"{manifest['duration_s']:.1f} s of data, written in {time.monotonic() - t0:.1f} s)")
                self._apply_retention(keep_path=path)
            except Exception as e:  # noqa: BLE001 - a failed snapshot never stops the flight recorder
                log(f"writing {path} failed: {e}")
            finally:
                del tables
                self._queue.task_done()

    def _apply_retention(self, keep_path: Path | None = None) -> None:
        for p in apply_retention(self.fo.out_dir, self.fo.keep, self.fo.keep_bytes, protect=keep_path):
            log(f"retention: deleted {p}")

    def _watch_ring(self) -> None:
        st = self.ring.stats()
        if st["dropped_rows"] > self._drop_logged and (self._drop_logged == 0 or st["dropped_rows"] >= 2 * self._drop_logged):
            log(f"ring size limit {human_bytes(self.fo.ring_bytes)} reached before {self.fo.ring_s:g} s: "
                f"{st['dropped_rows']} rows evicted early so far, holding {st['covered_ns'] / 1e9:.0f} s "
                "(raise --ring-bytes or shorten --ring)")
            self._drop_logged = st["dropped_rows"]
        now = clock.now_ns()
        if now >= self._next_status_ns:
            if self._next_status_ns:
                log(f"status: ring {st['covered_ns'] / 1e9:.0f} s / {human_bytes(st['bytes'])} "
                    f"(limit {human_bytes(self.fo.ring_bytes)}), {st['rows']} rows, {st['dropped_rows']} evicted early; "
                    f"process RSS {human_bytes(_self_rss())}; {len(self.saved)} snapshot(s) saved, "
                    f"{self.suppressed} suppressed")
            self._next_status_ns = now + int(self._status_every_s * 1e9)
        if not self._full_logged and st["covered_ns"] >= self.ring.duration_ns * 0.99:
            self._full_logged = True
            log(f"ring full: holding {st['covered_ns'] / 1e9:.0f} s in {human_bytes(st['bytes'])} "
                f"(limit {human_bytes(self.fo.ring_bytes)})")

    # End --------------------------------------------------------------------------------------
    def finish(self, rec: Recorder, manifest: dict[str, Any]) -> None:
        """After the recorder stopped: write a pending snapshot, catch a spawned target's bad exit,
        and wait for the writer."""
        now = clock.now_ns()
        if getattr(rec, "manifest", None):  # absent when the recorder failed before it started
            try:
                self._tick(rec)  # rows the last rounds emitted (the target's exit, a late OOM row)
            except Exception as e:  # noqa: BLE001
                log(f"internal error in the trigger loop: {e}")
        t = manifest.get("target") or {}
        code, sig = t.get("exit_code"), t.get("signal")
        root = t.get("pid")
        if "exit" in self.fo.triggers and rec.child is not None and root not in self._exit_seen and (
                (sig not in (None, 0)) or (code not in (None, 0))):
            self._exit_seen.add(root)
            how = f"signal {_signame(sig)}" if sig else f"exit code {code}"
            # The session ends here: no storm to protect against, so the cool-down does not apply.
            self.fire("exit", f"target pid {root} exited with {how}", now, force=True)
        if self.pending is not None:
            self._finish_pending(clock.now_ns(), cut_short=clock.now_ns() < self.pending.deadline_ns)
        self._queue.put(None)
        self._writer.join()


def _self_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _signame(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig else str(sig)
    except ValueError:
        return str(sig)


def write_snapshot(path: Path, manifest: dict[str, Any], tables: dict[str, pa.Table]) -> int:
    """Write an ordinary recording at ``path`` (through a hidden directory renamed at the end, so a
    reader or the retention never sees half a snapshot). Returns its size in bytes."""
    tmp = path.parent / f".partial-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    w = RecordingWriter(tmp, manifest)
    try:
        for name, t in tables.items():
            w.writer(name)  # every table the ring saw exists in the snapshot, even if empty now
            if t.num_rows:
                w.emit_batch(name, t)
        w.close()
        if w.failed:
            raise WriteError(w.failed)
        manifest["tables"] = w.rows()
        w.write_manifest()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, path)
    return dir_size(path)


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def list_snapshots(out_dir: Path) -> list[Path]:
    """Snapshot directories in ``out_dir`` (ours: named by time and trigger, with a manifest), oldest
    first."""
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return []
    snaps = [p for p in entries if SNAPSHOT_NAME_RE.match(p.name) and p.is_dir() and not p.is_symlink()
             and (p / schema.MANIFEST_NAME).is_file()]
    return sorted(snaps, key=lambda p: p.name)


def apply_retention(out_dir: Path, max_count: int | None, max_bytes: int | None,
                    protect: Path | None = None) -> list[Path]:
    """Delete the oldest snapshots until at most ``max_count`` remain and they total at most
    ``max_bytes``. ``protect`` (the snapshot just written) is never deleted, even if it alone
    exceeds ``max_bytes``. Returns what was deleted."""
    snaps = list_snapshots(out_dir)
    sizes = {p: dir_size(p) for p in snaps}
    deleted: list[Path] = []
    total = sum(sizes.values())
    for p in snaps:  # oldest first
        over_count = max_count is not None and len(snaps) - len(deleted) > max_count
        over_bytes = max_bytes is not None and total > max_bytes
        if not (over_count or over_bytes):
            break
        if protect is not None and p == protect:
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            deleted.append(p)
            total -= sizes[p]
    return deleted


class FlightSession(Recorder):
    """The Recorder with the flight recorder's additions: in host mode, the top processes by RSS are
    sampled (probes/toprss.py) so a snapshot shows the victim's growth before a kill."""

    def _build_collectors(self) -> list[tuple[str, Callable[[], Any] | str]]:
        wanted = super()._build_collectors()
        o = self.opts
        if o.pid is None and not o.command and not o.cgroup:
            copts = dict(o.collector_options)
            from autoglm_trace.probes.toprss import TopRssSampler

            wanted.append(("toprss", lambda: TopRssSampler(copts)))
        return wanted


def flight_options(args: argparse.Namespace, opts: RecordOptions) -> FlightOptions:
    """Validate the --ring family of options (UsageError on anything wrong)."""
    def bad(msg: str) -> UsageError:
        return UsageError(f"record: {msg}")

    try:
        ring_s = parse_duration(args.ring)
    except ValueError as e:
        raise bad(f"--ring: {e}") from None
    if ring_s < 1:
        raise bad("--ring must be at least 1 s")
    try:
        ring_bytes = parse_size(args.ring_bytes) if args.ring_bytes else DEFAULT_RING_BYTES
        keep_bytes = parse_size(args.keep_bytes) if args.keep_bytes else None
        tail_s = parse_duration(args.tail) if args.tail is not None else DEFAULT_TAIL_S
        cooldown_s = parse_duration(args.cooldown) if getattr(args, "cooldown", None) is not None else DEFAULT_COOLDOWN_S
    except ValueError as e:
        raise bad(str(e)) from None
    if ring_bytes < 1 << 20:
        raise bad("--ring-bytes must be at least 1M")
    if args.keep is not None and args.keep < 1:
        raise bad("--keep must be at least 1")
    if keep_bytes is not None and keep_bytes <= 0:
        raise bad("--keep-bytes must be positive")
    thresholds = []
    for text in args.trigger_expr or []:
        try:
            thresholds.append(parse_expr(text))
        except ValueError as e:
            raise bad(f"--trigger-expr: {e}") from None
    if args.trigger:
        trig = [t.strip() for t in args.trigger.split(",") if t.strip()]
        unknown = [t for t in trig if t not in TRIGGERS and t != "all"]
        if unknown:
            raise bad(f"--trigger: unknown trigger {unknown[0]!r}; choose from {', '.join(TRIGGERS)}")
        if "all" in trig:
            trig = list(TRIGGERS)
        if "threshold" in trig and not thresholds:
            if args.trigger.strip() != "all":
                raise bad("--trigger threshold needs --trigger-expr METRIC>VALUE")
            trig.remove("threshold")
        if thresholds and "threshold" not in trig:
            trig.append("threshold")
    else:
        trig = list(DEFAULT_TRIGGERS) + (["threshold"] if thresholds else [])
    out = Path(args.output) if args.output else Path("autoglm-flight")
    return FlightOptions(out_dir=out, ring_s=ring_s, ring_bytes=ring_bytes, triggers=tuple(trig),
                         thresholds=thresholds, tail_s=tail_s, cooldown_s=cooldown_s, keep=args.keep,
                         keep_bytes=keep_bytes)


def prepare_out_dir(path: Path) -> None:
    if path.is_symlink():
        raise WriteError(f"{path} is a symbolic link; refusing to write snapshots through it")
    if path.exists() and not path.is_dir():
        raise WriteError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WriteError(f"{path} is not writable")
    # Half-written snapshots of a recorder that was killed mid-write.
    for p in path.glob(".partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def main_ring(args: argparse.Namespace, opts: RecordOptions) -> int:
    """``record --ring``: run until SIGTERM / SIGINT (or --duration), saving a snapshot per trigger."""
    fo = flight_options(args, opts)
    if getattr(args, "live", False):
        raise UsageError("record: --live does not combine with --ring (the flight recorder logs one line per "
                         "event); run 'autoglm-trace top' beside it")
    prepare_out_dir(fo.out_dir)
    opts.output = fo.out_dir  # never written to by the Recorder (write_files=False)
    extra: list[Any] = []
    if getattr(args, "prometheus", None):  # a service can export metrics while it flight-records
        from autoglm_trace.tracer.live_view import side_outputs

        extra, _, _ = side_outputs(False, args.prometheus)  # the recorder closes its sinks
    flight = FlightRecorder(fo)
    rec = FlightSession(opts, on_tick=flight.tick, sinks=[flight.ring, *extra], write_files=False)
    restore = install_signal_handlers(rec)
    prev_usr1 = signal.signal(signal.SIGUSR1, lambda *_: flight.signal_requested.set())
    for p in apply_retention(fo.out_dir, fo.keep, fo.keep_bytes):
        log(f"retention: deleted {p}")
    log(f"started (pid {os.getpid()}): ring {fo.ring_s:g} s / {human_bytes(fo.ring_bytes)}, triggers "
        f"{','.join(fo.triggers)}{' (' + '; '.join(t.text for t in fo.thresholds) + ')' if fo.thresholds else ''}, "
        f"tail {fo.tail_s:g} s, snapshots in {fo.out_dir}"
        + (f", keep {fo.keep}" if fo.keep else "") + (f", keep {human_bytes(fo.keep_bytes)}" if fo.keep_bytes else ""))
    manifest: dict[str, Any] = {}
    try:
        try:
            manifest = rec.run()
        finally:
            signal.signal(signal.SIGUSR1, prev_usr1)
            restore()
            if rec.ctx is not None and not manifest:
                manifest = getattr(rec, "manifest", {}) or {}
            flight.finish(rec, manifest or {})
    except KeyboardInterrupt:
        raise
    log(f"stopped ({manifest.get('stop_reason') or 'error'}): {len(flight.saved)} snapshot(s) saved, "
        f"{flight.suppressed} trigger(s) suppressed by the cool-down")
    if manifest.get("error"):
        raise WriteError(manifest["error"])
    return 0
