"""Who the target's threads waited on while asleep: lock and GIL waits from the ``wakeups`` table.

Every row of ``wakeups`` is an (woken thread, waker) pair per bucket with the S/D sleep the wakeups
ended. A sleep is classed as

* ``gil``  -- a wait for CPython's GIL: the thread was woken by another thread of its own (Python)
  process that had been on CPU all along (``waker_oncpu_ns`` >= half the sleep: it ran Python and
  dropped the GIL when asked), or it timed out after the switch interval (CPython's take_gil waits
  ``sys.getswitchinterval()``, 5 ms, on a condition variable, then asks the holder to drop it: the
  wakeups are ``[hrtimer]``s ending sleeps of 4.5-6.5 ms on average) while a sibling thread ran or
  waited for a CPU (it keeps the GIL while runnable);
* ``handoff`` -- a wakeup by another thread of the target with which the pair goes both ways (the
  wakee's wakeups end at least a fifth as much of the waker's sleep), or where one side is a request thread (it
  emitted request spans; however long the sleep): a queue between a request thread and a worker, request and response.
  Waiting for work, or for the answer the worker computes, is being served, not contended: the time
  split follows it to the worker's own time;
* ``lock`` -- any other wakeup by another thread of the target tree (a mutex / futex released by a
  holder its waiters never wake, a condition signalled): the waker is the holder they waited on;
* everything else (timers, network, outside processes, and threads parked for seconds on end -- idle
  pool threads, a thread woken at shutdown) is not a wait on the target.

Holders are charged with the waits they ended, beyond what they ended at the baseline. A waiter that
itself spent the incident asleep waiting on the holder passes on what it "ended" (two waiters
relaying a lock: the second is woken by the first one's release), in proportion to how much of the
incident it was asleep, to whoever woke it. A thread is never its own culprit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis import tree as tree_mod
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import baseline_rows

SWITCH_INTERVAL_NS = 5_000_000  # CPython's default sys.getswitchinterval()
# Mean sleep per wakeup of timed GIL waits: the switch interval plus timer slack, a little either way.
GIL_TIMED_WAIT_NS = (0.9 * SWITCH_INTERVAL_NS, 1.3 * SWITCH_INTERVAL_NS)
HOLDER_ONCPU = 0.5  # waker on CPU for at least this part of the sleep it ended: it held the GIL
SIBLING_ONCPU = 0.2  # a timed wait is a GIL wait when siblings ran (or were runnable) this part of the bucket
HANDOFF_RATIO = 0.2  # the reverse direction ends at least this part of the sleep: a hand-off
PARKED_NS = 2_000_000_000  # mean sleep per wakeup beyond this: parked, not waiting on a holder
RELAY_STEPS = 3
MIN_SHARE = 0.05
TOP = 3


def classify(rec: Recording, tree: tree_mod.Tree | None = None) -> pa.Table | None:
    """The S-state rows of ``wakeups`` with a ``class`` column (gil | lock | handoff | other) and
    ``wait_ns`` (the sleep, for gil and lock rows; else 0). None: not recorded."""
    if not rec.has("wakeups"):
        return None
    t = rec.table("wakeups")
    if not t.num_rows:
        return t.append_column("class", pa.array([], pa.string())).append_column("wait_ns", pa.array([], pa.float64()))
    t = t.filter(pc.equal(t.column("state"), "S"))
    tree = tree or tree_mod.load(rec)
    n = t.num_rows
    tid = _np(t, "tid")
    pid = _np(t, "pid")
    wtid = _np(t, "waker_tid")
    wpid = _np(t, "waker_pid")
    ctx = np.asarray(t.column("waker_context").to_pylist(), dtype=object)
    sleep = _np(t, "sleep_ns").astype(np.float64)
    cnt = np.maximum(_np(t, "count"), 1)
    oncpu = _np(t, "waker_oncpu_ns").astype(np.float64)
    inn = pc.fill_null(t.column("waker_in_target"), False).to_numpy(zero_copy_only=False)
    py = np.array([int(p) in tree.python for p in pid.tolist()], dtype=bool)
    task = (ctx == "task") & (wtid != 0) & (wtid != tid)
    by_sibling = task & inn & (wpid == pid)
    gil_task = by_sibling & py & (oncpu >= HOLDER_ONCPU * sleep)
    sib = _sibling_oncpu(rec, t)
    bucket = _np(t, "bucket_ns").astype(np.float64)
    mean = sleep / cnt
    gil_timer = ((ctx == "hrtimer") & py & (mean >= GIL_TIMED_WAIT_NS[0]) & (mean <= GIL_TIMED_WAIT_NS[1])
                 & (sib >= SIBLING_ONCPU * bucket))
    # A thread parked for seconds (an idle pool thread, a thread woken at shutdown) waited for work --
    # unless a request thread is one side: a request waiting seconds for its answer is still served.
    near = task & inn & ~gil_task
    lock = near & (sleep / cnt <= PARKED_NS)
    # Both directions between a pair: a hand-off (see the module docstring), not a held lock.
    # By sleep time: a holder woken back now and then for a moment (taking the lock while a waiter
    # released it, a GIL hand-over) is still the one they wait on.
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    for i in np.flatnonzero(task & ~gil_task).tolist():
        pairs[(int(tid[i]), int(wtid[i]))] += float(sleep[i])
    handoff = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(lock).tolist():
        fwd, rev = pairs[(int(tid[i]), int(wtid[i]))], pairs.get((int(wtid[i]), int(tid[i])), 0)
        handoff[i] = rev >= HANDOFF_RATIO * fwd
    req = tree_mod.request_threads(rec)
    if req:
        # A request thread waking another hands it work; a request thread woken by a worker got its
        # answer (the worker's own time says what slowed it), however long it took.
        by_req = near & (np.isin(wtid, list(req)) | np.isin(tid, list(req)))
        handoff |= by_req
        lock |= by_req
    cls = np.full(n, "other", dtype=object)
    cls[lock & ~handoff] = "lock"
    cls[lock & handoff] = "handoff"
    cls[gil_task | gil_timer] = "gil"
    t = t.append_column("class", pa.array(cls.tolist(), pa.string()))
    waits = (cls == "lock") | (cls == "gil")
    return t.append_column("wait_ns", pa.array(np.where(waits, sleep, 0.0)))


def _np(t: pa.Table, name: str) -> np.ndarray:
    c = t.column(name)
    if c.null_count:
        c = pc.fill_null(c, 0)
    return c.to_numpy(zero_copy_only=False)


def _sched_oncpu(rec: Recording) -> dict[tuple[int, int], dict[int, float]]:
    """(bucket ts, pid) -> {tid: on-CPU ns} from ``sched``."""
    out: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    if not rec.has("sched") or not rec.table("sched").num_rows:
        return out
    s = rec.table("sched").select(["ts_ns", "pid", "tid", "oncpu_ns"])
    for ts, p, th, on in zip(_np(s, "ts_ns").tolist(), _np(s, "pid").tolist(), _np(s, "tid").tolist(),
                             _np(s, "oncpu_ns").tolist(), strict=True):
        d = out[(ts, p)]
        d[th] = d.get(th, 0.0) + on
    return out


def _sibling_oncpu(rec: Recording, t: pa.Table) -> np.ndarray:
    """Per wakeups row: time the other threads of the wakee's process were on CPU or runnable in that
    bucket (a GIL holder keeps the GIL while it waits for a CPU)."""
    out = np.zeros(t.num_rows)
    if not rec.has("sched") or not rec.table("sched").num_rows:
        return out
    s = rec.table("sched").select(["ts_ns", "pid", "tid", "oncpu_ns", "runq_wait_ns"])
    on: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    for ts, p, th, c, rq in zip(_np(s, "ts_ns").tolist(), _np(s, "pid").tolist(), _np(s, "tid").tolist(),
                                _np(s, "oncpu_ns").tolist(), _np(s, "runq_wait_ns").tolist(), strict=True):
        d = on[(ts, p)]
        d[th] = d.get(th, 0.0) + c + rq
    for i, (ts, p, th) in enumerate(zip(_np(t, "ts_ns").tolist(), _np(t, "pid").tolist(), _np(t, "tid").tolist(),
                                        strict=True)):
        d = on.get((ts, p))
        if d:
            out[i] = sum(v for k, v in d.items() if k != th)
    return out


def _charges(rec: Recording, t: pa.Table, kind: str) -> dict[int, dict[tuple[int, int], float]]:
    """wakee tid -> {(holder pid, holder tid): ns of its ``kind`` wait charged to the holder}."""
    m: dict[int, dict[tuple[int, int], float]] = defaultdict(lambda: defaultdict(float))
    if not t.num_rows:
        return m
    t = t.filter(pc.equal(t.column("class"), kind))
    if not t.num_rows:
        return m
    on = _sched_oncpu(rec) if kind == "gil" else {}
    ctx = t.column("waker_context").to_pylist()
    for ts, p, th, wp, wt, c, sl in zip(_np(t, "ts_ns").tolist(), _np(t, "pid").tolist(), _np(t, "tid").tolist(),
                                        _np(t, "waker_pid").tolist(), _np(t, "waker_tid").tolist(), ctx,
                                        _np(t, "wait_ns").tolist(), strict=True):
        if c == "task":
            m[th][(wp, wt)] += sl
            continue
        # A timed GIL wait: the holder is whichever sibling ran, in proportion to its CPU time.
        sib = {k: v for k, v in (on.get((ts, p)) or {}).items() if k != th and v > 0}
        tot = sum(sib.values())
        for k, v in sib.items():
            m[th][(p, k)] += sl * v / tot
    return m


def _relay(m: dict[int, dict[tuple[int, int], float]], duration_ns: float) -> None:
    """Pass on the charge of holders that were themselves asleep waiting (see the module docstring)."""
    asleep = {w: min(1.0, sum(d.values()) / duration_ns) for w, d in m.items()} if duration_ns > 0 else {}
    for _ in range(RELAY_STEPS):
        moved = False
        for origin, d in m.items():
            for (hp, ht), ns in list(d.items()):
                rho = asleep.get(ht, 0.0)
                up = {k: v for k, v in m.get(ht, {}).items() if k[1] not in (origin, ht)}
                tot = sum(up.values())
                if rho < 0.05 or tot <= 0 or ns <= 0:
                    continue
                give = ns * rho
                d[(hp, ht)] -= give
                for k, v in up.items():
                    d[k] += give * v / tot
                moved = True
        if not moved:
            break


def _totals(m: dict[int, dict[tuple[int, int], float]], wakees: set[int] | None) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = defaultdict(float)
    for origin, d in m.items():
        if wakees is not None and origin not in wakees:
            continue
        for k, v in d.items():
            if k[1] != origin and v > 0:
                out[k] += v
    return out


def holder_culprits(rec: Recording, start_ns: int, end_ns: int, slack_ns: int, kind: str,
                    victim_pids: set[int], requests: int | None = None,
                    baseline: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The threads the victims' ``kind`` ("lock" | "gil") waits were waiting on, beyond the baseline
    (``baseline``: the incident's own baseline windows, as for the cause; else everything outside)."""
    tree = tree_mod.load(rec)
    t = classify(rec, tree)
    if t is None:
        return {"culprits": [], "note": "wakeups not recorded"}
    ts = _np(t, "ts_ns") if t.num_rows else np.zeros(0, np.int64)
    a, b = start_ns - slack_ns, end_ns
    inside = (ts >= a) & (ts <= b)
    if not inside.any():
        return {"culprits": [], "note": "no wakeups of the target in the incident"}
    wakee_pid = _np(t, "pid")
    victim_tids = {int(x) for x, p in zip(_np(t, "tid").tolist(), wakee_pid.tolist(), strict=True)
                   if p in victim_pids} if victim_pids else None
    dur = float(b - a)
    m_in = _charges(rec, t.filter(pa.array(inside)), kind)
    _relay(m_in, dur)
    inc = _totals(m_in, victim_tids)
    outside, base_span = baseline_rows(rec, ts, a, b, baseline)
    base_span = max(1.0, base_span)
    m_out = _charges(rec, t.filter(pa.array(outside)), kind)
    _relay(m_out, base_span)
    base = {k: v * dur / base_span for k, v in _totals(m_out, victim_tids).items()}
    inc_total, base_total = sum(inc.values()), sum(base.values())
    extra = inc_total - base_total
    vs_base = extra > 0.1 * inc_total and base_total > 0
    denom = max(extra, sum(max(0.0, v - base.get(k, 0.0)) for k, v in inc.items())) if vs_base else inc_total
    shares = {k: (max(0.0, v - base.get(k, 0.0)) if vs_base else v) / (denom or 1.0) for k, v in inc.items()}
    comm = _waker_comms(t)
    sel = t.filter(pa.array(inside))
    oncpu_frac = _holder_oncpu(rec, sel, a, b)
    out = []
    for k in sorted(shares, key=lambda k: -shares[k]):
        if len(out) >= TOP or shares[k] < MIN_SHARE:
            break
        hp, ht = k
        c: dict[str, Any] = {"pid": int(hp), "tid": int(ht), "comm": comm.get(ht) or tree.comm.get(hp),
                             "share": round(shares[k], 4), "wait_ms": round(inc[k] / 1e6, 3),
                             "holder_oncpu_fraction": oncpu_frac.get(ht)}
        if requests:
            c["wait_per_request_ms"] = round(inc[k] / 1e6 / requests, 3)
        out.append(tree_mod.describe(tree, c))
    rest = max(0.0, 1.0 - sum(c["share"] for c in out))
    return {"culprits": out, "weighted_by": f"{kind}_wait_ns", "share_of": "extra_wait" if vs_base else "wait",
            "total_wait_ms": round(inc_total / 1e6, 3), "extra_wait_ms": round(max(0.0, extra) / 1e6, 3),
            "remainder": {"share": round(rest, 4),
                          "summary": f"{100 * rest:.0f}% not attributed" + (
                              ": many small holders / the usual waits" if rest >= 0.01 else "")},
            "victims": sorted(victim_pids)[:20]}


