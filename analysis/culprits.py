"""Who is responsible: processes named from the kernel tables' attribution columns.

* CPU: ``preemptions`` rows of the incident (the task switched in while a target thread lost the CPU
  or waited on the run queue), weighted by the run-queue wait charged to it (by count when the wait
  is not recorded).
* I/O: ``block_io`` issuers outside the target on the devices the target itself uses, by bytes.
* Memory: ``reclaim`` direct-reclaim stalls host-wide (a process allocating hard stalls in reclaim
  itself, so the allocator shows up by name), by stall time; plus the target processes whose RSS grew.
* GPU memory: ``gpu_processes`` by used memory.

Shares are fractions of the incident's total for that resource, target included, so "91 % of
preemptions by pid 4242" means 91 % of all the wait the target suffered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis import containers
from autoglm_trace.analysis import tree as tree_mod
from autoglm_trace.analysis import wakers as wakers_mod
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import (
    baseline_rows,
    baseline_span,
    col,
    counter_deltas,
    in_windows,
    recorded,
)

TOP = 3
# A culprit accounting for less than this of the extra wait is not named (no empty culprits).
MIN_SHARE = 0.05
# CPU demand of a thread of the tree beyond this multiple of its baseline rate counts as extra (bursty
# request workers reach 2-3x their average in a short incident).
NEWCOMER = 3.0


def _in_range(t: pa.Table, start_ns: int, end_ns: int, slack_ns: int = 0) -> pa.Table:
    if not t.num_rows:
        return t
    ts = t.column("ts_ns")
    m = pc.and_(pc.greater_equal(ts, start_ns - slack_ns), pc.less_equal(ts, end_ns))
    return t.filter(m)


def process_info(rec: Recording) -> dict[int, dict[str, Any]]:
    """pid -> {comm, cgroup} for the target's processes (from the ``processes`` table)."""
    if not rec.has("processes") or not rec.table("processes").num_rows:
        return _mark_recorder(rec, containers.merge(rec, {}))
    t = rec.table("processes")
    pids = col(t, "pid", np.int64)
    comm = t.column("comm").to_pylist()
    cg = t.column("cgroup").to_pylist()
    # Later rows (exec) win: they come later in the table.
    out = {int(p): {"comm": c, "cgroup": g} for p, c, g in zip(pids.tolist(), comm, cg, strict=False)}
    if "uid" in t.column_names:
        for p, u in zip(pids.tolist(), t.column("uid").to_pylist(), strict=False):
            out[int(p)]["uid"] = u
    return _mark_recorder(rec, containers.merge(rec, out))


