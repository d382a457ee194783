"""Export a recording as Chrome trace-event JSON, the format ui.perfetto.dev (and chrome://tracing) opens.

Layout of the trace (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU):

* one process per target process (``M`` ``process_name`` / ``thread_name`` metadata from the
  ``processes`` and ``sched`` tables), plus pseudo-processes ``requests``, ``host`` and ``GPU n``
  with pids above any real pid (``PSEUDO_PID``);
* spans as complete ``X`` events on their pid/tid when that thread's spans do not overlap (Chrome
  JSON nests slices by time, so overlapping requests on one thread -- an async server -- would be
  mis-nested); otherwise, and for spans without a thread (latency logs, probes), on lanes of the
  ``requests`` process, each lane a track with no overlap. Time to first token is a nested child;
* thread states from ``sched`` as one counter track per thread: the percentage of each bucket spent
  on-CPU, waiting on the run queue and in D-state, dropping to 0 after the thread's last bucket;
* counters (``C``) for RSS, GPU memory, page faults and block I/O per process, host memory / PSI,
  host-wide block I/O and per-GPU memory / utilisation / power / throttle reasons;
* direct-reclaim stalls as ``X`` slices on the host process;
* who woke whom (``wakeups``): per bucket and (waker, woken thread) pair, a flow arrow (``s`` -> ``f``)
  from a 1 µs ``wake`` slice on the waker's thread to a ``woken`` slice on the woken thread at the
  bucket's end, with the wakeups, the sleep they ended and the class (GIL, lock, hand-off) as args;
  pairs that ended less than ``WAKE_MIN_NS`` of sleep in the bucket and interrupt-context wakers are
  left out (``MAX_WAKE_FLOWS`` at most, the largest first);
* global instant events (``i``, ``"s": "g"``) for OOM kills, process exits, Xid errors and alerts.

Timestamps are microseconds since the recording's first event (``otherData.time_origin_ns`` is
that instant on CLOCK_MONOTONIC and ``otherData.time_origin_wall`` in UTC), written with three
decimals so nanoseconds survive (a wall-clock microsecond epoch would not fit a double's precision).

Events are written as they are produced, a chunk of lines at a time, never as one giant dict; a
column is formatted with one list comprehension over ``tolist()`` values. ``.gz`` paths are gzipped.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from autoglm_trace.analysis import tracks as T
from autoglm_trace.analysis.outfile import atomic_file
from autoglm_trace.analysis.requests import recorded_requests

PSEUDO_PID = 1 << 30  # above PID_MAX_LIMIT (4194304): no clash with a real pid
REQUESTS_PID = PSEUDO_PID
HOST_PID = PSEUDO_PID + 1
GPU_PID = PSEUDO_PID + 16  # + GPU index
LANE_TID = PSEUDO_PID + 1024  # + lane
RECLAIM_TID = PSEUDO_PID + 512
CHUNK = 20_000
WAKE_MIN_NS = 1_000_000
MAX_WAKE_FLOWS = 20_000
TS_TABLES = ("spans", "sched", "proc_samples", "faults", "block_io", "host_samples", "gpu_devices",
             "gpu_processes", "oom_kills", "proc_events", "gpu_events", "reclaim", "alerts", "processes", "wakeups")


def _js(s: Any) -> str:
    """A JSON string literal (ASCII-only, so any comm is safe to embed)."""
    return json.dumps("" if s is None else str(s))


class TraceWriter:
    """Streams ``{"otherData": ..., "traceEvents": [ ... ]}``: events are appended in chunks of
    pre-formatted JSON lines and counted by phase."""

    def __init__(self, f: io.TextIOBase, other: dict[str, Any]) -> None:
        self.f = f
        self.n = 0
        self.by_phase: Counter[str] = Counter()
        f.write('{"displayTimeUnit":"ms","otherData":' + json.dumps(other, default=str) + ',"traceEvents":[\n')

    def add(self, phase: str, lines: Iterable[str]) -> None:
        buf: list[str] = []
        for line in lines:
            buf.append(line)
            if len(buf) >= CHUNK:
                self._flush(phase, buf)
                buf = []
        if buf:
            self._flush(phase, buf)

    def _flush(self, phase: str, buf: list[str]) -> None:
        self.f.write((",\n" if self.n else "") + ",\n".join(buf))
        self.n += len(buf)
        self.by_phase[phase] += len(buf)

    def close(self) -> None:
        self.f.write("\n]}\n")


class _Clock:
    """Monotonic ns -> trace microseconds (strings with 3 decimals), vectorised per column."""

    def __init__(self, origin_ns: int) -> None:
        self.origin = origin_ns

    def us(self, ts_ns: np.ndarray) -> list[str]:
        d = np.asarray(ts_ns, np.int64) - self.origin
        whole, frac = np.divmod(d, 1000)
        return [f"{w}.{f:03d}" for w, f in zip(whole.tolist(), frac.tolist())]

    def dur(self, dur_ns: np.ndarray) -> list[str]:
        whole, frac = np.divmod(np.maximum(np.asarray(dur_ns, np.int64), 0), 1000)
        return [f"{w}.{f:03d}" for w, f in zip(whole.tolist(), frac.tolist())]


def _num(v: np.ndarray, digits: int = 3) -> list[str]:
    """Numbers as JSON (NaN -> 0: JSON has no NaN and a counter needs a value)."""
    v = np.round(np.nan_to_num(np.asarray(v, np.float64), nan=0.0, posinf=0.0, neginf=0.0), digits)
    return list(map(repr, v.tolist()))  # shortest round-trip form: valid JSON, C-speed loop


def _origin(rec) -> int:
    lo = [rec.start_ns] if rec.start_ns else []
    for name in TS_TABLES:
        if rec.has(name):
            t = rec.table(name)
            if t.num_rows:
                lo.append(int(pc.min(t.column("ts_ns")).as_py()))
    return min(lo) if lo else 0


def assign_lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning: lane per interval so that no two in a lane overlap, using the
    fewest lanes (a min-heap of lane end times). ``start``/``end`` in any order."""
    order = np.argsort(start, kind="stable")
    lanes = np.empty(start.size, np.int64)
    free: list[tuple[int, int]] = []  # (end, lane)
    nlanes = 0
    for i, s, e in zip(order.tolist(), start[order].tolist(), end[order].tolist()):
        if free and free[0][0] <= s:
            _, lane = heapq.heappop(free)
        else:
            lane, nlanes = nlanes, nlanes + 1
        lanes[i] = lane
        heapq.heappush(free, (e, lane))
    return lanes


