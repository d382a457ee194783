"""Where the time went in an incident: the slow requests' threads' time split into on-CPU, run-queue
wait (by whom), sleep (by waker) and D state (I/O, major faults, reclaim) -- one bar that adds up.

Scope: the threads that served the incident's slow requests (the ``tid`` of their spans), else the
victims' threads that ran in the incident. Per thread and bucket, ``sched`` gives on-CPU, run-queue
and D-state time; ``wakeups`` splits the sleep by who ended it. A request thread that sleeps while a
worker of its own process computes its answer (woken by the worker) is not "asleep" for the request:
that part of the sleep takes the worker's own split in the same bucket (on CPU, waiting for the CPU,
for the GIL, for a lock), so the bar follows the work one hop down instead of saying "waited for the
worker". (Hand-offs: see analysis/wakers.py.) Run-queue wait is split among the CPU culprits by their shares, the GIL / lock waits among
the holders by theirs.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from autoglm_trace.analysis import tree as tree_mod
from autoglm_trace.analysis import wakers
from autoglm_trace.analysis.reader import Recording

# The part of the split each stall cause kind is measured by (analysis/causes.py shares).
PART_OF = {"cpu_contention": "runq_wait", "gil_contention": "gil_wait", "lock_contention": "lock_wait",
           "io_wait": "dstate", "memory_pressure": "reclaim"}
PARTS = (("on_cpu", "on-CPU"), ("runq_wait", "run-queue wait"), ("gil_wait", "GIL wait"),
         ("lock_wait", "lock / queue wait"), ("sleep", "other sleep"), ("dstate", "D state"),
         ("reclaim", "direct reclaim"))


def _scope(rec: Recording, a: int, b: int) -> set[int] | None:
    """tids of the slow requests' spans in [a, b] (None: no span names a thread)."""
    if not rec.has("spans") or not rec.table("spans").num_rows:
        return None
    s = rec.table("spans")
    m = pc.and_(pc.less_equal(s.column("ts_ns"), b), pc.greater_equal(s.column("end_ns"), a))
    tids = {int(t) for t in s.filter(m).column("tid").drop_null().to_pylist() if t}
    return tids or None


@dataclass
class _Rows:
    """Per (bucket ts, tid): on-CPU, run-queue, D state from ``sched`` and the sleep by class from
    ``wakeups``; hand-off sleeps as (waker tid, sleep, how long one lasted); tid -> pid."""

    per: dict[tuple[int, int], dict[str, float]]
    handoffs: dict[tuple[int, int], list[tuple[int, float, float]]]
    pid_of: dict[int, int]
    buckets: dict[int, list[int]] = field(default_factory=dict)  # tid -> its bucket starts, sorted

    def waker_parts(self, wt: int, bts: int, length: float) -> dict[str, float]:
        """The waker's busy parts over the buckets a sleep of ``length`` ending in bucket ``bts`` covered."""
        bs = self.buckets.get(wt) or []
        out: dict[str, float] = defaultdict(float)
        for b in bs[bisect.bisect_right(bs, bts - length):bisect.bisect_right(bs, bts)]:
            for k in _BUSY:
                out[k] += self.per[(b, wt)].get(k, 0.0)
        return out


def _rows(rec: Recording) -> _Rows:
    """The recording's ``_Rows``, derived once."""
    got = getattr(rec, "_time_split_rows", None)
    if got is not None:
        return got
    per: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pid_of: dict[int, int] = {}
    s = rec.table("sched").select(["ts_ns", "pid", "tid", "oncpu_ns", "runq_wait_ns", "offcpu_dstate_ns"])
    for ts, pid, tid, on, rq, ds in zip(*(s.column(c).to_pylist() for c in s.column_names), strict=True):
        d = per[(ts, tid)]
        d["on_cpu"] += on or 0
        d["runq_wait"] += rq or 0
        d["dstate"] += ds or 0
        pid_of[tid] = pid
    handoffs: dict[tuple[int, int], list[tuple[int, float, float]]] = defaultdict(list)
    w = wakers.classify(rec, tree_mod.load(rec))
    if w is not None and w.num_rows:
        w = w.select(["ts_ns", "tid", "waker_tid", "class", "sleep_ns", "wait_ns", "count"])
        for ts, tid, wt, cls, sl, wait, cnt in zip(*(w.column(c).to_pylist() for c in w.column_names), strict=True):
            if cls in ("gil", "lock"):
                per[(ts, tid)][f"{cls}_wait"] += wait or 0
            elif cls == "handoff":  # followed to the waker's own split (see the module docstring)
                handoffs[(ts, tid)].append((wt, float(sl or 0), float(sl or 0) / max(1, cnt or 1)))
            else:
                per[(ts, tid)]["sleep"] += sl or 0
    buckets: dict[int, list[int]] = defaultdict(list)
    for ts, tid in per:
        buckets[tid].append(ts)
    for v in buckets.values():
        v.sort()
    _carve_reclaim(rec, per, buckets)
    got = _Rows(per, handoffs, pid_of, dict(buckets))
    rec._time_split_rows = got  # type: ignore[attr-defined]
    return got