def _waker_comms(t: pa.Table) -> dict[int, str]:
    return {int(k): v for k, v in zip(_np(t, "waker_tid").tolist(), t.column("waker_comm").to_pylist(), strict=True)
            if k}


def _holder_oncpu(rec: Recording, t: pa.Table, a: int, b: int) -> dict[int, float]:
    """tid -> fraction of [a, b] it spent on CPU (from ``sched``), for the wakers in ``t``."""
    if not rec.has("sched") or not rec.table("sched").num_rows:
        return {}
    s = rec.table("sched")
    ts = _np(s, "ts_ns")
    s = s.filter(pa.array((ts >= a) & (ts <= b)))
    if not s.num_rows:
        return {}
    g = s.group_by("tid").aggregate([("oncpu_ns", "sum")])
    on = dict(zip(g.column("tid").to_pylist(), g.column("oncpu_ns_sum").to_pylist(), strict=True))
    return {int(k): round(min(1.0, float(on[k]) / max(1, b - a)), 3)
            for k in set(_np(t, "waker_tid").tolist()) if k in on}


def wait_signals(rec: Recording, window_index: Any, n: int, victim_pids: set[int] | None = None
                 ) -> dict[str, np.ndarray] | None:
    """Per window: the ``lock`` and ``gil`` waits (ns) of the victims' threads. None: not recorded."""
    t = classify(rec)
    if t is None:
        return None
    if victim_pids and t.num_rows:
        t = t.filter(pc.is_in(t.column("pid"), value_set=pa.array(sorted(victim_pids), pa.int32())))
    out = {}
    cls = np.asarray(t.column("class").to_pylist(), dtype=object) if t.num_rows else np.zeros(0, object)
    ts = _np(t, "ts_ns") if t.num_rows else np.zeros(0, np.int64)
    sl = _np(t, "wait_ns").astype(np.float64) if t.num_rows else np.zeros(0)
    cnt = np.maximum(_np(t, "count"), 1) if t.num_rows else np.zeros(0)
    bucket = _np(t, "bucket_ns") if t.num_rows else np.zeros(0, np.int64)
    for kind in ("lock", "gil"):
        m = cls == kind
        out[kind] = _spread(window_index, n, ts[m], sl[m], cnt[m], bucket[m])
    return out