def _overlapping_threads(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mask of spans whose (pid, tid) thread has any two spans overlapping (vectorised: sort by
    thread then start; a span starting before the running max end of its thread overlaps)."""
    if start.size == 0:
        return np.zeros(0, bool)
    order = np.lexsort((start, tid, pid))
    p, t, s, e = pid[order], tid[order], start[order], end[order]
    new = np.r_[True, (p[1:] != p[:-1]) | (t[1:] != t[:-1])]
    grp = np.cumsum(new) - 1
    # Running max of end within each group without a Python loop: rank the ends, offset each
    # group's ranks by group * n so one global running max never crosses a group boundary.
    n = s.size
    by_end = np.argsort(e, kind="stable")
    rank = np.empty(n, np.int64)
    rank[by_end] = np.arange(n)
    key = grp.astype(np.int64) * n + rank
    runmax = e[by_end][np.maximum.accumulate(key) - grp.astype(np.int64) * n]
    over = np.zeros(s.size, bool)
    over[1:] = (~new[1:]) & (s[1:] < runmax[:-1])
    bad_groups = np.unique(grp[over])
    bad_sorted = np.isin(grp, bad_groups)
    out = np.empty_like(bad_sorted)
    out[order] = bad_sorted
    return out


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def _metadata(rec, w: TraceWriter, gpus: list[int], lanes: int, reclaim_lanes: int) -> None:
    names: dict[int, str] = {}
    procs = rec.table("processes")
    if procs.num_rows:
        for pid, comm, cmd in zip(procs.column("pid").to_pylist(), procs.column("comm").to_pylist(),
                                  procs.column("cmdline").to_pylist()):
            label = f"{comm or '?'}: {cmd[:100]}" if cmd else str(comm or "?")
            names[pid] = label  # the last row wins: an exec renames
    pids: set[int] = set(names)
    threads: dict[tuple[int, int], str] = {}
    for table, pcol, tcol, ccol in [("sched", "pid", "tid", "comm"), ("spans", "pid", "tid", None),
                                    ("proc_samples", "pid", None, None), ("faults", "pid", "tid", None)]:
        t = rec.table(table)
        if not t.num_rows:
            continue
        keys = [pcol] + ([tcol] if tcol else []) + ([ccol] if ccol else [])
        sub = t.select(keys).drop_null() if table != "spans" else t.select(keys).filter(
            pc.and_(pc.is_valid(t.column("pid")), pc.is_valid(t.column("tid"))))
        u = sub.group_by(keys).aggregate([])
        cols = [u.column(k).to_pylist() for k in keys]
        for row in zip(*cols):
            pids.add(row[0])
            if tcol:
                threads.setdefault((row[0], row[1]), row[2] if ccol else "")
    lines = []
    for pid in sorted(pids):
        lines.append(f'{{"ph":"M","name":"process_name","pid":{pid},"tid":0,"args":{{"name":{_js(names.get(pid, f"pid {pid}"))}}}}}')
        lines.append(f'{{"ph":"M","name":"process_sort_index","pid":{pid},"tid":0,"args":{{"sort_index":{10 + (pid % 1000)}}}}}')
    for (pid, tid), comm in sorted(threads.items()):
        lines.append(f'{{"ph":"M","name":"thread_name","pid":{pid},"tid":{tid},"args":{{"name":{_js(f"{comm} {tid}".strip())}}}}}')
    pseudo = [(REQUESTS_PID, "requests", 0), (HOST_PID, "host", 1000)] + [
        (GPU_PID + g, f"GPU {g}", 1001 + g) for g in gpus]
    for pid, name, idx in pseudo:
        lines.append(f'{{"ph":"M","name":"process_name","pid":{pid},"tid":0,"args":{{"name":{_js(name)}}}}}')
        lines.append(f'{{"ph":"M","name":"process_sort_index","pid":{pid},"tid":0,"args":{{"sort_index":{idx}}}}}')
    for lane in range(lanes):
        lines.append(f'{{"ph":"M","name":"thread_name","pid":{REQUESTS_PID},"tid":{LANE_TID + lane},'
                     f'"args":{{"name":"lane {lane}"}}}}')
    for lane in range(reclaim_lanes):
        lines.append(f'{{"ph":"M","name":"thread_name","pid":{HOST_PID},"tid":{RECLAIM_TID + 1 + lane},'
                     f'"args":{{"name":"direct reclaim stalls {lane}"}}}}')
    w.add("M", lines)


def _spans(rec, w: TraceWriter, clk: _Clock) -> dict[str, int]:
    t = recorded_requests(rec)  # a request the span API and the latency log both saw: one slice
    if not t.num_rows:
        return {"spans": 0, "spans_on_threads": 0, "spans_in_lanes": 0, "lanes": 0}
    start = T.col(t, "ts_ns", np.int64)
    end = np.maximum(T.col(t, "end_ns", np.int64), start)
    has_thread = (t.column("pid").is_valid().to_numpy(zero_copy_only=False)
                  & t.column("tid").is_valid().to_numpy(zero_copy_only=False))
    pid = T.col(t, "pid", np.int64)
    tid = T.col(t, "tid", np.int64)
    on_thread = has_thread.copy()
    if on_thread.any():
        idx = np.flatnonzero(on_thread)
        bad = _overlapping_threads(pid[idx], tid[idx], start[idx], end[idx])
        on_thread[idx[bad]] = False
    lane_pid = np.where(on_thread, pid, REQUESTS_PID)
    lane_tid = tid.copy()
    nlanes = 0
    off = np.flatnonzero(~on_thread)
    if off.size:
        lanes = assign_lanes(start[off], end[off])
        lane_tid[off] = LANE_TID + lanes
        nlanes = int(lanes.max()) + 1
    names = [_js(n or "request") for n in t.column("name").to_pylist()]
    src = [_js(s) for s in t.column("source").to_pylist()]
    ok = ["true" if o is not False else "false" for o in t.column("ok").to_pylist()]
    ttft = t.column("ttft_ns").to_pylist()
    ptok = t.column("prompt_tokens").to_pylist()
    otok = t.column("output_tokens").to_pylist()
    ts_s, dur_s = clk.us(start), clk.dur(end - start)
    origin = [f',"origin_pid":{p},"origin_tid":{q}' if h and not o else ""
              for p, q, h, o in zip(pid.tolist(), tid.tolist(), has_thread.tolist(), on_thread.tolist())]

    def lines():
        for i, (n, ts, du, p, q) in enumerate(zip(names, ts_s, dur_s, lane_pid.tolist(), lane_tid.tolist())):
            extra = ""
            if ptok[i] is not None:
                extra += f',"prompt_tokens":{ptok[i]}'
            if otok[i] is not None:
                extra += f',"output_tokens":{otok[i]}'
            if ttft[i] is not None:
                extra += f',"ttft_ms":{ttft[i] / 1e6:.3f}'
            yield (f'{{"ph":"X","cat":"request","name":{n},"ts":{ts},"dur":{du},"pid":{p},"tid":{q},'
                   f'"args":{{"source":{src[i]},"ok":{ok[i]}{extra}{origin[i]}}}}}')
            if ttft[i] is not None and 0 <= ttft[i] <= end[i] - start[i]:
                yield (f'{{"ph":"X","cat":"request","name":"time to first token","ts":{ts},'
                       f'"dur":{clk.dur(np.array([ttft[i]]))[0]},"pid":{p},"tid":{q}}}')

    w.add("X", lines())
    return {"spans": int(t.num_rows), "spans_on_threads": int(on_thread.sum()), "spans_in_lanes": int(off.size),
            "lanes": nlanes}


def _counter_lines(clk: _Clock, pid: np.ndarray | int, name: str | list[str], ts: np.ndarray,
                   args: dict[str, np.ndarray]) -> list[str]:
    """``C`` events: one per row, each arg a series of the counter track ``name``. Built column by
    column (one comprehension each), then zipped: no per-row inner loop."""
    n = ts.size
    pids = repeat(str(pid), n) if isinstance(pid, int) else map(str, np.asarray(pid).tolist())
    if isinstance(name, str):
        nm = repeat(_js(name), n)
    else:
        cache: dict[str, str] = {}
        nm = [cache[x] if x in cache else cache.setdefault(x, _js(x)) for x in name]
    keyed = [[f"{k}:{x}" for x in _num(v)] for k, v in ((_js(k), v) for k, v in args.items())]
    argstr = keyed[0] if len(keyed) == 1 else [",".join(t) for t in zip(*keyed)]
    return [f'{{"ph":"C","name":{a},"ts":{b},"pid":{c},"args":{{{d}}}}}'
            for a, b, c, d in zip(nm, clk.us(ts), pids, argstr)]


def _add_counters(w: TraceWriter, clk: _Clock, pid: np.ndarray | int, name: str | list[str], ts: np.ndarray,
                  args: dict[str, np.ndarray], chunk: int = 4 * CHUNK) -> int:
    """``_counter_lines`` a slice at a time, so a million-row table never becomes a million strings
    in memory at once."""
    for a in range(0, ts.size, chunk):
        b = a + chunk
        w.add("C", _counter_lines(clk, pid if isinstance(pid, int) else pid[a:b],
                                  name if isinstance(name, str) else name[a:b], ts[a:b],
                                  {k: v[a:b] for k, v in args.items()}))
    return int(ts.size)


def _thread_states(rec, w: TraceWriter, clk: _Clock) -> int:
    t = rec.table("sched")
    if not t.num_rows:
        return 0
    ts = T.col(t, "ts_ns", np.int64)
    bucket = np.maximum(T.col(t, "bucket_ns", np.int64), 1)
    pid, tid = T.col(t, "pid", np.int64), T.col(t, "tid", np.int64)
    order = np.lexsort((ts, tid, pid))
    ts, bucket, pid, tid = ts[order], bucket[order], pid[order], tid[order]
    pct = {k: (T.col(t, c)[order] / bucket * 100.0) for k, c in
           [("on-CPU %", "oncpu_ns"), ("run-queue %", "runq_wait_ns"), ("D-state %", "offcpu_dstate_ns")]}
    comm = np.array(t.column("comm").to_pylist(), dtype=object)[order]
    # A bucket with no successor for the same thread: the counter returns to 0 at its end, so an
    # idle or exited thread does not look busy until the end of the trace.
    nxt_same = np.r_[(pid[1:] == pid[:-1]) & (tid[1:] == tid[:-1]) & (ts[1:] <= ts[:-1] + bucket[:-1]), False]
    gap = np.flatnonzero(~nxt_same)
    allpid, alltid = np.r_[pid, pid[gap]], np.r_[tid, tid[gap]]
    allts = np.r_[ts, ts[gap] + bucket[gap]]
    allcomm = np.r_[comm, comm[gap]]
    vals = {k: np.r_[v, np.zeros(gap.size)] for k, v in pct.items()}
    o = np.lexsort((allts, alltid, allpid))  # each track in time order in the file
    allpid, alltid, allts, allcomm = allpid[o], alltid[o], allts[o], allcomm[o]
    vals = {k: v[o] for k, v in vals.items()}
    step = 4 * CHUNK
    for a in range(0, allts.size, step):
        sl = slice(a, a + step)
        names = [f"state {c or ''} {q}".replace("  ", " ") for c, q in zip(allcomm[sl].tolist(), alltid[sl].tolist())]
        _add_counters(w, clk, allpid[sl], names, allts[sl], {k: v[sl] for k, v in vals.items()})
    return int(allts.size)


def _process_counters(rec, w: TraceWriter, clk: _Clock) -> None:
    ps = rec.table("proc_samples")
    if ps.num_rows:
        _add_counters(w, clk, T.col(ps, "pid", np.int64), "RSS", T.col(ps, "ts_ns", np.int64),
                      {"MiB": T.col(ps, "rss_bytes") / 2**20})
    f = rec.table("faults")
    if f.num_rows:
        g = f.group_by(["pid", "ts_ns", "bucket_ns"]).aggregate([("faults", "sum"), ("major", "sum")])
        g = g.sort_by([("pid", "ascending"), ("ts_ns", "ascending")])
        per_s = 1e9 / np.maximum(T.col(g, "bucket_ns"), 1)
        allf, maj = T.col(g, "faults_sum"), T.col(g, "major_sum")
        _add_counters(w, clk, T.col(g, "pid", np.int64), "page faults/s", T.col(g, "ts_ns", np.int64),
                      {"minor": (allf - maj) * per_s, "major": maj * per_s})
    gp = rec.table("gpu_processes")
    if gp.num_rows:
        # GPU memory of each process (NVML reports host pids), one track per GPU on the process.
        gp = gp.sort_by([("pid", "ascending"), ("gpu", "ascending"), ("ts_ns", "ascending")])
        names = [f"GPU{g} memory" for g in gp.column("gpu").to_pylist()]
        _add_counters(w, clk, T.col(gp, "pid", np.int64), names, T.col(gp, "ts_ns", np.int64),
                      {"MiB": T.col(gp, "used_bytes") / 2**20})
    b = rec.table("block_io")
    if b.num_rows:
        tgt = T._target_filter(b)
        if tgt.num_rows:
            g = tgt.group_by(["pid", "ts_ns", "bucket_ns"]).aggregate(
                [("bytes", "sum"), ("count", "sum"), ("lat_sum_ns", "sum")])
            g = g.sort_by([("pid", "ascending"), ("ts_ns", "ascending")])
            per_s = 1e9 / np.maximum(T.col(g, "bucket_ns"), 1)
            cnt = T.col(g, "count_sum")
            lat = np.divide(T.col(g, "lat_sum_ns_sum"), cnt, out=np.zeros_like(cnt), where=cnt > 0) / 1e6
            _add_counters(w, clk, T.col(g, "pid", np.int64), "block I/O", T.col(g, "ts_ns", np.int64),
                          {"MiB/s": T.col(g, "bytes_sum") * per_s / 2**20, "mean latency ms": lat})


def _host_and_gpu_counters(rec, w: TraceWriter, clk: _Clock) -> None:
    raw = 1 << 62  # no downsampling: the export keeps every sample
    by_name = {t.name: t for t in T.host_tracks(rec, raw) + T.block_io_tracks(rec, raw) + T.host_cpu_tracks(rec, raw)}
    groups = [
        ("memory", [("host.mem_available", "available GiB", 2.0**-30), ("host.swap_used", "swap used GiB", 2.0**-30)]),
        ("PSI", [("host.psi_mem_some", "memory some %", 100), ("host.psi_mem_full", "memory full %", 100),
                 ("host.psi_io_some", "io some %", 100), ("host.psi_cpu_some", "cpu some %", 100)]),
        ("CPU", [("host_cpu.busy", "busy %", 100), ("host_cpu.iowait", "iowait %", 100),
                 ("host_cpu.steal", "steal %", 100)]),
        ("block I/O (all issuers)", [("block_io.target_bytes", "target bytes/s", 1),
                                     ("block_io.other_bytes", "others bytes/s", 1),
                                     ("block_io.lat_max", "max latency ms", 1)]),
    ]
    for gname, members in groups:
        for name, arg, scale in members:
            tr = by_name.get(name)
            if tr is not None and len(tr):
                _add_counters(w, clk, HOST_PID, f"{gname} {arg}", tr.ts_ns, {"value": tr.values * scale})
    g = rec.table("gpu_devices")
    if g.num_rows:
        ts, gpu = T.col(g, "ts_ns", np.int64), T.col(g, "gpu", np.int64)
        for gi in np.unique(gpu).tolist():
            m = gpu == gi
            pid = GPU_PID + gi
            _add_counters(w, clk, pid, "memory", ts[m], {"used GiB": T.col(g, "mem_used_bytes")[m] / 2**30})
            _add_counters(w, clk, pid, "utilisation", ts[m], {"gpu %": T.col(g, "util_gpu_pct")[m],
                                                              "memory %": T.col(g, "util_mem_pct")[m]})
            pw = T.col(g, "power_mw")[m]
            if np.isfinite(pw).any():
                _add_counters(w, clk, pid, "power", ts[m], {"W": pw / 1000})
            _add_counters(w, clk, pid, "throttle reasons", ts[m],
                          {"bitmask": T.col(g, "clocks_event_reasons", np.uint64)[m].astype(np.float64)})


def _reclaim(rec, w: TraceWriter, clk: _Clock) -> int:
    """Direct-reclaim stalls as slices on lanes of the host process; returns the lanes used."""
    t = rec.table("reclaim")
    if not t.num_rows:
        return 0
    t = t.filter(pc.not_equal(t.column("kind"), "kswapd_wake"))
    if not t.num_rows:
        return 0
    start = T.col(t, "ts_ns", np.int64)
    dur = T.col(t, "duration_ns", np.int64)
    lanes = assign_lanes(start, start + dur)
    labels = [_js(f"{k} reclaim: {c} ({p}){' [target]' if it else ''}") for k, c, p, it in zip(
        t.column("kind").to_pylist(), t.column("comm").to_pylist(), t.column("pid").to_pylist(),
        t.column("in_target").to_pylist())]
    rc = T.col(t, "nr_reclaimed", np.int64).tolist()
    w.add("X", (f'{{"ph":"X","cat":"reclaim","name":{n},"ts":{a},"dur":{d},"pid":{HOST_PID},"tid":{RECLAIM_TID + 1 + ln},'
                f'"args":{{"pages_reclaimed":{r}}}}}'
                for n, a, d, ln, r in zip(labels, clk.us(start), clk.dur(dur), lanes.tolist(), rc)))
    return int(lanes.max()) + 1


def _wake_flows(rec, w: TraceWriter, clk: _Clock) -> int:
    """Waker -> woken arrows (see the module docstring); returns the flows written."""
    if not rec.has("wakeups") or not rec.table("wakeups").num_rows:
        return 0
    from autoglm_trace.analysis import wakers  # noqa: PLC0415 - only when there are wakeups

    t = wakers.classify(rec)
    if t is None or not t.num_rows:
        return 0
    keep = pc.and_(pc.greater(t.column("waker_tid"), 0), pc.greater_equal(t.column("sleep_ns"), WAKE_MIN_NS))
    t = t.filter(keep)
    if not t.num_rows:
        return 0
    t = t.sort_by([("sleep_ns", "descending")]).slice(0, MAX_WAKE_FLOWS)
    end = T.col(t, "ts_ns", np.int64) + T.col(t, "bucket_ns", np.int64) - 2000
    a, b = clk.us(end), clk.us(end + 1000)
    wp, wt = t.column("waker_pid").to_pylist(), t.column("waker_tid").to_pylist()
    pp, pt = t.column("pid").to_pylist(), t.column("tid").to_pylist()
    names = [_js(f"woken by {c} ({x})") for c, x in zip(t.column("waker_comm").to_pylist(), wt)]
    args = [f'"wakeups":{n},"sleep_ended_ms":{ms},"class":{_js(k)}' for n, ms, k in zip(
        t.column("count").to_pylist(), _num(T.col(t, "sleep_ns") / 1e6), t.column("class").to_pylist())]
    lines = []
    for i in range(t.num_rows):
        fid = i + 1
        lines.append(f'{{"ph":"X","cat":"wakeup","name":"wake {pt[i]}","ts":{a[i]},"dur":0.5,"pid":{wp[i]},'
                     f'"tid":{wt[i]},"args":{{{args[i]}}}}}')
        lines.append(f'{{"ph":"s","cat":"wakeup","name":"wakeup","id":{fid},"ts":{a[i]},"pid":{wp[i]},"tid":{wt[i]}}}')
        lines.append(f'{{"ph":"X","cat":"wakeup","name":{names[i]},"ts":{b[i]},"dur":0.5,"pid":{pp[i]},'
                     f'"tid":{pt[i]},"args":{{{args[i]}}}}}')
        lines.append(f'{{"ph":"f","bp":"e","cat":"wakeup","name":"wakeup","id":{fid},"ts":{b[i]},"pid":{pp[i]},'
                     f'"tid":{pt[i]}}}')
    w.add("flow", lines)
    return t.num_rows


def _instants(rec, w: TraceWriter, clk: _Clock) -> None:
    lines: list[str] = []
    oom = rec.table("oom_kills")
    if oom.num_rows:
        lab = [_js(f"OOM kill {c} ({p})") for c, p in zip(oom.column("comm").to_pylist(), oom.column("pid").to_pylist())]
        rss = (T.col(oom, "anon_rss_bytes") + T.col(oom, "file_rss_bytes") + T.col(oom, "shmem_rss_bytes")) / 2**20
        extra = [f'"in_target":{"true" if it else "false"},"memcg":{_js(mc)},"rss_MiB":{r}' for it, mc, r in zip(
            oom.column("in_target").to_pylist(), oom.column("memcg").to_pylist(), _num(rss, 1))]
        lines += [f'{{"ph":"i","s":"g","cat":"oom","name":{n},"ts":{ts},"pid":{HOST_PID},"tid":0,"args":{{{e}}}}}'
                  for n, ts, e in zip(lab, clk.us(T.col(oom, "ts_ns", np.int64)), extra)]
    pe = rec.table("proc_events")
    if pe.num_rows:
        ex = pe.filter(pc.equal(pe.column("event"), "exit"))
        if ex.num_rows:
            lab = [_js(f"exit {c} ({p})" + (f" signal {s}" if s else f" code {x}" if x is not None else ""))
                   for c, p, s, x in zip(ex.column("comm").to_pylist(), ex.column("pid").to_pylist(),
                                         ex.column("signal").to_pylist(), ex.column("exit_code").to_pylist())]
            pids = ex.column("pid").to_pylist()
            lines += [f'{{"ph":"i","s":"g","cat":"exit","name":{n},"ts":{ts},"pid":{p},"tid":0}}'
                      for n, ts, p in zip(lab, clk.us(T.col(ex, "ts_ns", np.int64)), pids)]
    ge = rec.table("gpu_events")
    if ge.num_rows:
        lab = [_js(f"GPU{g} {e}" + (f" {d}" if d is not None else "")) for g, e, d in zip(
            ge.column("gpu").to_pylist(), ge.column("event").to_pylist(), ge.column("data").to_pylist())]
        lines += [f'{{"ph":"i","s":"g","cat":"gpu","name":{n},"ts":{ts},"pid":{GPU_PID + g},"tid":0}}'
                  for n, ts, g in zip(lab, clk.us(T.col(ge, "ts_ns", np.int64)), ge.column("gpu").to_pylist())]
    al = rec.table("alerts")
    if al.num_rows:
        lab = [_js(f"alert {k}: {m}") for k, m in zip(al.column("kind").to_pylist(), al.column("message").to_pylist())]
        lines += [f'{{"ph":"i","s":"g","cat":"alert","name":{n},"ts":{ts},"pid":{HOST_PID},"tid":0}}'
                  for n, ts in zip(lab, clk.us(T.col(al, "ts_ns", np.int64)))]
    w.add("i", lines)


# ----------------------------------------------------------------------------------------------
def export_perfetto(rec, path: str | Path) -> dict[str, Any]:
    """Write ``rec`` (a Recording) as Chrome trace-event JSON at ``path`` (gzipped when it ends in
    ``.gz``), atomically (temp file + rename). Returns stats: events per phase, spans placed on
    threads vs lanes, the time origin, the tables used and those absent."""
    path = Path(path)
    origin = _origin(rec)
    clk = _Clock(origin)
    used = [n for n in TS_TABLES if rec.has(n) and rec.table(n).num_rows]
    absent = [n for n in TS_TABLES if not rec.has(n)]
    other = {
        "source": "autoglm-trace", "recording": str(rec.path), "time_origin_ns": origin,
        "time_origin_wall": datetime.fromtimestamp((origin + rec.wall_offset_ns) / 1e9, tz=timezone.utc).isoformat(),
        "clock": "CLOCK_MONOTONIC; ts = (monotonic_ns - time_origin_ns) / 1000",
        "target": rec.target, "not_recorded": absent,
    }
    with atomic_file(path) as raw:
        binf = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) if path.suffix == ".gz" else raw
        with io.TextIOWrapper(binf, encoding="ascii", newline="\n", write_through=False) as f:
            w = TraceWriter(f, other)
            g = rec.table("gpu_devices")
            gpus = sorted(set(g.column("gpu").to_pylist())) if g.num_rows else []
            ge = rec.table("gpu_events")
            gpus = sorted(set(gpus) | set(ge.column("gpu").to_pylist() if ge.num_rows else []))
            # Spans first (to know the lanes), metadata after: the importer does not need M first.
            span_stats = _spans(rec, w, clk)
            states = _thread_states(rec, w, clk)
            _process_counters(rec, w, clk)
            _host_and_gpu_counters(rec, w, clk)
            reclaim_lanes = _reclaim(rec, w, clk)
            _instants(rec, w, clk)
            flows = _wake_flows(rec, w, clk)
            _metadata(rec, w, gpus, span_stats["lanes"], reclaim_lanes)
            w.close()
    return {"path": str(path), "events": w.n, "by_phase": dict(w.by_phase), **span_stats,
            "thread_state_events": states, "wake_flows": flows, "time_origin_ns": origin, "tables_used": used,
            "tables_absent": absent, "bytes": path.stat().st_size}


__all__ = ["export_perfetto", "assign_lanes", "TraceWriter", "PSEUDO_PID"]
