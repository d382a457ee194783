"""Prometheus /metrics for a running recording (``record --prometheus``, ``top --prometheus``).

``PrometheusExporter`` is a recorder sink (autoglm_trace/sinks.py): every batch a collector emits reaches
``emit_batch`` and is folded into running totals right away, vectorised per batch (numpy / pyarrow;
Python loops run only over the per-batch groups -- pids, devices, probes -- never over events). A
custom collector registered in the exporter's own ``CollectorRegistry`` turns those totals into
metric families at scrape time.

Why a custom collector rather than prometheus_client's Histogram objects: the kernel tables carry
log2 histograms (bucket i counts values in [2**(i-1), 2**i) microseconds), not the raw values, so
the honest exposition is those bucket counts made cumulative with ``le = 2**i`` us. Spans do carry
exact durations; they are bucketed here into fixed bounds.

Sources, chosen so that every series is a true counter (never decreasing):

* context switches, page faults, CPU seconds and RSS come from ``proc_samples`` -- the kernel's own
  per-process cumulative counters (/proc/PID/status, /proc/PID/stat), exact and available without
  root. A pid whose counter goes backwards (pid reuse) keeps its earlier total and adds the new
  value (the reset rule of autoglm_trace/signals.py, Prometheus' own), so rate() over these series
  equals the analysis' rates.
* run-queue latency, off-CPU time by state and preemptors come from ``sched`` / ``preemptions``;
  block I/O from ``block_io``; reclaim stalls from ``reclaim``; OOM kills from ``oom_kills`` (all
  kernel probes, root); GPU gauges from ``gpu_devices`` / ``gpu_processes`` (NVML); request latency
  from ``spans``; losses from ``probe_stats``.

Label cardinality is bounded. Data is kept per pid internally; a pid's label is decided when it is
first exposed (a scrape) or compacted: a process alive at the latest /proc sample gets its own
``pid`` label while fewer than ``max_pids`` are taken, anything else -- later pids, and the short-lived
ones (shell helpers, shims) that came and went between scrapes -- is folded into ``pid="other"``.
A label never changes once given, and folded totals only grow, so every counter stays monotonic.
Dead processes are folded (no label) or, when they had a label, dropped ``LABEL_TTL_S`` after their
last sample, freeing the slot; memory stays bounded by the live processes. Span names, preemptor
comms and OOM victim comms are bounded the same way (first come).
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from autoglm_trace.errors import UsageError
from autoglm_trace.signals import CLOCK_EVENTS, LOG2_LE_S, counter_step, fold_log2, log2_rows, values

PREFIX = "autoglm_trace_"
OTHER = "other"
DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9464
LABEL_TTL_S = 60.0  # a labelled process that has exited keeps its series this long
COMPACT_EVERY = 64  # proc_samples batches between compactions (also at every scrape)

# Request latency bounds (seconds): LLM requests run from milliseconds to minutes.
SPAN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                  120.0, 300.0)

# Every family the exporter can serve: name (without _total) -> (type, help, labels).
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "context_switches": ("counter", "Context switches of the process, all threads (/proc/PID/status)",
                         ("pid", "comm", "kind")),
    "page_faults": ("counter", "Page faults of the process, all threads (/proc/PID/stat minflt/majflt)",
                    ("pid", "comm", "kind")),
    "process_cpu_seconds": ("counter", "CPU time of the process (/proc/PID/stat utime/stime)",
                            ("pid", "comm", "mode")),
    "process_rss_bytes": ("gauge", "Resident set size of the process at the latest sample", ("pid", "comm")),
    "processes": ("gauge", "Processes in the target tree at the latest sample", ()),
    "runq_latency_seconds": ("histogram", "Run-queue latency of target threads (wakeup or preemption "
                             "to run), from in-kernel log2 histograms", ("pid", "comm")),
    "offcpu_seconds": ("counter", "Off-CPU time of target threads by state (sleep = S, dstate = D, "
                       "preempted = runnable, waiting for a CPU)", ("pid", "comm", "state")),
    "oncpu_seconds": ("counter", "On-CPU time of target threads (sched_switch)", ("pid", "comm")),
    "preemptions": ("counter", "Involuntary switches of target threads in favour of another task",
                    ("preemptor", "in_target")),
    "preemption_wait_seconds": ("counter", "Run-queue wait of target threads charged to the task that ran",
                                ("preemptor", "in_target")),
    "block_io_latency_seconds": ("histogram", "Block request issue-to-complete latency, from in-kernel "
                                 "log2 histograms", ("dev", "op", "in_target")),
    "block_io_bytes": ("counter", "Bytes of completed block requests", ("dev", "op", "in_target")),
    "reclaim_stall_seconds": ("counter", "Time stalled in direct / memcg reclaim", ("kind", "in_target")),
    "reclaim_stalls": ("counter", "Direct / memcg reclaim stalls (and kswapd wakeups)", ("kind", "in_target")),
    "oom_kills": ("counter", "OOM-killer victims on the host (oom:mark_victim)", ("comm", "in_target")),
    "gpu_memory_used_bytes": ("gauge", "GPU memory used (NVML)", ("gpu",)),
    "gpu_memory_total_bytes": ("gauge", "GPU memory total (NVML)", ("gpu",)),
    "gpu_utilization_ratio": ("gauge", "Fraction of the driver's sample window in which a kernel ran "
                              "(not SM occupancy)", ("gpu",)),
    "gpu_memory_utilization_ratio": ("gauge", "Memory controller busy fraction", ("gpu",)),
    "gpu_power_watts": ("gauge", "GPU power draw (1 s average on Ampere+)", ("gpu",)),
    "gpu_power_limit_watts": ("gauge", "Enforced GPU power limit", ("gpu",)),
    "gpu_sm_clock_hertz": ("gauge", "SM clock", ("gpu",)),
    "gpu_temperature_celsius": ("gauge", "GPU temperature", ("gpu",)),
    "gpu_throttle_active": ("gauge", "1 while the clocks-event (throttle) reason is active", ("gpu", "reason")),
    "gpu_process_memory_bytes": ("gauge", "GPU memory used per compute process", ("gpu", "pid")),
    "lost_events": ("counter", "Events the probes lost (buffer overruns, full maps); never silent",
                    ("probe", "reason")),
    "probe_events": ("counter", "Events the probes handled", ("probe",)),
    "span_latency_seconds": ("histogram", "Request latency (span end - start)", ("name",)),
    "span_ttft_seconds": ("histogram", "Time to first token, where the span marked it", ("name",)),
    "span_failures": ("counter", "Spans that ended with ok = false", ("name",)),
    "rows": ("counter", "Rows received per recording table", ("table",)),
}


def metric_names() -> list[str]:
    """Every sample-name stem the exporter can serve (``autoglm_trace_*``; add ``_total`` to counters
    and ``_bucket`` / ``_sum`` / ``_count`` to histograms for the series names)."""
    return [PREFIX + n for n in METRICS]


def series_names() -> set[str]:
    """Every sample name the exporter can serve, as a PromQL query names it."""
    out: set[str] = set()
    for n, (typ, _, _) in METRICS.items():
        full = PREFIX + n
        if typ == "counter":
            out.add(full + "_total")
        elif typ == "histogram":
            out.update({full + "_bucket", full + "_sum", full + "_count"})
        else:
            out.add(full)
    return out


def parse_listen(spec: str, default_addr: str = DEFAULT_ADDR) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (addr, port). Binds loopback unless told."""
    s = spec.strip()
    m = re.fullmatch(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)", s)
    if m:
        addr = m.group("v6") or m.group("host") or default_addr
        port_s = m.group("port")
    elif s.isdigit():
        addr, port_s = default_addr, s
    else:
        raise UsageError(f"--prometheus: expected [ADDR:]PORT, got {spec!r}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise UsageError(f"--prometheus: port {port} out of range")
    return addr, port


class _Folder:
    """First ``limit`` distinct keys keep their own label, the rest share ``other``. A key never
    changes label, so a counter summed per label never goes backwards."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.labels: dict[Any, str] = {}
        self._own = 0

    def __call__(self, key: Any) -> str:
        lab = self.labels.get(key)
        if lab is None:
            if self._own < self.limit:
                lab = str(key)
                self._own += 1
            else:
                lab = OTHER
            if len(self.labels) < 1_000_000:  # remembering folded keys is only an optimisation
                self.labels[key] = lab
        return lab


def _np(col: pa.ChunkedArray | pa.Array, dtype: Any = np.int64, fill: Any = 0) -> np.ndarray:
    """A batch column by the null rule of autoglm_trace/signals.py; a missing reading adds 0 unless told."""
    return values(col, dtype, fill)


def _strs(col: pa.ChunkedArray | pa.Array, fill: str = "") -> list[str]:
    if col.null_count:
        col = pc.fill_null(col, fill)
    return col.to_pylist()


def _groups(*keys: np.ndarray | list) -> tuple[list[tuple], np.ndarray]:
    """Distinct key tuples of the batch and each row's group index."""
    n = len(keys[0])
    if n == 0:
        return [], np.empty(0, np.int64)
    if len(keys) == 1:
        u, inv = np.unique(np.asarray(keys[0]), return_inverse=True)
        return [(x.item() if hasattr(x, "item") else x,) for x in u], inv.reshape(-1)
    index: dict[tuple, int] = {}
    inv = np.empty(n, np.int64)
    cols = [k.tolist() if isinstance(k, np.ndarray) else k for k in keys]
    # One dict lookup per row of an aggregated table (rows are per bucket x key, not events).
    for i, t in enumerate(zip(*cols)):
        inv[i] = index.setdefault(t, len(index))
    return list(index), inv


def _group_sum(inv: np.ndarray, ngroups: int, values: np.ndarray) -> np.ndarray:
    if values.ndim == 1:
        return np.bincount(inv, weights=values, minlength=ngroups)
    out = np.zeros((ngroups, values.shape[1]))
    np.add.at(out, inv, values)
    return out


class _Hist:
    __slots__ = ("buckets", "sum")

    def __init__(self, nb: int) -> None:
        self.buckets = np.zeros(nb)
        self.sum = 0.0


class PrometheusExporter:
    """A recorder sink serving ``autoglm_trace_*`` metrics. ``start(addr, port)`` opens /metrics."""

    def __init__(self, max_pids: int = 20, max_names: int = 20, max_comms: int = 20) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.RLock()
        self._pid = _Folder(max_pids)
        self._name = _Folder(max_names)
        self._comm = _Folder(max_comms)
        self._comms: dict[int, str] = {}
        self.counters: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        self.hists: dict[str, dict[tuple[str, ...], _Hist]] = defaultdict(dict)
        self.gauges: dict[str, dict[tuple[str, ...], float]] = {}
        # Per-pid state, labelled at exposure: counters keyed (pid, *other labels), histograms by pid,
        # and what folded (dead, unlabelled) pids contributed, keyed without the pid.
        self._pc: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._ph: dict[str, dict[int, _Hist]] = defaultdict(dict)
        self._pc_other: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._ph_other: dict[str, _Hist] = {}
        # proc_samples: pid -> row of the arrays below (last reading; total increase so far, which is
        # what a counter series exposes); rows of folded pids are reused.
        self._proc_slot: dict[int, int] = {}
        self._proc_free: list[int] = []
        self._proc_last = np.full((64, len(self._PROC_COLS)), np.nan)
        self._proc_total = np.zeros((64, len(self._PROC_COLS)))
        self._proc_other = np.zeros(len(self._PROC_COLS))
        self._proc_seen: dict[int, int] = {}
        self._proc_ts = -1
        self._proc_batches = 0
        self._rss: dict[int, float] = {}
        self._gpu_ts: dict[int, int] = {}
        self._gpu_proc_ts: dict[int, int] = {}
        self._gpu_proc: dict[int, dict[int, float]] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.addr: str | None = None
        self.port: int | None = None
        self.registry.register(self)

    # Serving -----------------------------------------------------------------------------------
    def start(self, addr: str = DEFAULT_ADDR, port: int = DEFAULT_PORT) -> PrometheusExporter:
        """Serve /metrics on addr:port (port 0: any free port; see ``self.port``)."""
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise UsageError(f"--prometheus: cannot listen on {addr}:{port}: {e.strerror or e}") from None
        self.addr = addr
        self.port = int(self._server.server_port)
        return self

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = f"[{self.addr}]" if self.addr and ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def flush(self) -> None:
        """Nothing is buffered: totals are updated as batches arrive."""

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    # Ingest ------------------------------------------------------------------------------------
    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        n = batch.num_rows
        if n == 0:
            return
        handler = getattr(self, f"_on_{table}", None)
        with self._lock:
            self.counters["rows"][(table,)] += n
            if handler is not None:
                handler(batch)

    def _alive(self, pid: int) -> bool:
        # Without /proc samples (host mode) nothing tells who is alive: first come, first served.
        return self._proc_ts < 0 or pid in self._rss

    def _label(self, pid: int) -> str:
        """The pid's label, decided now if it has none: its own while slots remain and it is alive."""
        f = self._pid
        lab = f.labels.get(pid)
        if lab is None:
            if f._own < f.limit and self._alive(pid):
                lab = str(pid)
                f._own += 1
            else:
                lab = OTHER
            f.labels[pid] = lab
        return lab

    def _pid_labels(self, pid: int) -> tuple[str, str]:
        lab = self._label(pid)
        if lab == OTHER:
            return OTHER, OTHER
        return lab, self._comms.get(pid, "")

    def _learn_comms(self, pids: np.ndarray, comms: list[str], override: bool = False) -> None:
        for p, c in zip(pids.tolist(), comms):
            if c and (override or p not in self._comms):
                self._comms[p] = c

    def _on_processes(self, b: pa.RecordBatch) -> None:
        # The process comm (not a thread's) names the pid's series; a row after an exec updates it
        # (until the pid's series is first exposed, when its labels are fixed).
        pids = _np(b.column("pid"))
        fixed = {p for p in pids.tolist() if self._pid.labels.get(p, OTHER) != OTHER}
        comms = _strs(b.column("comm"))
        keep = [i for i, p in enumerate(pids.tolist()) if p not in fixed]
        self._learn_comms(pids[keep], [comms[i] for i in keep], override=True)

    def _compact(self) -> None:
        """Fold exited, unlabelled pids into the "other" totals and free the slots of labelled pids
        gone for LABEL_TTL_S: per-pid state stays bounded by the live processes."""
        if self._proc_ts < 0:
            return
        known = set(self._proc_slot)
        for d in self._pc.values():
            known.update(k[0] for k in d)
        for d in self._ph.values():
            known.update(d)
        for g in self._gpu_proc.values():
            known.update(g)
        gone = [p for p in known if p not in self._rss]
        for pid in gone:
            lab = self._label(pid)
            if lab != OTHER:
                if self._proc_ts - self._proc_seen.get(pid, self._proc_ts) < LABEL_TTL_S * 1e9:
                    continue
                self._pid._own -= 1  # its series end; the slot is free again
            else:
                self._fold(pid)
            self._forget(pid)

    def _fold(self, pid: int) -> None:
        for name, d in self._pc.items():
            for k in [k for k in d if k[0] == pid]:
                self._pc_other[name][k[1:]] += d[k]
        for name, d in self._ph.items():
            h = d.get(pid)
            if h is not None:
                o = self._ph_other.get(name)
                if o is None:
                    o = self._ph_other[name] = _Hist(h.buckets.size)
                o.buckets += h.buckets
                o.sum += h.sum
        i = self._proc_slot.get(pid)
        if i is not None:
            self._proc_other += self._proc_total[i]

    def _forget(self, pid: int) -> None:
        for d in self._pc.values():
            for k in [k for k in d if k[0] == pid]:
                del d[k]
        for d in self._ph.values():
            d.pop(pid, None)
        i = self._proc_slot.pop(pid, None)
        if i is not None:
            self._proc_last[i] = np.nan
            self._proc_total[i] = 0.0
            self._proc_free.append(i)
        self._proc_seen.pop(pid, None)
        self._pid.labels.pop(pid, None)
        self._comms.pop(pid, None)

    _PROC_COLS = ("ctx_voluntary", "ctx_involuntary", "minflt", "majflt", "cpu_user_s", "cpu_system_s")

    def _on_proc_samples(self, b: pa.RecordBatch) -> None:
        ts = _np(b.column("ts_ns"))
        pid = _np(b.column("pid"))
        vals = np.stack([_np(b.column(c), np.float64, np.nan) for c in self._PROC_COLS], axis=1)
        rss = _np(b.column("rss_bytes"), np.float64, np.nan)
        order = np.argsort(ts, kind="stable")
        # The last sample of each pid in the batch (np.unique on the reversed order keeps it).
        rev = order[::-1]
        upid, idx = np.unique(pid[rev], return_index=True)
        new = vals[rev[idx]]
        slot = self._proc_slot
        for p in upid.tolist():
            if p not in slot:
                slot[p] = self._proc_free.pop() if self._proc_free else len(slot)
        rows = np.fromiter((slot[p] for p in upid.tolist()), np.int64, upid.size)
        need = int(rows.max()) + 1
        if need > self._proc_last.shape[0]:
            grow = max(need, 2 * self._proc_last.shape[0]) - self._proc_last.shape[0]
            self._proc_last = np.vstack([self._proc_last, np.full((grow, new.shape[1]), np.nan)])
            self._proc_total = np.vstack([self._proc_total, np.zeros((grow, new.shape[1]))])
        prev = self._proc_last[rows]
        v = np.where(np.isnan(new), prev, new)  # a missing reading keeps the last one
        # The one reset rule (autoglm_trace/signals.py): a counter that went backwards restarted (a new
        # process under a reused pid) and its new value is the increase; a pid's first reading is its
        # increase from zero. The exposed total therefore never goes backwards.
        step = np.where(np.isnan(prev), v, counter_step(prev, v))
        self._proc_total[rows] += np.nan_to_num(step)
        self._proc_last[rows] = v
        tlast = ts[rev[idx]]
        for p, t in zip(upid.tolist(), tlast.tolist()):
            self._proc_seen[p] = t
        tmax = int(ts.max())
        if tmax > self._proc_ts:
            # RSS is a gauge of the processes alive at the latest sample.
            at = ts == tmax
            self._rss = {int(p): (float(r) if np.isfinite(r) else 0.0) for p, r in zip(pid[at], rss[at])}
            self._proc_ts = tmax
        self._proc_batches += 1
        if self._proc_batches % COMPACT_EVERY == 0:
            self._compact()

    def _on_sched(self, b: pa.RecordBatch) -> None:
        pid = _np(b.column("pid"))
        self._learn_comms(pid, _strs(b.column("comm")))
        keys, inv = _groups(pid)
        g = len(keys)
        hist = _group_sum(inv, g, log2_rows(b.column("runq_hist")))
        wait = _group_sum(inv, g, _np(b.column("runq_wait_ns"), np.float64))
        on = _group_sum(inv, g, _np(b.column("oncpu_ns"), np.float64))
        off = {s: _group_sum(inv, g, _np(b.column(f"offcpu_{s}_ns"), np.float64))
               for s in ("sleep", "dstate", "preempted")}
        c = self._pc
        folded = fold_log2(hist)
        runq = self._ph["runq_latency_seconds"]
        for j, (p,) in enumerate(keys):
            h = runq.get(p)
            if h is None:
                h = runq[p] = _Hist(folded.shape[1])
            h.buckets += folded[j]
            h.sum += wait[j] / 1e9
            c["oncpu_seconds"][(p,)] += on[j] / 1e9
            for s, arr in off.items():
                c["offcpu_seconds"][(p, s)] += arr[j] / 1e9

    def _on_preemptions(self, b: pa.RecordBatch) -> None:
        comm = _strs(b.column("preemptor_comm"), "?")
        intgt = ["true" if x else "false" for x in _strs(b.column("preemptor_in_target"), False)]
        keys, inv = _groups(comm, intgt)
        cnt = _group_sum(inv, len(keys), _np(b.column("count"), np.float64))
        wait = _group_sum(inv, len(keys), _np(b.column("wait_ns"), np.float64))
        for j, (cm, it) in enumerate(keys):
            lab = (self._preemptor(cm), it)
            self.counters["preemptions"][lab] += cnt[j]
            self.counters["preemption_wait_seconds"][lab] += wait[j] / 1e9

    def _preemptor(self, comm: str) -> str:
        lab = self._comm(("preemptor", comm))
        return comm if lab != OTHER else OTHER

    def _on_block_io(self, b: pa.RecordBatch) -> None:
        dev = _strs(b.column("dev"), "?")
        op = _strs(b.column("op"), "O")
        intgt = ["true" if x else "false" for x in _strs(b.column("in_target"), False)]
        keys, inv = _groups(dev, op, intgt)
        g = len(keys)
        hist = _group_sum(inv, g, log2_rows(b.column("lat_hist")))
        lat = _group_sum(inv, g, _np(b.column("lat_sum_ns"), np.float64))
        byt = _group_sum(inv, g, _np(b.column("bytes"), np.float64))
        folded = fold_log2(hist)
        for j, lab in enumerate(keys):
            self._add_hist("block_io_latency_seconds", lab, folded[j], lat[j] / 1e9)
            self.counters["block_io_bytes"][lab] += byt[j]

    def _on_reclaim(self, b: pa.RecordBatch) -> None:
        kind = _strs(b.column("kind"), "direct")
        intgt = ["true" if x else "false" for x in _strs(b.column("in_target"), False)]
        keys, inv = _groups(kind, intgt)
        dur = _group_sum(inv, len(keys), _np(b.column("duration_ns"), np.float64))
        cnt = np.bincount(inv, minlength=len(keys))
        for j, lab in enumerate(keys):
            self.counters["reclaim_stall_seconds"][lab] += dur[j] / 1e9
            self.counters["reclaim_stalls"][lab] += float(cnt[j])

    def _on_oom_kills(self, b: pa.RecordBatch) -> None:
        comm = _strs(b.column("comm"), "?")
        intgt = _strs(b.column("in_target"), False)
        for cm, it in zip(comm, intgt):  # one row per kill: rare by nature
            lab = self._comm(("oom", cm))
            self.counters["oom_kills"][(cm if lab != OTHER else OTHER, "true" if it else "false")] += 1

    def _on_probe_stats(self, b: pa.RecordBatch) -> None:
        probe = _strs(b.column("probe"), "?")
        reason = _strs(b.column("reason"), "")
        lost = _np(b.column("lost"), np.float64)
        events = _np(b.column("events"), np.float64)
        keys, inv = _groups(probe, reason)
        lsum = _group_sum(inv, len(keys), lost)
        for j, lab in enumerate(keys):
            self.counters["lost_events"][lab] += lsum[j]
            # A probe with nothing lost still exports 0, so "no loss" is visible rather than absent.
        pkeys, pinv = _groups(probe)
        esum = _group_sum(pinv, len(pkeys), events)
        for j, lab in enumerate(pkeys):
            self.counters["probe_events"][lab] += esum[j]

    def _on_gpu_devices(self, b: pa.RecordBatch) -> None:
        ts = _np(b.column("ts_ns"))
        gpu = _np(b.column("gpu"))
        rev = np.argsort(ts, kind="stable")[::-1]
        ug, idx = np.unique(gpu[rev], return_index=True)
        rows = rev[idx]
        cols = {name: b.column(name) for name in b.schema.names}

        def val(name: str, i: int, scale: float = 1.0) -> float | None:
            v = cols[name][i].as_py()
            return None if v is None else float(v) * scale

        for g, i in zip(ug.tolist(), rows.tolist()):
            t = int(ts[i])
            if t < self._gpu_ts.get(g, -1):
                continue
            self._gpu_ts[g] = t
            lab = (str(g),)
            for metric, col, scale in (
                ("gpu_memory_used_bytes", "mem_used_bytes", 1.0),
                ("gpu_memory_total_bytes", "mem_total_bytes", 1.0),
                ("gpu_utilization_ratio", "util_gpu_pct", 0.01),
                ("gpu_memory_utilization_ratio", "util_mem_pct", 0.01),
                ("gpu_power_watts", "power_mw", 1e-3),
                ("gpu_power_limit_watts", "power_limit_mw", 1e-3),
                ("gpu_sm_clock_hertz", "sm_clock_mhz", 1e6),
                ("gpu_temperature_celsius", "temp_c", 1.0),
            ):
                v = val(col, i, scale)
                d = self.gauges.setdefault(metric, {})
                if v is None:
                    d.pop(lab, None)
                else:
                    d[lab] = v
            mask = cols["clocks_event_reasons"][i].as_py()
            d = self.gauges.setdefault("gpu_throttle_active", {})
            for ev in CLOCK_EVENTS:
                if mask is None:
                    d.pop((str(g), ev.key), None)
                else:
                    d[(str(g), ev.key)] = 1.0 if mask & ev.bit else 0.0

    def _on_gpu_processes(self, b: pa.RecordBatch) -> None:
        ts = _np(b.column("ts_ns"))
        gpu = _np(b.column("gpu"))
        pid = _np(b.column("pid"))
        used = _np(b.column("used_bytes"), np.float64, np.nan)
        for g in np.unique(gpu).tolist():
            m = gpu == g
            t = int(ts[m].max())
            if t < self._gpu_proc_ts.get(g, -1):
                continue
            at = m & (ts == t)
            if t > self._gpu_proc_ts.get(g, -1):
                self._gpu_proc[g] = {}
            self._gpu_proc_ts[g] = t
            cur = self._gpu_proc[g]
            for p, u in zip(pid[at].tolist(), used[at].tolist()):
                if np.isfinite(u):
                    cur[p] = u

    def _on_spans(self, b: pa.RecordBatch) -> None:
        start = _np(b.column("ts_ns"))
        end = _np(b.column("end_ns"))
        lat = (end - start).astype(np.float64) / 1e9
        names = [self._name(x) for x in _strs(b.column("name"), "")]
        ok = _np(b.column("ok"), bool, True)
        ttft_col = b.column("ttft_ns")
        ttft = _np(ttft_col, np.float64, np.nan) / 1e9
        keys, inv = _groups(names)
        bounds = np.asarray(SPAN_BUCKETS_S)
        nb = len(bounds) + 1
        # Bucket index per span: first bound >= value (le semantics), len(bounds) for +Inf.
        bi = np.searchsorted(bounds, lat, side="left")
        counts = np.zeros((len(keys), nb))
        np.add.at(counts, (inv, bi), 1)
        sums = _group_sum(inv, len(keys), lat)
        fails = _group_sum(inv, len(keys), (~ok).astype(np.float64))
        has_t = np.isfinite(ttft)
        tcounts = np.zeros((len(keys), nb))
        if has_t.any():
            np.add.at(tcounts, (inv[has_t], np.searchsorted(bounds, ttft[has_t], side="left")), 1)
        tsums = _group_sum(inv, len(keys), np.where(has_t, ttft, 0.0))
        for j, lab in enumerate(keys):
            self._add_hist("span_latency_seconds", lab, counts[j], sums[j])
            self.counters["span_failures"][lab] += fails[j]
            if tcounts[j].sum():
                self._add_hist("span_ttft_seconds", lab, tcounts[j], tsums[j])

    def _add_hist(self, metric: str, labels: tuple[str, ...], counts: np.ndarray, total: float) -> None:
        d = self.hists[metric]
        h = d.get(labels)
        if h is None:
            h = d[labels] = _Hist(counts.size)
        h.buckets += counts
        h.sum += float(total)

    # Exposition --------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._compact()
            yield from self._proc_families()
            yield from self._pid_families()
            for name, (typ, doc, labels) in METRICS.items():
                if typ == "counter" and name in self.counters and name not in ("context_switches", "page_faults",
                                                                                 "process_cpu_seconds"):
                    fam = CounterMetricFamily(PREFIX + name, doc, labels=labels)
                    for lab, v in sorted(self.counters[name].items()):
                        fam.add_metric(list(lab), v)
                    yield fam
                elif typ == "histogram" and name in self.hists:
                    yield self._hist_family(name, doc, labels)
                elif typ == "gauge" and self.gauges.get(name):
                    fam = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
                    for lab, v in sorted(self.gauges[name].items()):
                        fam.add_metric(list(lab), v)
                    yield fam
            if self._gpu_proc:
                name = "gpu_process_memory_bytes"
                fam = GaugeMetricFamily(PREFIX + name, METRICS[name][1], labels=METRICS[name][2])
                for g, d in sorted(self._gpu_proc.items()):
                    per: dict[str, float] = defaultdict(float)
                    for p, v in d.items():
                        per[self._label(p)] += v
                    for lab, v in sorted(per.items()):
                        fam.add_metric([str(g), lab], v)
                yield fam

    def _pid_families(self) -> Iterator[Metric]:
        """Per-pid kernel metrics, aggregated per (pid label, comm, ...) with the folded pids."""
        for name, d in self._ph.items():
            per: dict[tuple[str, ...], _Hist] = {}
            for p, h in d.items():
                lab = self._pid_labels(p)
                acc = per.get(lab)
                if acc is None:
                    acc = per[lab] = _Hist(h.buckets.size)
                acc.buckets += h.buckets
                acc.sum += h.sum
            o = self._ph_other.get(name)
            if o is not None:
                acc = per.get((OTHER, OTHER))
                if acc is None:
                    acc = per[(OTHER, OTHER)] = _Hist(o.buckets.size)
                acc.buckets += o.buckets
                acc.sum += o.sum
            if per:
                _, doc, labels = METRICS[name]
                yield self._hist_family_from(name, doc, labels, per)
        for name in sorted(set(self._pc) | set(self._pc_other)):
            tot: dict[tuple[str, ...], float] = defaultdict(float)
            for k, v in self._pc.get(name, {}).items():
                tot[(*self._pid_labels(k[0]), *k[1:])] += v
            for rest, v in self._pc_other.get(name, {}).items():
                tot[(OTHER, OTHER, *rest)] += v
            if tot:
                _, doc, labels = METRICS[name]
                fam = CounterMetricFamily(PREFIX + name, doc, labels=labels)
                for lab, v in sorted(tot.items()):
                    fam.add_metric(list(lab), v)
                yield fam

    def _proc_families(self) -> Iterator[Metric]:
        if not self._proc_slot and not self._proc_other.any():
            return
        per_label: dict[tuple[str, str], np.ndarray] = {}
        if self._proc_other.any():
            per_label[(OTHER, OTHER)] = self._proc_other.copy()
        totals = self._proc_total
        for p, i in self._proc_slot.items():
            total = totals[i]
            lab = self._pid_labels(p)
            per_label[lab] = per_label[lab] + total if lab in per_label else total
        specs = (
            ("context_switches", (("voluntary", 0), ("involuntary", 1))),
            ("page_faults", (("minor", 2), ("major", 3))),
            ("process_cpu_seconds", (("user", 4), ("system", 5))),
        )
        for name, kinds in specs:
            _, doc, labels = METRICS[name]
            fam = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            for lab, v in sorted(per_label.items()):
                for kind, k in kinds:
                    fam.add_metric([*lab, kind], float(v[k]))
            yield fam
        rss: dict[tuple[str, str], float] = defaultdict(float)
        for p, r in self._rss.items():
            rss[self._pid_labels(p)] += r
        fam = GaugeMetricFamily(PREFIX + "process_rss_bytes", METRICS["process_rss_bytes"][1],
                                labels=METRICS["process_rss_bytes"][2])
        for lab, v in sorted(rss.items()):
            fam.add_metric(list(lab), v)
        yield fam
        yield GaugeMetricFamily(PREFIX + "processes", METRICS["processes"][1], value=len(self._rss))

    def _hist_family(self, name: str, doc: str, labels: tuple[str, ...]) -> HistogramMetricFamily:
        return self._hist_family_from(name, doc, labels, self.hists[name])

    def _hist_family_from(self, name: str, doc: str, labels: tuple[str, ...],
                          hists: dict[tuple[str, ...], _Hist]) -> HistogramMetricFamily:
        les = LOG2_LE_S if name in ("runq_latency_seconds", "block_io_latency_seconds") else SPAN_BUCKETS_S
        fam = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
        for lab, h in sorted(hists.items()):
            cum = np.cumsum(h.buckets)
            buckets = [(floatToGoString(le), float(c)) for le, c in zip(les, cum[:-1])]
            buckets.append(("+Inf", float(cum[-1])))
            fam.add_metric(list(lab), buckets, sum_value=h.sum)
        return fam
