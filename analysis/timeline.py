"""Per-window signals derived from a recording's raw tables (the analysis' common ground).

Every resource signal the analysis compares is put on one grid of fixed windows (default 1 s, never
shorter than the kernel tables' bucket): bucketed kernel tables (``sched``, ``preemptions``,
``faults``, ``block_io``) are summed into the window holding the bucket's start, event tables
(``reclaim``, ``oom_kills``, ``gpu_events``) are summed by event time, cumulative counters
(``proc_samples``, ``host_samples``, ``host_cpu``) are differenced per key and the delta is charged to
the window of the later sample, and gauges (memory, GPU clocks) are averaged or maxed per window.
Everything is numpy / pyarrow.compute: no Python loop per row.

A table that was not recorded makes its signals absent (reported in ``not_checked`` with the
reason); a recorded but empty event table means "nothing happened" and yields zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.signals import THROTTLE_MASK, column, counter_increases

DEFAULT_WINDOW_NS = 1_000_000_000



@dataclass
class Signal:
    """One resource signal on the window grid."""

    name: str
    values: np.ndarray  # float64 per window; NaN where there is no sample in the window
    unit: str  # unit of one window's value (e.g. "ns/window", "fraction", "count/window")
    source: str  # table(s) it comes from
    scope: str  # target | host | others | gpu | load
    describe: str  # words for people ("run-queue wait")
    direction: int = 1  # +1: higher is worse; -1: lower is worse (free memory, clocks)
    floor: float = 0.0  # smallest baseline used in ratios, so 0 -> tiny is not "infinitely worse"
    stall: bool = False  # values are time (ns per window) that the target spent stalled
    peak: bool = False  # an incident is judged by its worst window (memory near a limit), not its mean


@dataclass
class Timeline:
    start_ns: int
    end_ns: int
    width_ns: int
    n: int
    signals: dict[str, Signal] = field(default_factory=dict)
    # Signals that could not be derived: {"signal", "reason"}.
    not_checked: list[dict[str, str]] = field(default_factory=list)
    # table -> rows, for tables that were read.
    tables_read: dict[str, int] = field(default_factory=dict)

    def index(self, ts: np.ndarray) -> np.ndarray:
        idx = (np.asarray(ts, dtype=np.int64) - self.start_ns) // self.width_ns
        return np.clip(idx, 0, self.n - 1)

    def window_mask(self, start_ns: int, end_ns: int) -> np.ndarray:
        """Windows overlapping [start_ns, end_ns]."""
        m = np.zeros(self.n, dtype=bool)
        a = int(self.index(np.array([start_ns]))[0])
        b = int(self.index(np.array([end_ns]))[0])
        m[a : b + 1] = True
        return m

    def window_start(self, i: int) -> int:
        return self.start_ns + i * self.width_ns

    def get(self, name: str) -> Signal | None:
        return self.signals.get(name)

    def add(self, sig: Signal) -> None:
        self.signals[sig.name] = sig


# ------------------------------------------------------------------------------------------------
# vectorised helpers
# ------------------------------------------------------------------------------------------------
def col(t: pa.Table, name: str, dtype: Any = np.float64, fill: float = 0) -> np.ndarray:
    """A column as numpy by the null rule of autoglm_trace/signals.py, with nulls as ``fill`` (default
    0: per-window sums treat a missing count as nothing; pass NaN for a gauge)."""
    return column(t, name, dtype, fill)


def counter_deltas(ts: np.ndarray, key: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-key increases of a cumulative counter: (ts of the later sample, increase), by the one reset
    and null rule (autoglm_trace/signals.py: a drop is a reset, the increase is the new value)."""
    dts, _, inc, _ = counter_increases(ts, values, key)
    return dts, inc


