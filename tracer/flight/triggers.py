"""Flight-recorder triggers: what in the newly arrived rows starts a snapshot.

``Triggers.check`` runs each sampling tick over the rows that arrived since the previous one (read
from the ring by the recorder) and returns the triggers that fired, as (kind, detail) pairs:
``oom`` (an ``oom_kills`` row), ``exit`` (a crash or abnormal exit of the target, CUDA out-of-memory
text in a spawned target's stderr), ``spike`` (a slow request, by the analysis' own detector) and
``threshold`` (a ``--trigger-expr`` comparison turning true). ``signal`` (SIGUSR1) is the recorder's.

Threshold metrics are derived by ``MetricState`` with the signals module (autoglm_trace/signals.py),
so ``runq_wait_ms_p99`` is the same p99 that ``top``, ``/metrics`` and the report show.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace import schema
from autoglm_trace.analysis.spikes import score_spans
from autoglm_trace.signals import SIZE_UNITS, column, counter_step, human_bytes, log2_quantile, log2_rows

TRIGGERS = ("oom", "exit", "spike", "signal", "threshold")
DEFAULT_TRIGGERS = ("oom", "exit", "spike", "signal")
SPIKE_CHECK_NS = 1_000_000_000
SPIKE_MIN_SPANS = 20
THRESHOLD_CHECK_NS = 1_000_000_000
# Signals that mean a process crashed or was killed, not asked to stop (SIGTERM/SIGINT/SIGHUP/SIGPIPE
# end processes during ordinary deploys and pipelines).
CRASH_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE,
                 signal.SIGILL, signal.SIGSYS, signal.SIGTRAP}
CUDA_OOM_RE = re.compile(r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|"
                         r"CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation", re.I)
# The tables each trigger reads each tick (only those of enabled triggers are fetched).
TRIGGER_TABLES = {"oom": ("oom_kills",), "exit": ("proc_events",), "spike": ("spans",)}
METRIC_TABLES = {"gpu_": ("gpu_devices",), "rss_bytes": ("proc_samples",), "max_rss_bytes": ("proc_samples",),
                 "host_": ("host_samples",), "swap_": ("host_samples",), "load1": ("host_samples",),
                 "psi_": ("host_samples",), "runq_": ("sched",)}


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


def slow_spans(spans: pa.Table) -> np.ndarray:
    """Boolean mask of the spans that are slow for the work they did: the analysis' own detector
    (analysis/spikes.py), so ``analyze`` and the flight recorder agree."""
    sc = score_spans(spans)
    if sc is None:
        return np.zeros(spans.num_rows, dtype=bool)
    return np.asarray(sc.slow, dtype=bool)


# The trigger checks -----------------------------------------------------------------------------
class Triggers:
    """The enabled triggers and what each remembers between ticks (exits seen, the last stderr line
    read, spans seen, which thresholds hold). ``ring`` is read for the spike detector's history."""

    def __init__(self, kinds: tuple[str, ...], thresholds: list[Threshold], ring: Any) -> None:
        self.kinds = kinds
        self.thresholds = thresholds
        self.ring = ring
        self.metrics = MetricState()
        self._threshold_state: dict[str, bool] = {}
        self._next_threshold_ns = 0
        self._next_spike_ns = 0
        self._spans_new = 0
        self._spike_seen_end_ns = 0
        self._exit_seen: set[int] = set()
        self._stderr_last: str | None = None

    @property
    def tables(self) -> tuple[str, ...]:
        """The ring tables the enabled triggers read."""
        watched = {t for k in self.kinds for t in TRIGGER_TABLES.get(k, ())}
        if "threshold" in self.kinds:
            for th in self.thresholds:
                watched.update(t for prefix, tables in METRIC_TABLES.items() if th.metric.startswith(prefix)
                               for t in tables)
        return tuple(sorted(watched))

    def check(self, rec: Any, new: dict[str, pa.Table], now: int) -> list[tuple[str, str]]:
        """The triggers that fired on the rows ``new`` (table -> rows since the last tick)."""
        fired: list[tuple[str, str]] = []
        if "oom" in self.kinds:
            fired += self._check_oom(new.get("oom_kills"))
        if "exit" in self.kinds:
            fired += self._check_exit(rec, new.get("proc_events"))
        if "spike" in self.kinds:
            fired += self._check_spike(new.get("spans"), now)
        if "threshold" in self.kinds and self.thresholds:
            self.metrics.update(new)
            fired += self._check_thresholds(now)
        return fired

    def final_exit(self, rec: Any, manifest: dict[str, Any]) -> str | None:
        """At the end of the session: a spawned target's bad exit status not yet seen as a row."""
        t = manifest.get("target") or {}
        code, sig = t.get("exit_code"), t.get("signal")
        root = t.get("pid")
        if "exit" in self.kinds and rec.child is not None and root not in self._exit_seen and (
                (sig not in (None, 0)) or (code not in (None, 0))):
            self._exit_seen.add(root)
            how = f"signal {_signame(sig)}" if sig else f"exit code {code}"
            return f"target pid {root} exited with {how}"
        return None

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

    def _check_exit(self, rec: Any, t: pa.Table | None) -> list[tuple[str, str]]:
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
        for th in self.thresholds:
            v = self.metrics.value(th.metric)
            holds = th.holds(v)
            was = self._threshold_state.get(th.text, False)
            self._threshold_state[th.text] = holds
            if holds and not was:  # edge-triggered: once per crossing
                out.append(("threshold", f"{th.text} (now {v:.4g})"))
        return out


def _signame(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig else str(sig)
    except ValueError:
        return str(sig)
