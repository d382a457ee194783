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

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import col, recorded

TOP = 3


def _in_range(t: pa.Table, start_ns: int, end_ns: int, slack_ns: int = 0) -> pa.Table:
    if not t.num_rows:
        return t
    ts = t.column("ts_ns")
    m = pc.and_(pc.greater_equal(ts, start_ns - slack_ns), pc.less_equal(ts, end_ns))
    return t.filter(m)


def process_info(rec: Recording) -> dict[int, dict[str, Any]]:
    """pid -> {comm, cgroup} for the target's processes (from the ``processes`` table)."""
    if not rec.has("processes") or not rec.table("processes").num_rows:
        return _mark_recorder(rec, {})
    t = rec.table("processes")
    pids = col(t, "pid", np.int64)
    comm = t.column("comm").to_pylist()
    cg = t.column("cgroup").to_pylist()
    # Later rows (exec) win: they come later in the table.
    out = {int(p): {"comm": c, "cgroup": g} for p, c, g in zip(pids.tolist(), comm, cg, strict=False)}
    return _mark_recorder(rec, out)


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
    out.update(extra)
    return out


def _baseline_expected(rec: Recording, full: pa.Table, key: str, value: str, start_ns: int, end_ns: int
                       ) -> dict[int, float]:
    """key -> how much of ``value`` it would have had in [start, end] at its rate outside it."""
    if not full.num_rows:
        return {}
    ts = full.column("ts_ns")
    out = full.filter(pc.or_(pc.less(ts, start_ns), pc.greater(ts, end_ns)))
    if not out.num_rows:
        return {}
    span = max(1, (rec.end_ns - rec.start_ns) - (end_ns - start_ns))
    g = out.group_by(key).aggregate([(value, "sum")])
    scale = (end_ns - start_ns) / span
    return {int(k): float(v or 0) * scale for k, v in zip(g.column(key).to_pylist(),
                                                           g.column(f"{value}_sum").to_pylist(), strict=False)}


def cpu_culprits(rec: Recording, start_ns: int, end_ns: int, bucket_slack_ns: int = 0) -> dict[str, Any]:
    if not recorded(rec, "preemptions"):
        return {"culprits": [], "note": "preemptions not recorded"}
    t = _in_range(rec.table("preemptions"), start_ns, end_ns, bucket_slack_ns)
    if not t.num_rows:
        return {"culprits": [], "note": "no preemptions of the target in the incident"}
    g = _grouped(t, "preemptor_pid", ["wait_ns", "count"], "preemptor_comm")
    inn = t.group_by("preemptor_pid").aggregate([("preemptor_in_target", "max")])
    in_map = dict(zip(inn.column("preemptor_pid").to_pylist(),
                      inn.column("preemptor_in_target_max").to_pylist(), strict=False))
    wait = col(g, "wait_ns_sum")
    cnt = col(g, "count_sum")
    weight, unit = (wait, "wait_ns") if wait.sum() > 0 else (cnt, "count")
    total = float(weight.sum()) or 1.0
    pids = col(g, "preemptor_pid", np.int64)
    comms = g.column("preemptor_comm_max").to_pylist()
    # Rank by the wait *beyond* what each process caused outside the incident: on a busy host the
    # usual neighbours take a share all the time; the culprit is the one that took more now.
    wcol = "wait_ns" if unit == "wait_ns" else "count"
    expected = _baseline_expected(rec, rec.table("preemptions"), "preemptor_pid", wcol, start_ns - bucket_slack_ns,
                                  end_ns)
    excess = weight - np.array([expected.get(int(p), 0.0) for p in pids])
    info = process_info(rec)
    tpid, tcpu, tcnt = col(t, "preemptor_pid", np.int64), col(t, "cpu", np.int64, -1), col(t, "count")
    # A neighbour is often several processes of one program (stress-ng workers, a forking hog):
    # fold outside processes by comm so the program is named with its whole share.
    groups: dict[Any, list[int]] = {}
    for i in range(len(pids)):
        if in_map.get(int(pids[i])):
            continue  # the target's own threads competing with each other are not a culprit
        groups.setdefault(comms[i] if comms[i] else ("pid", int(pids[i])), []).append(i)
    keys = list(groups)
    gw = np.array([weight[groups[k]].sum() for k in keys], dtype=float)
    gx = np.array([excess[groups[k]].sum() for k in keys], dtype=float)
    order = np.lexsort((-gw, -gx)) if (gx > 0).any() else np.argsort(-gw)
    pos_excess = max(float(gx[gx > 0].sum()), 1e-9)
    out = []
    for gi in order[:TOP]:
        members = sorted(groups[keys[gi]], key=lambda i: -weight[i])
        lead = members[0]
        pid = int(pids[lead])
        m = np.isin(tpid, pids[members])
        cpus, cw = np.unique(tcpu[m], return_inverse=True)
        top_cpu = int(cpus[np.argmax(np.bincount(cw, weights=tcnt[m] + 1))]) if m.any() else None
        extra: dict[str, Any] = {}
        if len(members) > 1:
            extra = {"processes": len(members), "pids": [int(pids[i]) for i in members[:10]]}
        out.append(_culprit(pid, comms[lead], gw[gi] / total, False, info, cpu=top_cpu,
                            wait_ms=round(float(wait[members].sum()) / 1e6, 3),
                            preemptions=int(cnt[members].sum()),
                            excess_share=round(float(max(gx[gi], 0) / pos_excess), 4), **extra))
    self_share = float(sum(weight[i] for i in range(len(pids)) if in_map.get(int(pids[i])))) / total
    return {"culprits": out, "weighted_by": unit, "target_self_share": round(self_share, 4),
            "total_wait_ms": round(float(wait.sum()) / 1e6, 3), "total_preemptions": int(cnt.sum())}