def _mark_recorder(rec: Recording, info: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    pid = (rec.manifest.get("recorder") or {}).get("pid")
    if isinstance(pid, int):
        info.setdefault(pid, {"comm": None, "cgroup": None})["is_recorder"] = True
    return info


def _grouped(t: pa.Table, key: str, sums: list[str], comm: str) -> pa.Table:
    """Sums per key, and the key's comm as of its latest row (a comm changes on exec), as
    ``<comm>_max`` for the callers."""
    t = t.sort_by("ts_ns")
    g = t.group_by(key, use_threads=False).aggregate([(s, "sum") for s in sums] + [(comm, "last")])
    return g.rename_columns([c if c != f"{comm}_last" else f"{comm}_max" for c in g.column_names])


def _culprit(pid: int, comm: Any, share: float, in_target: bool, info: dict[int, dict[str, Any]],
             **extra: Any) -> dict[str, Any]:
    meta = info.get(pid, {})
    out = {"pid": pid, "comm": comm if comm is not None else meta.get("comm"),
           "cgroup": meta.get("cgroup"), "in_target": in_target, "share": round(float(share), 4)}
    if meta.get("is_recorder"):
        out["is_recorder"] = True  # autoglm-trace itself: say so rather than blame a stranger
    out.update(containers.naming(meta))  # container / pod, systemd unit, user (analysis.containers)
    out.update(extra)
    return out


def _baseline_expected(rec: Recording, full: pa.Table, key: str, value: str, start_ns: int, end_ns: int,
                       baseline: list[tuple[int, int]] | None = None) -> dict[int, float]:
    """key -> how much of ``value`` it would have had in [start, end] at its rate at the baseline."""
    if not full.num_rows:
        return {}
    m, span = baseline_rows(rec, col(full, "ts_ns", np.int64), start_ns, end_ns, baseline)
    out = full.filter(pa.array(m))
    if not out.num_rows:
        return {}
    g = out.group_by(key).aggregate([(value, "sum")])
    scale = (end_ns - start_ns) / max(1.0, span)
    return {int(k): float(v or 0) * scale for k, v in zip(g.column(key).to_pylist(),
                                                           g.column(f"{value}_sum").to_pylist(), strict=False)}


victims = tree_mod.victims


def _excess_shares(inc_w: dict[Any, float], base_w: dict[Any, float], inc_total: float, base_total: float
                   ) -> tuple[dict[Any, float], float, bool]:
    """Per key, its share of the victims' *extra* wait (incident minus the baseline expectation); the
    denominator, and whether a baseline was usable (else shares are of the incident's whole wait)."""
    extra = inc_total - base_total
    if extra <= 0.1 * inc_total or base_total <= 0:
        # No rise over the baseline to explain (or no baseline): shares of the whole wait.
        tot = inc_total or 1.0
        return {k: v / tot for k, v in inc_w.items()}, inc_total, False
    excess = {k: v - base_w.get(k, 0.0) for k, v in inc_w.items()}
    denom = max(extra, sum(v for v in excess.values() if v > 0)) or 1.0
    return {k: max(0.0, v) / denom for k, v in excess.items()}, denom, True


def _per_key(keys: list[Any], w: np.ndarray) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for k, v in zip(keys, w.tolist(), strict=True):
        out[k] = out.get(k, 0.0) + float(v)
    return out


def _remainder(shares: list[float], parts: dict[str, float]) -> dict[str, Any]:
    """The part of the extra wait no listed culprit accounts for, and what is known of it."""
    rest = max(0.0, 1.0 - sum(shares))
    known = {k: round(v, 4) for k, v in parts.items() if v >= 0.01}
    words = ", ".join(f"{REMAINDER_WORDS.get(k, k)} {100 * v:.0f}%" for k, v in known.items())
    return {"share": round(rest, 4), "parts": known,
            "summary": f"{100 * rest:.0f}% not attributed" + (f": {words}" if words else "")}


REMAINDER_WORDS = {
    "idle_cpu": "CPU idle (wakeup latency)", "usual": "the usual competition (below the baseline's)",
    "small": "many small contributors", "interrupts": "woken by interrupts / timers",
    "target_self": "the waiting threads' own process as usual", "unknown": "not recorded",
    "own_threads": "the target's own request threads and regular workers",  # or brief ones
}


def cpu_culprits(rec: Recording, start_ns: int, end_ns: int, bucket_slack_ns: int = 0,
                 baseline: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Who the victims (``victims``) waited behind on the run queue, inside the target tree as well as
    outside: a thread of a victim process is named per thread, another process per process (outside
    processes of one program folded by comm). Ranked by the wait beyond the baseline's."""
    if not recorded(rec, "preemptions"):
        return {"culprits": [], "note": "preemptions not recorded"}
    tree = tree_mod.load(rec)
    vic = victims(rec, tree)
    full = rec.table("preemptions")
    if vic:
        full = full.filter(pc.is_in(full.column("pid"), value_set=pa.array(sorted(vic), pa.int32())))
    t = _in_range(full, start_ns, end_ns, bucket_slack_ns)
    if not t.num_rows:
        return {"culprits": [], "note": "no preemptions of the target in the incident"}
    a, b = start_ns - bucket_slack_ns, end_ns
    use_wait = float(pc.sum(t.column("wait_ns")).as_py() or 0) > 0
    wcol = "wait_ns" if use_wait else "count"

    def keyed(tab: pa.Table) -> tuple[list[Any], np.ndarray, np.ndarray, list[Any]]:
        pid = col(tab, "preemptor_pid", np.int64)
        tid = col(tab, "preemptor_tid", np.int64, -1)
        comm = tab.column("preemptor_comm").to_pylist()
        inn = col(tab, "preemptor_in_target")
        keys: list[Any] = []
        for p, th, c, i in zip(pid.tolist(), tid.tolist(), comm, inn.tolist(), strict=True):
            if p == 0:
                keys.append(("idle",))
            elif p in vic and th > 0:
                keys.append(("tid", p, th))  # a thread of a waiting process: per thread
            elif i or p in tree.in_target:
                keys.append(("pid", p))
            else:
                keys.append(("comm", c) if c else ("pid", p))  # one outside program, several processes
        return keys, col(tab, wcol), col(tab, "count"), comm

    keys, w, cnt, comms = keyed(t)
    inc_w = _per_key(keys, w)
    out_mask, span = baseline_rows(rec, col(full, "ts_ns", np.int64), a, b, baseline)
    scale = (b - a) / max(1.0, span)
    base_w: dict[Any, float] = {}
    if out_mask.any():
        bk, bw, _bc, _ = keyed(full.filter(pa.array(out_mask)))
        base_w = {k: v * scale for k, v in _per_key(bk, bw).items()}
    inc_total = float(w.sum())
    base_total = float(sum(base_w.values()))
    shares, denom, vs_base = _excess_shares(inc_w, base_w, inc_total, base_total)
    weighted_by = "wait_ns" if use_wait else "count"
    to_explain = denom if use_wait else 0.0  # ns of wait (a count-weighted denominator is no time)
    own = _drop_regulars(rec, shares, a, b, baseline, to_explain)
    demand = _demand_shares(rec, tree, t, keys, inc_w, base_w, a, b, baseline) if vs_base else None
    if demand is not None:
        shares, weighted_by = demand, "extra_cpu"
        own = _drop_regulars(rec, shares, a, b, baseline, to_explain)
    pids = col(t, "preemptor_pid", np.int64)
    tids = col(t, "preemptor_tid", np.int64, -1)
    cpus = col(t, "cpu", np.int64, -1)
    rows_of: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        rows_of.setdefault(k, []).append(i)
    ranked = sorted((k for k in shares if k != ("idle",)), key=lambda k: -shares[k])
    out: list[dict[str, Any]] = []
    for k in ranked:
        if len(out) >= TOP or shares[k] < MIN_SHARE:
            break
        rows = rows_of[k]
        lead = max(rows, key=lambda i: w[i])
        pid = int(pids[lead])
        members = sorted({int(pids[i]) for i in rows})
        c_cpus, c_w = np.unique(cpus[rows], return_inverse=True)
        extra: dict[str, Any] = {}
        if k[0] == "tid":
            extra["tid"] = int(tids[lead])
        if len(members) > 1:
            extra.update(processes=len(members), pids=members[:10])
        c = _culprit(pid, comms[lead], shares[k], bool(pid in tree.in_target), process_info(rec),
                     cpu=int(c_cpus[np.argmax(np.bincount(c_w, weights=cnt[rows] + 1))]),
                     wait_ms=round(float(w[rows].sum()) / 1e6, 3) if use_wait else None,
                     preemptions=int(cnt[rows].sum()),
                     share_of_wait=round(float(w[rows].sum()) / (inc_total or 1.0), 4), **extra)
        c.pop("in_target", None)
        out.append(tree_mod.describe(tree, c))
    parts = {"idle_cpu": shares.get(("idle",), 0.0), "own_threads": own}
    listed = set(ranked[: len(out)])
    parts["small"] = sum(v for k, v in shares.items() if k != ("idle",) and k not in listed)
    if not vs_base:
        parts = {"idle_cpu": shares.get(("idle",), 0.0), "own_threads": own}
    return {"culprits": out, "weighted_by": weighted_by,
            "share_of": "extra_wait" if vs_base else "wait",
            "remainder": _remainder([c["share"] for c in out], parts),
            "victims": sorted(vic)[:20],
            "total_wait_ms": round(float(pc.sum(t.column("wait_ns")).as_py() or 0) / 1e6, 3),
            "extra_wait_ms": round(max(0.0, inc_total - base_total) / 1e6, 3) if use_wait else None,
            "total_preemptions": int(cnt.sum())}


def _window_sum(ts: np.ndarray, v: np.ndarray, a: int, b: int, span_out: float,
                base: np.ndarray | None = None) -> tuple[float, float]:
    """(sum of v in [a, b], the baseline's expectation for [a, b] at its rate outside: in the
    ``base`` mask's rows when given, whose total length is ``span_out``)."""
    m = (ts >= a) & (ts <= b)
    out = ~m if base is None else base
    return float(v[m].sum()), float(v[out].sum()) * (b - a) / max(1.0, span_out)


def _drop_regulars(rec: Recording, shares: dict[Any, float], a: int, b: int,
                   baseline: list[tuple[int, int]] | None, wait_ns: float = 0.0) -> float:
    """Threads of the waiting processes that ran at the baseline and do not take well beyond their
    usual CPU now, or that get their work from request threads (the request workers themselves,
    busier with more load), are not culprits, nor are the request threads: their share goes to the
    unattributed rest. A newcomer (a background thread, a pool spun up) stays if it ran at least
    ``MIN_SHARE`` of the ``wait_ns`` to explain: a waiter waits behind a thread no longer than it runs,
    so a thread that ran 2 ms in the window made nobody wait a tenth of a second (one charged 9 ms of
    a blip's wait for the one switch it made there). Returns the share so taken from them (the
    remainder says the waiters' own threads had it)."""
    tids = [k for k in shares if k[0] == "tid"]
    if not tids or not rec.has("sched") or not rec.table("sched").num_rows:
        return 0.0
    dropped = 0.0
    s = rec.table("sched")
    sts, stid, son = col(s, "ts_ns", np.int64), col(s, "tid", np.int64), col(s, "oncpu_ns")
    span_out = baseline_span(rec, a, b, baseline)
    sbase = in_windows(sts, baseline)
    requests = tree_mod.request_threads(rec)
    workers = wakers_mod.work_receivers(rec)
    for k in tids:
        m = stid == k[2]
        inc, base = _window_sum(sts[m], son[m], a, b, span_out, None if sbase is None else sbase[m])
        # A request thread is a waiter, never its own culprit.
        if (k[2] in requests or (base > 0 and (inc < NEWCOMER * base or k[2] in workers))
                or inc < MIN_SHARE * wait_ns):
            dropped += shares[k]
            shares[k] = 0.0
    return dropped


def _demand_shares(rec: Recording, tree: tree_mod.Tree, t: pa.Table, keys: list[Any],
                   inc_w: dict[Any, float], base_w: dict[Any, float], a: int, b: int,
                   baseline: list[tuple[int, int]] | None = None) -> dict[Any, float] | None:
    """Shares of the victims' extra run-queue wait by the competitors' extra CPU demand.

    The kernel charges a wait to the task that held the CPU when the waiter got it back. With
    several of the victims' own threads runnable on one CPU, the CPU goes round among them, so most
    waits end behind one of them even when a newcomer (a worker the server forked, a busy
    background thread) is what made them longer. The extra wait is caused by the extra CPU taken on
    the victims' CPUs: exact for the tree's threads (``sched`` on-CPU time, incident minus their
    baseline rate), and for outside processes the rest of the rise in those CPUs' busy time
    (``host_cpu``), split among them by their extra charged wait. A tree thread counts only where it
    shared a CPU with the victims (it appears among the tasks they waited behind). None when the
    data is not there (no ``host_cpu`` / ``sched``)."""
    if not (rec.has("sched") and rec.table("sched").num_rows and rec.has("host_cpu")
            and rec.table("host_cpu").num_rows):
        return None
    span_out = baseline_span(rec, a, b, baseline)
    cpus = col(t, "cpu", np.int64, -1)
    w = col(t, "wait_ns")
    per_cpu = np.bincount(np.clip(cpus, 0, None), weights=w)
    vcpus = [int(c) for c in np.flatnonzero(per_cpu > 0.02 * max(float(w.sum()), 1.0))]
    if not vcpus:
        return None
    hc = rec.table("host_cpu")
    hc = hc.filter(pc.is_in(hc.column("cpu"), value_set=pa.array(vcpus, pa.int16())))
    busy = sum(col(hc, c, np.float64, 0.0) for c in ("user_s", "system_s", "irq_s", "steal_s"))
    dts, d = counter_deltas(col(hc, "ts_ns", np.int64), col(hc, "cpu", np.int64), busy)
    h_inc, h_base = _window_sum(dts, d * 1e9, a, b, span_out, in_windows(dts, baseline))
    s = rec.table("sched")
    sts, spid, stid, son = (col(s, "ts_ns", np.int64), col(s, "pid", np.int64), col(s, "tid", np.int64),
                            col(s, "oncpu_ns"))
    sbase = in_windows(sts, baseline)
    t_inc, t_base = _window_sum(sts, son, a, b, span_out, sbase)
    extra: dict[Any, float] = {}
    for k in inc_w:
        if k[0] == "tid":
            m = stid == k[2]
        elif k[0] == "pid" and k[1] in tree.in_target:
            m = spid == k[1]
        else:
            continue
        i, bb = _window_sum(sts[m], son[m], a, b, span_out, None if sbase is None else sbase[m])
        # A thread that was busy at the baseline too (a request worker under more load) is not a
        # newcomer: only CPU far beyond its usual rate counts as extra demand.
        extra[k] = max(0.0, i - NEWCOMER * bb)
    outside = [k for k in inc_w if k not in extra and k != ("idle",)]
    pool = max(0.0, (h_inc - h_base) - (t_inc - t_base))
    ex_out = {k: max(0.0, inc_w[k] - base_w.get(k, 0.0)) for k in outside}
    tot_out = sum(ex_out.values())
    for k in outside:
        extra[k] = pool * ex_out[k] / tot_out if tot_out > 0 else 0.0
    total = sum(extra.values()) + (pool if tot_out <= 0 else 0.0)
    if total <= 0.02 * (b - a):
        return None  # no competitor took measurably more CPU: nothing to split by
    return {k: v / total for k, v in extra.items()}


def io_culprits(rec: Recording, start_ns: int, end_ns: int, bucket_slack_ns: int = 0,
                baseline: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Block-I/O issuers on the devices the target uses, inside its tree (a child doing the I/O) as well
    as outside; the waiting processes themselves are not culprits. By bytes beyond the baseline's."""
    if not recorded(rec, "block_io"):
        return {"culprits": [], "note": "block_io not recorded"}
    tree = tree_mod.load(rec)
    vic = victims(rec, tree)
    full = rec.table("block_io")
    inn_all = pc.fill_null(full.column("in_target"), False)
    tdevs = pc.unique(pc.filter(full.column("dev"), inn_all)) if pc.any(inn_all).as_py() else None
    t = _in_range(full, start_ns, end_ns, bucket_slack_ns)
    if tdevs is not None and t.num_rows:
        t = t.filter(pc.is_in(t.column("dev"), value_set=tdevs))
    if not t.num_rows:
        return {"culprits": [], "note": "no block I/O on the target's devices in the incident"}
    devs = sorted(set(t.column("dev").to_pylist()) - {None})
    same_dev = full.filter(pc.is_in(full.column("dev"), value_set=pa.array(devs))) if devs else full
    a, b = start_ns - bucket_slack_ns, end_ns
    g = _grouped(t, "pid", ["bytes", "count"], "comm")
    pids = col(g, "pid", np.int64)
    byt = col(g, "bytes_sum")
    comms = g.column("comm_max").to_pylist()
    expected = _baseline_expected(rec, same_dev, "pid", "bytes", a, b, baseline)
    inc_w = {int(p): float(v) for p, v in zip(pids.tolist(), byt.tolist(), strict=True)}
    shares, _denom, vs_base = _excess_shares(inc_w, expected, float(byt.sum()), float(sum(expected.values())))
    info = process_info(rec)
    out = []
    for i in sorted(range(len(pids)), key=lambda i: -shares[int(pids[i])]):
        pid = int(pids[i])
        if pid in vic or shares[pid] < MIN_SHARE:
            continue  # the waiting process's own I/O is the victim, not a culprit
        c = _culprit(pid, comms[i], shares[pid], pid in tree.in_target, info, bytes=int(byt[i]),
                     requests=int(col(g, "count_sum")[i]), devices=devs,
                     share_of_bytes=round(float(byt[i]) / (float(byt.sum()) or 1.0), 4))
        c.pop("in_target", None)
        out.append(tree_mod.describe(tree, c))
        if len(out) >= TOP:
            break
    tshare = sum(shares[p] for p in inc_w if p in vic)
    return {"culprits": out, "weighted_by": "bytes", "share_of": "extra_bytes" if vs_base else "bytes",
            "target_self_share": round(float(tshare), 4),
            "remainder": _remainder([c["share"] for c in out], {"target_self": tshare}),
            "total_bytes": int(byt.sum()), "devices": devs}


def growth_by_pid(rec: Recording, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """Target processes' RSS change over [start, end] from proc_samples (first vs last sample)."""
    if not rec.has("proc_samples"):
        return []
    t = _in_range(rec.table("proc_samples"), start_ns, end_ns)
    if t.num_rows < 2:
        return []
    ts, pid, rss = col(t, "ts_ns", np.int64), col(t, "pid", np.int64), col(t, "rss_bytes", np.float64, np.nan)
    ok = np.isfinite(rss)
    ts, pid, rss = ts[ok], pid[ok], rss[ok]
    order = np.lexsort((ts, pid))
    ts, pid, rss = ts[order], pid[order], rss[order]
    upid, first = np.unique(pid, return_index=True)
    last = np.r_[first[1:], len(pid)] - 1
    dt = (ts[last] - ts[first]) / 1e9
    d = rss[last] - rss[first]
    out = []
    for i in np.argsort(-d)[:TOP]:
        if d[i] <= 0:
            break
        out.append({"pid": int(upid[i]), "growth_bytes": int(d[i]), "rss_bytes": int(rss[last[i]]),
                    "growth_bytes_per_s": float(d[i] / dt[i]) if dt[i] > 0 else None})
    return out


def memory_culprits(rec: Recording, start_ns: int, end_ns: int) -> dict[str, Any]:
    info = process_info(rec)
    out: list[dict[str, Any]] = []
    res: dict[str, Any] = {}
    if recorded(rec, "reclaim"):
        t = _in_range(rec.table("reclaim"), start_ns, end_ns)
        if t.num_rows:
            t = t.filter(pc.fill_null(pc.not_equal(t.column("kind"), "kswapd_wake"), True))
        if t.num_rows:
            g = _grouped(t, "pid", ["duration_ns", "nr_reclaimed"], "comm")
            inn = t.group_by("pid").aggregate([("in_target", "max")])
            in_map = dict(zip(inn.column("pid").to_pylist(), inn.column("in_target_max").to_pylist(),
                              strict=False))
            dur = col(g, "duration_ns_sum")
            cnt = t.group_by("pid").aggregate([("pid", "count")])
            cnt_map = dict(zip(cnt.column("pid").to_pylist(), cnt.column("pid_count").to_pylist(), strict=False))
            total = float(dur.sum()) or 1.0
            pids = col(g, "pid", np.int64)
            comms = g.column("comm_max").to_pylist()
            tree = tree_mod.load(rec)
            for i in np.argsort(-dur)[:TOP]:
                pid = int(pids[i])
                if dur[i] / total < MIN_SHARE:
                    break
                out.append(tree_mod.describe(tree, _culprit(
                    pid, comms[i], dur[i] / total, bool(in_map.get(pid)), info,
                    reclaim_stall_ms=round(float(dur[i]) / 1e6, 3), stalls=int(cnt_map.get(pid, 0)),
                    pages_reclaimed=int(col(g, "nr_reclaimed_sum")[i]))))
            res.update(weighted_by="reclaim_stall_ns", total_stall_ms=round(float(dur.sum()) / 1e6, 3))
    else:
        res["note"] = "reclaim not recorded"
    growers = growth_by_pid(rec, start_ns, end_ns)
    if growers:
        tree = tree_mod.load(rec)
        res["target_growth"] = [tree_mod.describe(tree, dict(g, comm=info.get(g["pid"], {}).get("comm")))
                                for g in growers]
    res["culprits"] = out
    return res


def gpu_memory_culprits(rec: Recording, start_ns: int, end_ns: int, before_ns: int = 60_000_000_000
                        ) -> dict[str, Any]:
    """Processes whose GPU memory grew into the incident (incident peak minus the median of the
    minute before; a process new in the incident grew from 0), by growth."""
    if not recorded(rec, "gpu_processes"):
        return {"culprits": [], "note": "gpu_processes not recorded"}
    full = rec.table("gpu_processes")
    t = _in_range(full, start_ns, end_ns)
    if not t.num_rows:
        return {"culprits": [], "note": "no GPU processes sampled in the incident"}
    g = t.group_by("pid").aggregate([("used_bytes", "max"), ("in_target", "max"), ("gpu", "max")])
    pre = _in_range(full, start_ns - before_ns, start_ns - 1)
    pre_map: dict[int, float] = {}
    if pre.num_rows:
        pg = pre.group_by("pid").aggregate([("used_bytes", "approximate_median")])
        pre_map = dict(zip(pg.column("pid").to_pylist(), pg.column("used_bytes_approximate_median").to_pylist(),
                           strict=False))
    used = col(g, "used_bytes_max")
    pids = col(g, "pid", np.int64)
    growth = np.array([max(0.0, u - float(pre_map.get(int(p)) or 0.0)) for p, u in zip(pids, used, strict=False)])
    weight, unit = (growth, "gpu_growth_bytes") if growth.sum() > 0 else (used, "gpu_used_bytes")
    total = float(weight.sum()) or 1.0
    info = process_info(rec)
    inn = g.column("in_target_max").to_pylist()
    gpus = g.column("gpu_max").to_pylist()
    out = []
    for i in np.argsort(-weight)[:TOP]:
        pid = int(pids[i])
        out.append(_culprit(pid, info.get(pid, {}).get("comm"), weight[i] / total, bool(inn[i]), info,
                            gpu_bytes=int(used[i]), gpu_growth_bytes=int(growth[i]), gpu=gpus[i]))
    return {"culprits": out, "weighted_by": unit}
