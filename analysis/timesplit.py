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

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis import tree as tree_mod
from autoglm_trace.analysis import wakers
from autoglm_trace.analysis.reader import Recording

PARTS = (("on_cpu", "on-CPU"), ("runq_wait", "run-queue wait"), ("gil_wait", "GIL wait"),
         ("lock_wait", "lock / queue wait"), ("sleep", "other sleep"), ("dstate", "D state"))


def _scope(rec: Recording, a: int, b: int) -> set[int] | None:
    """tids of the slow requests' spans in [a, b] (None: no span names a thread)."""
    if not rec.has("spans") or not rec.table("spans").num_rows:
        return None
    s = rec.table("spans")
    m = pc.and_(pc.less_equal(s.column("ts_ns"), b), pc.greater_equal(s.column("end_ns"), a))
    tids = {int(t) for t in s.filter(m).column("tid").drop_null().to_pylist() if t}
    return tids or None


def time_split(rec: Recording, a: int, b: int, causes: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The split for [a, b] (see the module docstring); None without a ``sched`` table."""
    if not rec.has("sched") or not rec.table("sched").num_rows:
        return None
    tree = tree_mod.load(rec)
    vic = tree_mod.victims(rec, tree)
    s = rec.table("sched")
    ts = s.column("ts_ns").to_numpy()
    s = s.filter(pa.array((ts >= a) & (ts <= b)))
    if not s.num_rows:
        return None
    rows = s.select(["ts_ns", "pid", "tid", "oncpu_ns", "runq_wait_ns", "offcpu_dstate_ns"]).to_pylist()
    per: dict[tuple[int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    pid_of: dict[int, int] = {}
    for r in rows:
        d = per[(r["ts_ns"], r["tid"])]
        d["on_cpu"] += r["oncpu_ns"] or 0
        d["runq_wait"] += r["runq_wait_ns"] or 0
        d["dstate"] += r["offcpu_dstate_ns"] or 0
        pid_of[r["tid"]] = r["pid"]
    w = wakers.classify(rec, tree)
    sleeps: dict[tuple[int, int], list[tuple[str, int, int, float, float]]] = defaultdict(list)
    if w is not None and w.num_rows:
        wts = w.column("ts_ns").to_numpy()
        w = w.filter(pa.array((wts >= a) & (wts <= b)))
        for r in w.select(["ts_ns", "tid", "waker_pid", "waker_tid", "class", "sleep_ns", "wait_ns"]).to_pylist():
            sleeps[(r["ts_ns"], r["tid"])].append((r["class"], r["waker_pid"], r["waker_tid"], float(r["sleep_ns"]),
                                                   float(r["wait_ns"] or 0)))
            key = (r["ts_ns"], r["tid"])
            if r["class"] in ("gil", "lock"):
                per[key][f"{r['class']}_wait"] += r["wait_ns"] or 0
            # hand-offs are followed to the waker below; the rest is plain sleep
            if r["class"] == "other":
                per[key]["sleep"] += r["sleep_ns"] or 0
    scope = _scope(rec, a, b)
    threads = scope if scope else {t for (_ts, t), d in per.items() if pid_of.get(t) in vic and d["on_cpu"] > 0}
    if not threads:
        return None
    total: dict[str, float] = defaultdict(float)
    for (bts, tid), d in list(per.items()):
        if tid not in threads:
            continue
        for k in ("on_cpu", "runq_wait", "dstate", "gil_wait", "lock_wait", "sleep"):
            total[k] += d.get(k, 0.0)
        # Served: a hand-off sleep (waiting for the worker that computes the answer) takes the waker's split.
        for cls, _wp, wt, sl, _wait in sleeps.get((bts, tid), []):
            if cls != "handoff":
                continue
            served = sl
            wd = per.get((bts, wt))
            busy = sum(wd.get(k, 0.0) for k in ("on_cpu", "runq_wait", "gil_wait", "lock_wait", "dstate")) if wd else 0
            if served <= 0:
                continue
            if busy <= 0:
                total["sleep"] += served
                continue
            for k in ("on_cpu", "runq_wait", "gil_wait", "lock_wait", "dstate"):
                total[k] += served * wd.get(k, 0.0) / busy
    grand = sum(total.values())
    if grand <= 0:
        return None
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
    return {"scope": ("threads of the slow requests" if scope else "the target's threads that ran"),
            "threads": len(threads), "total_ms": round(grand / 1e6, 3), "parts": parts}


def _by(causes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """part -> [{label, share}] from the causes' culprits (their shares of that part's extra)."""
    out: dict[str, list[dict[str, Any]]] = {}
    part_of = {"cpu_contention": "runq_wait", "gil_contention": "gil_wait", "lock_contention": "lock_wait",
               "io_wait": "dstate", "memory_pressure": "dstate"}
    for c in causes:
        part = part_of.get(c.get("kind", ""))
        if part and c.get("culprits") and part not in out:
            out[part] = [{"label": u.get("label") or f"pid {u['pid']}", "share": float(u.get("share") or 0)}
                         for u in c["culprits"][:3]]
    return out


def bar_fractions(split: dict[str, Any]) -> list[tuple[str, float]]:
    """(describe, fraction) per part, summing to 1 (for the HTML bar)."""
    parts = split.get("parts") or []
    tot = sum(p["fraction"] for p in parts) or 1.0
    return [(p["describe"], float(np.round(p["fraction"] / tot, 4))) for p in parts]