def _sum(tl: Timeline, ts: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if len(ts) == 0:
        return np.zeros(tl.n)
    return np.bincount(tl.index(ts), weights=w, minlength=tl.n)[: tl.n].astype(np.float64)


def _mean(tl: Timeline, ts: np.ndarray, v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    ts, v = ts[ok], v[ok]
    s = _sum(tl, ts, v)
    c = _sum(tl, ts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _extreme(tl: Timeline, ts: np.ndarray, v: np.ndarray, use_max: bool) -> np.ndarray:
    ok = np.isfinite(v)
    ts, v = ts[ok], v[ok]
    out = np.full(tl.n, -np.inf if use_max else np.inf)
    if len(ts):
        (np.maximum if use_max else np.minimum).at(out, tl.index(ts), v)
    out[~np.isfinite(out)] = np.nan
    return out


def _sum_per_key_mean(tl: Timeline, ts: np.ndarray, key: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per window: the mean of v for each key, summed over keys (e.g. tree RSS from per-pid RSS)."""
    if len(ts) == 0:
        return np.full(tl.n, np.nan)
    ukeys, kidx = np.unique(key, return_inverse=True)
    combo = tl.index(ts) * len(ukeys) + kidx
    s = np.bincount(combo, weights=v, minlength=tl.n * len(ukeys))
    c = np.bincount(combo, minlength=tl.n * len(ukeys))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (s / np.maximum(c, 1)).reshape(tl.n, len(ukeys))
    seen = c.reshape(tl.n, len(ukeys)) > 0
    out = np.where(seen, m, 0.0).sum(axis=1)
    out[~seen.any(axis=1)] = np.nan
    return out


# ------------------------------------------------------------------------------------------------
# building the timeline
# ------------------------------------------------------------------------------------------------
def recording_bounds(rec: Recording) -> tuple[int, int]:
    start, end = rec.start_ns, rec.end_ns
    if not start:
        firsts = []
        for name in rec.table_names:
            t = rec.table(name)
            if t.num_rows and "ts_ns" in t.column_names:
                firsts.append(int(pc.min(t.column("ts_ns")).as_py()))
        start = min(firsts) if firsts else 0
    if end <= start:
        end = start + DEFAULT_WINDOW_NS
    return start, end


def _bucket_width(rec: Recording) -> int:
    widths = []
    for name in ("sched", "preemptions", "faults", "block_io"):
        if rec.has(name):
            t = rec.table(name)
            if t.num_rows:
                widths.append(int(pc.max(t.column("bucket_ns")).as_py() or 0))
    return max(widths, default=0)


def build_timeline(rec: Recording, width_ns: int | None = None) -> Timeline:
    start, end = recording_bounds(rec)
    width = int(width_ns or DEFAULT_WINDOW_NS)
    # A window shorter than the kernel's bucket would alias the bucket into one window of two.
    width = max(width, _bucket_width(rec))
    n = max(1, int((end - start + width - 1) // width))
    tl = Timeline(start, end, width, n)
    _sched(rec, tl)
    _preemptions(rec, tl)
    _wakeups(rec, tl)
    _faults(rec, tl)
    _block_io(rec, tl)
    _reclaim(rec, tl)
    _oom(rec, tl)
    _proc_samples(rec, tl)
    _host(rec, tl)
    _host_cpu(rec, tl)
    _gpu(rec, tl)
    _spans_load(rec, tl)
    return tl


# Kernel-collector families (manifest ``collectors.kernel.skipped``) and the tables they fill.
_FAMILY = {"sched": "sched", "preemptions": "sched", "wakeups": "wakeups", "faults": "faults", "block_io": "io", "reclaim": "memory",
           "oom_kills": "oom", "proc_events": "proc"}


def recorded(rec: Recording, table: str) -> bool:
    """Whether ``table`` was being recorded: its file exists, or a collector that ran fine owns it
    (event tables get a file on their first row: no file then means no event)."""
    if rec.has(table):
        return True
    for c in rec.collectors.values():
        if isinstance(c, dict) and c.get("status") == "ok" and table in (c.get("tables") or []):
            skipped = c.get("skipped") or {}
            fams = c.get("families")
            if isinstance(fams, list) and _FAMILY.get(table) and _FAMILY[table] not in fams:
                return False  # a family left out (record --probes)
            return not (isinstance(skipped, dict) and _FAMILY.get(table) in skipped)
    return False


def missing_reason(rec: Recording, table: str) -> str:
    reason = f"table {table!r} not recorded"
    for cname, c in rec.collectors.items():
        skipped = c.get("skipped") if isinstance(c, dict) else None
        if isinstance(skipped, dict) and _FAMILY.get(table) in skipped and table in (c.get("tables") or []):
            return f"{reason} (collector {cname} skipped {_FAMILY[table]}: {skipped[_FAMILY[table]]})"
    why = collector_reason(rec, table)
    return f"{reason} ({why})" if why else reason


def _missing(rec: Recording, tl: Timeline, table: str, signals: list[str]) -> bool:
    """True (and the signals listed as not checked) when ``table`` was not recorded."""
    if recorded(rec, table):
        tl.tables_read[table] = rec.table(table).num_rows
        return False
    reason = missing_reason(rec, table)
    for s in signals:
        tl.not_checked.append({"signal": s, "reason": reason})
    return True


def collector_reason(rec: Recording, table: str) -> str:
    """Why the collector owning ``table`` did not run, from the manifest (which lists every
    collector's tables), or "". One that failed outranks one that was simply not asked for."""
    found: list[tuple[bool, str]] = []
    for cname, c in rec.collectors.items():
        if not isinstance(c, dict) or c.get("status") in (None, "ok") or table not in (c.get("tables") or []):
            continue
        found.append((c.get("status") == "off", f"collector {cname} {c.get('status')}: {c.get('reason') or 'no reason given'}"))
    return min(found)[1] if found else ""


def victim_pids(rec: Recording) -> set[int]:
    """The target processes whose stalls are the target's (analysis/tree.py ``victims``): with request
    spans, the processes serving them (and the root), so that a worker the server forked counts as
    another process taking the CPU, the disk or memory, not as the target's own stall."""
    got = getattr(rec, "_victim_pids", None)
    if got is None:
        from autoglm_trace.analysis import tree  # noqa: PLC0415 - tree imports this module's reader only

        got = tree.victims(rec)
        rec._victim_pids = got  # type: ignore[attr-defined]
    return got


def _victim_rows(rec: Recording, t: pa.Table, column: str = "pid") -> pa.Table:
    vic = victim_pids(rec)
    if not vic or not t.num_rows:
        return t
    return t.filter(pc.is_in(t.column(column), value_set=pa.array(sorted(vic), t.schema.field(column).type)))


def _victim_mask(rec: Recording, t: pa.Table, column: str, fallback: np.ndarray) -> np.ndarray:
    vic = victim_pids(rec)
    if not vic:
        return fallback
    return np.isin(col(t, column, np.int64, -1), np.array(sorted(vic), dtype=np.int64)) & fallback


def _sched(rec: Recording, tl: Timeline) -> None:
    names = ["runq_wait", "preempted_time", "dstate_time", "oncpu_time", "involuntary_switches"]
    if _missing(rec, tl, "sched", names):
        return
    full = rec.table("sched")
    t = _victim_rows(rec, full)
    if t.num_rows < full.num_rows:
        # The tree's other processes (a worker the server forked) compete for the victims' CPUs.
        vic = pa.array(sorted(victim_pids(rec)), full.schema.field("pid").type)
        o = full.filter(pc.invert(pc.is_in(full.column("pid"), value_set=vic)))
        tl.add(Signal("tree_others_oncpu", _sum(tl, col(o, "ts_ns", np.int64), col(o, "oncpu_ns")), "ns/window",
                      "sched", "others", "on-CPU time of the target tree's other processes",
                      floor=2e7 * tl.width_ns / 1e9))
    ts = col(t, "ts_ns", np.int64)
    tl.add(Signal("runq_wait", _sum(tl, ts, col(t, "runq_wait_ns")), "ns/window", "sched", "target",
                  "run-queue wait", floor=1e6 * tl.width_ns / 1e9, stall=True))
    tl.add(Signal("preempted_time", _sum(tl, ts, col(t, "offcpu_preempted_ns")), "ns/window", "sched",
                  "target", "time preempted (runnable, off CPU)", floor=1e6 * tl.width_ns / 1e9, stall=True))
    tl.add(Signal("dstate_time", _sum(tl, ts, col(t, "offcpu_dstate_ns")), "ns/window", "sched", "target",
                  "uninterruptible (D-state) sleep", floor=1e6 * tl.width_ns / 1e9, stall=True))
    tl.add(Signal("oncpu_time", _sum(tl, ts, col(t, "oncpu_ns")), "ns/window", "sched", "target",
                  "on-CPU time", floor=1e6))
    tl.add(Signal("involuntary_switches", _sum(tl, ts, col(t, "switches_involuntary")), "count/window",
                  "sched", "target", "involuntary context switches", floor=5))
    tl.add(Signal("runq_max", _extreme(tl, ts, col(t, "runq_max_ns"), True), "ns", "sched", "target",
                  "longest run-queue wait", floor=1e5))


def _preemptions(rec: Recording, tl: Timeline) -> None:
    if _missing(rec, tl, "preemptions", ["preemptions_by_others"]):
        return
    t = _victim_rows(rec, rec.table("preemptions"))
    ts = col(t, "ts_ns", np.int64)
    # Other processes of the tree (not the victims) take the CPU like outside ones do.
    outside = ~_victim_mask(rec, t, "preemptor_pid", col(t, "preemptor_in_target"))
    tl.add(Signal("preemptions_by_others", _sum(tl, ts[outside], col(t, "count")[outside]), "count/window",
                  "preemptions", "others", "preemptions by processes outside the target", floor=5))
    tl.add(Signal("wait_charged_to_others", _sum(tl, ts[outside], col(t, "wait_ns")[outside]), "ns/window",
                  "preemptions", "others", "run-queue wait charged to outside processes",
                  floor=1e6 * tl.width_ns / 1e9, stall=True))


def _wakeups(rec: Recording, tl: Timeline) -> None:
    """Sleep of the target's threads spent waiting on other threads of the target (analysis/wakers.py,
    analysis/timesplit.py)."""
    from autoglm_trace.analysis import timesplit, wakers  # noqa: PLC0415 - they read the tree, not the timeline

    if _missing(rec, tl, "wakeups", ["lock_wait", "gil_wait"]):
        return
    # The request threads' waits where spans name them (what the time split shows), else every
    # victim thread's.
    got = timesplit.request_waits(rec, tl.index, tl.n) or wakers.wait_signals(rec, tl.index, tl.n, victim_pids(rec))
    if got is None:
        return
    floor = 1e6 * tl.width_ns / 1e9
    tl.add(Signal("lock_wait", got["lock"], "ns/window", "wakeups", "target",
                  "sleep waiting on other threads of the target (locks, queues)", floor=floor, stall=True))
    tl.add(Signal("gil_wait", got["gil"], "ns/window", "wakeups", "target",
                  "waiting for the GIL held by a sibling thread", floor=floor, stall=True))


def _faults(rec: Recording, tl: Timeline) -> None:
    if recorded(rec, "faults"):
        tl.tables_read["faults"] = rec.table("faults").num_rows
        t = _victim_rows(rec, rec.table("faults"))
        ts = col(t, "ts_ns", np.int64)
        major = col(t, "major")
        tl.add(Signal("major_faults", _sum(tl, ts, major), "count/window", "faults", "target",
                      "major page faults", floor=2))
        tl.add(Signal("minor_faults", _sum(tl, ts, col(t, "faults") - major), "count/window", "faults",
                      "target", "minor page faults", floor=100))
    # else: proc_samples' majflt/minflt stand in (added in _proc_samples).


def _block_io(rec: Recording, tl: Timeline) -> None:
    names = ["blkio_target_latency", "blkio_others_bytes"]
    if _missing(rec, tl, "block_io", names):
        return
    t = rec.table("block_io")
    ts = col(t, "ts_ns", np.int64)
    inn = _victim_mask(rec, t, "pid", col(t, "in_target"))
    dev = t.column("dev")
    tdevs = pc.unique(pc.filter(dev, pa.array(inn))) if inn.any() else pc.unique(dev)
    on_dev = col(pa.table({"m": pc.is_in(dev, value_set=tdevs)}), "m")
    cnt, lat, byt = col(t, "count"), col(t, "lat_sum_ns"), col(t, "bytes")
    tcount = _sum(tl, ts[inn], cnt[inn])
    tlat = _sum(tl, ts[inn], lat[inn])
    tl.add(Signal("blkio_target_latency", tlat, "ns/window", "block_io", "target",
                  "block I/O latency of the target's requests (sum)", floor=1e6, stall=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(tcount > 0, tlat / np.maximum(tcount, 1), np.nan)
    tl.add(Signal("blkio_target_avg_latency", avg, "ns", "block_io", "target",
                  "mean block I/O latency of the target", floor=2e5))
    oth = ~inn & on_dev
    me = (rec.manifest.get("recorder") or {}).get("pid") if isinstance(rec.manifest, dict) else None
    if isinstance(me, int):
        # The recorder's own writes (its Arrow files) are not a neighbour's I/O: left out, so that a
        # recording never blames itself for the io_wait it would cause by being recorded.
        oth &= col(t, "pid", np.int64, -1) != me
    tl.add(Signal("blkio_others_bytes", _sum(tl, ts[oth], byt[oth]), "bytes/window", "block_io", "others",
                  "bytes moved by other processes on the target's devices", floor=1 << 20))
    tl.add(Signal("blkio_others_count", _sum(tl, ts[oth], cnt[oth]), "count/window", "block_io", "others",
                  "block requests of other processes on the target's devices", floor=10))


def _reclaim(rec: Recording, tl: Timeline) -> None:
    if _missing(rec, tl, "reclaim", ["reclaim_target", "reclaim_others"]):
        return
    t = rec.table("reclaim")
    ts = col(t, "ts_ns", np.int64)
    inn = col(t, "in_target")
    inn = _victim_mask(rec, t, "pid", inn)
    kind = t.column("kind")
    wake = col(pa.table({"m": pc.fill_null(pc.equal(kind, "kswapd_wake"), False)}), "m")
    dur = col(t, "duration_ns")
    st = ~wake
    tl.add(Signal("reclaim_target", _sum(tl, ts[st & inn], dur[st & inn]), "ns/window", "reclaim", "target",
                  "direct-reclaim stall of the target", floor=1e5 * tl.width_ns / 1e9, stall=True))
    tl.add(Signal("reclaim_others", _sum(tl, ts[st & ~inn], dur[st & ~inn]), "ns/window", "reclaim", "others",
                  "direct-reclaim stall of other processes", floor=1e5 * tl.width_ns / 1e9))
    tl.add(Signal("kswapd_wakes", _sum(tl, ts[wake]), "count/window", "reclaim", "host", "kswapd wakeups",
                  floor=1))


def _oom(rec: Recording, tl: Timeline) -> None:
    if _missing(rec, tl, "oom_kills", ["oom_kills"]):
        return
    t = rec.table("oom_kills")
    ts = col(t, "ts_ns", np.int64)
    tl.add(Signal("oom_kills", _sum(tl, ts), "count/window", "oom_kills", "host", "OOM kills", floor=0.1))
    inn = col(t, "in_target")
    tl.add(Signal("oom_kills_target", _sum(tl, ts[inn]), "count/window", "oom_kills", "target",
                  "OOM kills in the target", floor=0.1))


def _proc_samples(rec: Recording, tl: Timeline) -> None:
    if _missing(rec, tl, "proc_samples", ["target_rss", "target_cpu"]):
        return
    t = rec.table("proc_samples")
    if not t.num_rows:
        tl.not_checked.append({"signal": "target_rss", "reason": "proc_samples is empty"})
        return
    ts = col(t, "ts_ns", np.int64)
    pid = col(t, "pid", np.int64)
    rss = col(t, "rss_bytes", np.float64, np.nan)
    tl.add(Signal("target_rss", _sum_per_key_mean(tl, ts, pid, rss), "bytes", "proc_samples", "target",
                  "resident memory of the target tree", floor=1 << 20))
    cpu = col(t, "cpu_user_s", np.float64, np.nan) + col(t, "cpu_system_s", np.float64, np.nan)
    dts, d = counter_deltas(ts, pid, cpu)
    tl.add(Signal("target_cpu", _sum(tl, dts, d) / (tl.width_ns / 1e9), "cores", "proc_samples", "target",
                  "CPU used by the target tree", floor=0.05))
    if "involuntary_switches" not in tl.signals:
        dts, d = counter_deltas(ts, pid, col(t, "ctx_involuntary", np.float64, np.nan))
        tl.add(Signal("involuntary_switches", _sum(tl, dts, d), "count/window", "proc_samples", "target",
                      "involuntary context switches", floor=5))
    if "major_faults" not in tl.signals:
        dts, d = counter_deltas(ts, pid, col(t, "majflt", np.float64, np.nan))
        tl.add(Signal("major_faults", _sum(tl, dts, d), "count/window", "proc_samples", "target",
                      "major page faults", floor=2))
        dts, d = counter_deltas(ts, pid, col(t, "minflt", np.float64, np.nan))
        tl.add(Signal("minor_faults", _sum(tl, dts, d), "count/window", "proc_samples", "target",
                      "minor page faults", floor=100))
    dts, d = counter_deltas(ts, pid, col(t, "io_read_bytes", np.float64, np.nan)
                            + col(t, "io_write_bytes", np.float64, np.nan))
    tl.add(Signal("target_io_bytes", _sum(tl, dts, d), "bytes/window", "proc_samples", "target",
                  "storage bytes read+written by the target", floor=1 << 20))


def _host(rec: Recording, tl: Timeline) -> None:
    names = ["psi_cpu", "psi_memory", "psi_io", "mem_available"]
    if _missing(rec, tl, "host_samples", names):
        return
    t = rec.table("host_samples")
    if not t.num_rows:
        for s in names:
            tl.not_checked.append({"signal": s, "reason": "host_samples is empty"})
        return
    ts = col(t, "ts_ns", np.int64)
    key = np.zeros(len(ts), np.int64)
    wsec = tl.width_ns / 1e9

    def delta(name: str, scale: float = 1.0) -> np.ndarray | None:
        v = col(t, name, np.float64, np.nan)
        if not np.isfinite(v).any():
            return None
        dts, d = counter_deltas(ts, key, v)
        return _sum(tl, dts, d * scale)

    for sig, colname, desc in (
        ("psi_cpu", "psi_cpu_some_us", "CPU pressure (some), host"),
        ("psi_memory", "psi_mem_some_us", "memory pressure (some), host"),
        ("psi_memory_full", "psi_mem_full_us", "memory pressure (full), host"),
        ("psi_io", "psi_io_some_us", "I/O pressure (some), host"),
        ("psi_io_full", "psi_io_full_us", "I/O pressure (full), host"),
    ):
        v = delta(colname, 1000.0)  # us -> ns
        if v is None:
            tl.not_checked.append({"signal": sig, "reason": "PSI not available on this host"})
        else:
            tl.add(Signal(sig, v, "ns/window", "host_samples", "host", desc, floor=5e6 * wsec))
    for sig, colname, desc, floor in (
        ("host_major_faults", "pgmajfault", "major faults, host", 5),
        ("allocstalls", "allocstall", "allocation stalls (direct reclaim entries), host", 1),
        ("pgscan_direct", "pgscan_direct", "pages scanned by direct reclaim, host", 100),
    ):
        v = delta(colname)
        if v is not None:
            tl.add(Signal(sig, v, "count/window", "host_samples", "host", desc, floor=floor))
    avail = col(t, "mem_available_bytes", np.float64, np.nan)
    total = col(t, "mem_total_bytes", np.float64, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, avail / total, np.nan)
    tl.add(Signal("mem_available", _extreme(tl, ts, frac, False), "fraction", "host_samples", "host",
                  "memory available (fraction of total), host", direction=-1, floor=0.01, peak=True))


def _host_cpu(rec: Recording, tl: Timeline) -> None:
    if _missing(rec, tl, "host_cpu", ["host_cpu_busy", "host_iowait"]):
        return
    t = rec.table("host_cpu")
    if not t.num_rows:
        return
    ts = col(t, "ts_ns", np.int64)
    cpu = col(t, "cpu", np.int64)
    parts = {k: counter_deltas(ts, cpu, col(t, k, np.float64, np.nan)) for k in
             ("user_s", "system_s", "idle_s", "iowait_s", "irq_s", "steal_s")}
    sums = {k: _sum(tl, v[0], v[1]) for k, v in parts.items()}
    total = sum(sums.values())
    with np.errstate(invalid="ignore", divide="ignore"):
        busy = np.where(total > 0, (sums["user_s"] + sums["system_s"] + sums["irq_s"]) / total, np.nan)
        iow = np.where(total > 0, sums["iowait_s"] / total, np.nan)
        steal = np.where(total > 0, sums["steal_s"] / total, np.nan)
    tl.add(Signal("host_cpu_busy", busy, "fraction", "host_cpu", "host", "host CPU busy", floor=0.05))
    tl.add(Signal("host_iowait", iow, "fraction", "host_cpu", "host", "host CPU iowait", floor=0.01))
    tl.add(Signal("host_steal", steal, "fraction", "host_cpu", "host", "CPU stolen by the hypervisor",
                  floor=0.01))


def _gpu(rec: Recording, tl: Timeline) -> None:
    names = ["gpu_util", "gpu_memory", "gpu_throttle", "gpu_sm_clock", "gpu_xid"]
    if _missing(rec, tl, "gpu_devices", names):
        return
    t = rec.table("gpu_devices")
    if not t.num_rows:
        for s in names:
            tl.not_checked.append({"signal": s, "reason": "no GPU samples (no GPU or NVML unavailable)"})
        return
    ts = col(t, "ts_ns", np.int64)
    used = col(t, "mem_used_bytes", np.float64, np.nan)
    res = col(t, "mem_reserved_bytes", np.float64, 0)
    total = col(t, "mem_total_bytes", np.float64, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, (used + res) / total, np.nan)
    tl.add(Signal("gpu_memory", _extreme(tl, ts, frac, True), "fraction", "gpu_devices", "gpu",
                  "GPU memory used (fraction of total, fullest GPU)", floor=0.05, peak=True))
    tl.add(Signal("gpu_util", _mean(tl, ts, col(t, "util_gpu_pct", np.float64, np.nan)), "%", "gpu_devices",
                  "gpu", "GPU utilisation", floor=1))
    reasons = pc.fill_null(t.column("clocks_event_reasons"), 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    thr = ((reasons & np.uint64(THROTTLE_MASK)) != 0).astype(np.float64)
    tl.add(Signal("gpu_throttle", _mean(tl, ts, thr), "fraction", "gpu_devices", "gpu",
                  "GPU clocks throttled (share of samples)", floor=0.02))
    clk = col(t, "sm_clock_mhz", np.float64, np.nan)
    clk[clk <= 0] = np.nan
    tl.add(Signal("gpu_sm_clock", _mean(tl, ts, clk), "MHz", "gpu_devices", "gpu", "SM clock",
                  direction=-1, floor=10))
    pcie = col(t, "pcie_tx_kbps", np.float64, np.nan) + col(t, "pcie_rx_kbps", np.float64, np.nan)
    tl.add(Signal("gpu_pcie", _mean(tl, ts, pcie), "KB/s", "gpu_devices", "gpu", "PCIe throughput",
                  floor=1000))
    temp = col(t, "temp_c", np.float64, np.nan)
    tl.add(Signal("gpu_temp", _extreme(tl, ts, temp, True), "C", "gpu_devices", "gpu", "GPU temperature",
               floor=30))
    if recorded(rec, "gpu_events"):
        e = rec.table("gpu_events")
        ets = col(e, "ts_ns", np.int64)
        xid = col(pa.table({"m": pc.fill_null(pc.equal(e.column("event"), "xid"), False)}), "m")
        tl.add(Signal("gpu_xid", _sum(tl, ets[xid]), "count/window", "gpu_events", "gpu", "GPU Xid errors",
                      floor=0.1))
    else:
        tl.not_checked.append({"signal": "gpu_xid", "reason": "table 'gpu_events' not recorded"})


def span_latency(spans: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    start = col(spans, "ts_ns", np.int64)
    end = col(spans, "end_ns", np.int64)
    return start, end


def _spans_load(rec: Recording, tl: Timeline) -> None:
    """Requests in flight per window (a load signal: more work is not a resource fault)."""
    from autoglm_trace.analysis.requests import recorded_requests  # noqa: PLC0415 - it imports this module

    if not rec.has("spans") or not rec.table("spans").num_rows:
        return
    start, end = span_latency(recorded_requests(rec))
    tl.add(Signal("requests_in_flight", in_flight(tl, start, end), "requests", "spans", "load",
                  "requests in flight", floor=1))
    tl.add(Signal("request_arrivals", _sum(tl, start), "count/window", "spans", "load", "request arrivals",
                  floor=1))


def in_flight(tl: Timeline, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Time-weighted number of spans open in each window (exact, by difference arrays)."""
    s = np.clip(start, tl.start_ns, tl.start_ns + tl.n * tl.width_ns)
    e = np.clip(np.maximum(end, start), tl.start_ns, tl.start_ns + tl.n * tl.width_ns)
    # Integral of open spans over each window = sum of per-span overlap; do it with cumulative
    # ramps: coverage(x) = sum over spans of clip(x - s, 0, e - s); overlap with [a, b) is
    # coverage(b) - coverage(a). Evaluate at window edges with sorted prefix sums.
    edges = tl.start_ns + np.arange(tl.n + 1, dtype=np.int64) * tl.width_ns
    cov = _ramp(edges, s) - _ramp(edges, e)
    return np.diff(cov) / tl.width_ns


def _ramp(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """sum_i max(0, x - p_i) for every x (sorted-prefix-sum trick)."""
    p = np.sort(points.astype(np.float64))
    csum = np.concatenate([[0.0], np.cumsum(p)])
    k = np.searchsorted(p, x, side="right")
    return k * x.astype(np.float64) - csum[k]


def baseline_rows(rec: Any, ts: np.ndarray, start_ns: int, end_ns: int,
                  baseline: list[tuple[int, int]] | None) -> tuple[np.ndarray, float]:
    """(mask of the rows that make the baseline, its length in ns). The baseline is the incident's
    own (``baseline``: the windows the cause was scored against, with every incident and its margin
    left out), so a culprit's "beyond the baseline" and the cause's ratio are one derivation; without
    it, everything outside [start, end] (other incidents included)."""
    span = baseline_span(rec, start_ns, end_ns, baseline)
    if baseline:
        return in_windows(ts, baseline), span
    return (ts < start_ns) | (ts > end_ns), span


def baseline_span(rec: Any, start_ns: int, end_ns: int, baseline: list[tuple[int, int]] | None) -> float:
    if baseline:
        return float(sum(e - s for s, e in baseline))
    return float(max(1, (rec.end_ns - rec.start_ns) - (end_ns - start_ns)))


def in_windows(ts: np.ndarray, windows: list[tuple[int, int]] | None) -> np.ndarray | None:
    """Rows whose ts falls in one of ``windows`` ([start, end) ns); None without windows."""
    if not windows:
        return None
    m = np.zeros(len(ts), dtype=bool)
    for a, b in windows:
        m |= (ts >= a) & (ts < b)
    return m