def _carve_reclaim(rec: Recording, per: dict[tuple[int, int], dict[str, float]], buckets: dict[int, list[int]]) -> None:
    """Direct-reclaim stalls (``reclaim``, per thread) as their own part, taken out of the bucket's
    on-CPU time first (reclaim runs on the CPU), then its D state (it may sleep on writeback)."""
    if not rec.has("reclaim") or not rec.table("reclaim").num_rows:
        return
    r = rec.table("reclaim").select(["ts_ns", "tid", "kind", "duration_ns"])
    for ts, tid, kind, dur in zip(*(r.column(c).to_pylist() for c in r.column_names), strict=True):
        bs = buckets.get(tid) if tid else None
        if kind == "kswapd_wake" or not dur or not bs:
            continue
        i = bisect.bisect_right(bs, ts) - 1
        if i < 0:
            continue
        d = per[(bs[i], tid)]
        left = float(dur)
        for k in ("on_cpu", "dstate"):
            take = min(left, d.get(k, 0.0))
            d[k] = d.get(k, 0.0) - take
            d["reclaim"] = d.get("reclaim", 0.0) + take
            left -= take


def _split_totals(rec: Recording, ranges: list[tuple[int, int]]) -> tuple[dict[str, float], int, bool] | None:
    """Summed parts (ns) over the buckets in ``ranges``: (totals, threads, scoped by request spans)."""
    rows = _rows(rec)
    per, pid_of = rows.per, rows.pid_of
    vic = tree_mod.victims(rec, tree_mod.load(rec))
    total: dict[str, float] = defaultdict(float)
    seen: set[int] = set()
    scoped = True
    for a, b in ranges:
        keys = [k for k in per if a <= k[0] <= b]
        scope = _scope(rec, a, b)
        scoped = scoped and scope is not None
        threads = scope if scope else {t for (_ts, t) in keys if pid_of.get(t) in vic and per[(_ts, t)]["on_cpu"] > 0}
        for bts, tid in keys:
            if tid not in threads:
                continue
            seen.add(tid)
            for k, v in _thread_parts(rows, bts, tid).items():
                total[k] += v
    if not seen or sum(total.values()) <= 0:
        return None
    return total, len(seen), scoped


_BUSY = ("on_cpu", "runq_wait", "gil_wait", "lock_wait", "dstate", "reclaim")


def _thread_parts(rows: _Rows, bts: int, tid: int) -> dict[str, float]:
    """One thread's parts in one bucket; a hand-off sleep (waiting for the worker that computes the
    answer) takes the waker's split over the time the sleep lasted (a request of seconds is served
    over many buckets, not only the one where the answer came)."""
    out = {k: v for k, v in rows.per.get((bts, tid), {}).items() if k in _ALL}
    for wt, served, length in rows.handoffs.get((bts, tid), []):
        if served <= 0:
            continue
        wd = rows.waker_parts(wt, bts, length)
        busy = sum(wd.values())
        if busy <= 0:
            out["sleep"] = out.get("sleep", 0.0) + served
            continue
        for k, v in wd.items():
            out[k] = out.get(k, 0.0) + served * v / busy
    return out


_ALL = (*_BUSY, "sleep")