def io_culprits(rec: Recording, start_ns: int, end_ns: int, bucket_slack_ns: int = 0) -> dict[str, Any]:
    if not recorded(rec, "block_io"):
        return {"culprits": [], "note": "block_io not recorded"}
    full = rec.table("block_io")
    inn_all = pc.fill_null(full.column("in_target"), False)
    tdevs = pc.unique(pc.filter(full.column("dev"), inn_all)) if pc.any(inn_all).as_py() else None
    t = _in_range(full, start_ns, end_ns, bucket_slack_ns)
    if tdevs is not None and t.num_rows:
        t = t.filter(pc.is_in(t.column("dev"), value_set=tdevs))
    if not t.num_rows:
        return {"culprits": [], "note": "no block I/O on the target's devices in the incident"}
    g = _grouped(t, "pid", ["bytes", "count", "lat_sum_ns"], "comm")
    inn = t.group_by("pid").aggregate([("in_target", "max")])
    in_map = dict(zip(inn.column("pid").to_pylist(), inn.column("in_target_max").to_pylist(), strict=False))
    byt = col(g, "bytes_sum")
    total = float(byt.sum()) or 1.0
    pids = col(g, "pid", np.int64)
    comms = g.column("comm_max").to_pylist()
    info = process_info(rec)
    devs = sorted(set(t.column("dev").to_pylist()) - {None})
    same_dev = full.filter(pc.is_in(full.column("dev"), value_set=pa.array(devs))) if devs else full
    expected = _baseline_expected(rec, same_dev, "pid", "bytes", start_ns - bucket_slack_ns, end_ns)
    excess = byt - np.array([expected.get(int(p), 0.0) for p in pids])
    order = np.lexsort((-byt, -excess)) if (excess > 0).any() else np.argsort(-byt)
    out = []
    for i in order:
        pid = int(pids[i])
        if in_map.get(pid):
            continue
        out.append(_culprit(pid, comms[i], byt[i] / total, False, info, bytes=int(byt[i]),
                            requests=int(col(g, "count_sum")[i]), devices=devs))
        if len(out) >= TOP:
            break
    tshare = float(sum(byt[i] for i in range(len(pids)) if in_map.get(int(pids[i])))) / total
    return {"culprits": out, "weighted_by": "bytes", "target_self_share": round(tshare, 4),
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
            for i in np.argsort(-dur)[:TOP]:
                pid = int(pids[i])
                out.append(_culprit(pid, comms[i], dur[i] / total, bool(in_map.get(pid)), info,
                                    reclaim_stall_ms=round(float(dur[i]) / 1e6, 3),
                                    stalls=int(cnt_map.get(pid, 0)),
                                    pages_reclaimed=int(col(g, "nr_reclaimed_sum")[i])))
            res.update(weighted_by="reclaim_stall_ns", total_stall_ms=round(float(dur.sum()) / 1e6, 3))
    else:
        res["note"] = "reclaim not recorded"
    growers = growth_by_pid(rec, start_ns, end_ns)
    if growers:
        res["target_growth"] = [dict(g, comm=info.get(g["pid"], {}).get("comm")) for g in growers]
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