def _spread(window_index: Any, n: int, ts: np.ndarray, sleep: np.ndarray, cnt: np.ndarray,
            bucket: np.ndarray) -> np.ndarray:
    """Sleep per window, each row's sleep spread back over the time it lasted (its mean sleep per
    wakeup before the bucket's end) rather than all charged to the bucket where it ended: one 30 s
    wait ending at shutdown is not 30 s of waiting in one second."""
    out = np.zeros(n)
    if not len(ts):
        return out
    end = ts + bucket
    length = np.maximum(sleep / cnt, 1.0)
    first, last = window_index(end - length), window_index(end)
    single = first == last
    out += np.bincount(last[single], weights=sleep[single], minlength=n)[:n]
    for i in np.flatnonzero(~single).tolist():
        span = np.arange(first[i], last[i] + 1)
        out[span] += sleep[i] / len(span)
    return out


def work_receivers(rec: Recording) -> set[int]:
    """Threads a request thread handed work to (a hand-off wakeup by a request thread)."""
    req = tree_mod.request_threads(rec)
    t = classify(rec) if req else None
    if not req or t is None or not t.num_rows:
        return set()
    h = t.filter(pc.equal(t.column("class"), "handoff"))
    reqa = pa.array(sorted(req), pa.int32())
    return {int(x) for x in h.filter(pc.is_in(h.column("waker_tid"), value_set=reqa)).column("tid").to_pylist()}