def request_waits(rec: Recording, window_index: Any, n: int) -> dict[str, np.ndarray] | None:
    """Per window: the ``lock`` and ``gil`` waits (ns) of the threads serving requests then (the tids
    of the spans open in the window, hand-offs followed as in the split) -- the same time the split
    shows, so the signal a cause is judged by and the bar agree. None where no span names a thread
    (then analysis/wakers.py's per-victim signals stand)."""
    if not rec.has("sched") or not rec.table("sched").num_rows or not rec.has("spans"):
        return None
    sp = rec.table("spans")
    if not sp.num_rows or not pc.any(pc.greater(pc.fill_null(sp.column("tid"), 0), 0)).as_py():
        return None
    scope: list[set[int]] = [set() for _ in range(n)]
    for t, a, b in zip(sp.column("tid").to_pylist(), window_index(np.asarray(sp.column("ts_ns").to_pylist())).tolist(),
                       window_index(np.asarray(sp.column("end_ns").to_pylist())).tolist(), strict=True):
        if t:
            for w in range(int(a), int(b) + 1):
                scope[w].add(int(t))
    rows = _rows(rec)
    keys = list(rows.per) + [k for k in rows.handoffs if k not in rows.per]
    out = {"lock": np.zeros(n), "gil": np.zeros(n)}
    if not keys:
        return out
    idx = window_index(np.asarray([k[0] for k in keys], dtype=np.int64)).tolist()
    for (bts, tid), w in zip(keys, idx, strict=True):
        if tid not in scope[w]:
            continue
        parts = _thread_parts(rows, bts, tid)
        out["lock"][w] += parts.get("lock_wait", 0.0)
        out["gil"][w] += parts.get("gil_wait", 0.0)
    return out


def fractions(rec: Recording, ranges: list[tuple[int, int]]) -> dict[str, Any] | None:
    """{part: fraction of the time} over ``ranges`` and whether the scope was the request threads
    (the baseline side of ``extra_shares``); None without ``sched``."""
    if not ranges or not rec.has("sched") or not rec.table("sched").num_rows:
        return None
    got = _split_totals(rec, ranges)
    if got is None:
        return None
    total, _n, scoped = got
    grand = sum(total.values())
    return {"parts": {k: v / grand for k, v in total.items()}, "scoped": scoped, "total_ms": grand / 1e6}


def extra_shares(inc: dict[str, Any] | None, base: dict[str, Any] | None, latency_frac: float | None
                 ) -> dict[str, float] | None:
    """Part of the slow requests' *extra* latency each part accounts for.

    A slow request spends a fraction f_k of its time in part k, one at the baseline f_kb; the baseline
    request took (1 - x) of the slow one's time (x: the extra-latency fraction), so part k grew by
    f_k - (1 - x) f_kb of the slow request's time, i.e. (f_k - (1 - x) f_kb) / x of its extra. The
    parts' shares add up to 1 (some may be negative: a part that shrank). Only for splits scoped to
    the requests' own threads on both sides (a split of every thread that ran says little per request);
    None otherwise."""
    if not inc or not base or not latency_frac or latency_frac <= 0 or not (inc["scoped"] and base["scoped"]):
        return None
    x = float(latency_frac)
    keys = set(inc["parts"]) | set(base["parts"])
    return {k: (inc["parts"].get(k, 0.0) - (1 - x) * base["parts"].get(k, 0.0)) / x for k in keys}


def time_split(rec: Recording, a: int, b: int, causes: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The split for [a, b] (see the module docstring); None without a ``sched`` table."""
    if not rec.has("sched") or not rec.table("sched").num_rows:
        return None
    got = _split_totals(rec, [(a, b)])
    if got is None:
        return None
    total, nthreads, scoped = got
    grand = sum(total.values())
    by = _by(causes or [])
    parts = []
    for key, words in PARTS:
        v = total.get(key, 0.0)
        if v <= 0:
            continue
        frac = v / grand
        part: dict[str, Any] = {"part": key, "describe": words, "ms": round(v / 1e6, 3), "fraction": round(frac, 4)}
        if by.get(key):
            part["by"] = [dict(x, fraction=round(frac * x["share"], 4)) for x in by[key]]
        parts.append(part)
    return {"scope": ("threads of the slow requests" if scoped else "the target's threads that ran"),
            "threads": nthreads, "total_ms": round(grand / 1e6, 3), "parts": parts}


def _by(causes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """part -> [{label, share}] from the causes' culprits (their shares of that part's extra)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for c in causes:
        part = PART_OF.get(c.get("kind", ""))
        if part and c.get("culprits") and part not in out:
            out[part] = [{"label": u.get("label") or f"pid {u['pid']}", "share": float(u.get("share") or 0)}
                         for u in c["culprits"][:3]]
    return out


def bar_fractions(split: dict[str, Any]) -> list[tuple[str, float]]:
    """(describe, fraction) per part, summing to 1 (for the HTML bar)."""
    parts = split.get("parts") or []
    tot = sum(p["fraction"] for p in parts) or 1.0
    return [(p["describe"], float(np.round(p["fraction"] / tot, 4))) for p in parts]
