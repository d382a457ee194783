"""OOM post-mortem: every OOM kill (host or memcg) and CUDA OOM in a recording, and why it happened.

Kills come from ``oom_kills`` (``oom:mark_victim``, with the memcg limit read at the event). A CUDA OOM
leaves no kernel event: it is recognised from the target's stderr tail in the manifest ("CUDA out of
memory", "OutOfMemoryError") or from a GPU at its memory limit followed by the target exiting with an
error. For each: the victim's and its tree's memory over the last minute (RSS or GPU memory, growth
rate by least squares), who else grew, reclaim stalls and major faults just before, and a verdict:

* ``leak``: the memory floor -- the level while no request is in flight after the first request (from
  spans), or the rolling minimum without spans -- keeps rising. Judged on anonymous memory (RSS minus
  resident shared/file-backed pages), so page cache of mmapped weights filling up is not a leak;
* ``kv_cache_growth``: memory follows the load (requests in flight) and falls back to a flat floor
  when requests finish -- the limit is too small for the peak load, not a leak;
* ``steady_growth``: the rolling floor rose steadily, but there is no idle period (or no request
  timing) to tell a leak from growth with load;
* ``sudden_allocation``: most of the growth came in the last few seconds (one big allocation);
* ``unknown``: not enough samples to say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import col, missing_reason, recorded

LOOKBACK_NS = 60_000_000_000
BEFORE_NS = 10_000_000_000
CUDA_OOM_RE = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation",
                         re.IGNORECASE)


def iso(rec: Recording, ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    wall = int(ts_ns) + rec.wall_offset_ns
    return datetime.fromtimestamp(wall / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _slope(t_ns: np.ndarray, v: np.ndarray) -> float | None:
    """Least-squares slope in units per second."""
    if len(t_ns) < 3 or np.ptp(t_ns) <= 0:
        return None
    t = (t_ns - t_ns[0]) / 1e9
    return float(np.polyfit(t, v, 1)[0])


def _in_flight_at(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    s, e = np.sort(starts), np.sort(ends)
    return np.searchsorted(s, ts, side="right") - np.searchsorted(e, ts, side="left")


@dataclass
class EngineLoad:
    """The serving engine's own view of its load (``record --scrape``): KV-cache usage (0-1) and
    running requests, each a step series of (scrape time, value)."""

    kv_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    kv: np.ndarray = field(default_factory=lambda: np.empty(0))
    kv_metric: str | None = None
    running_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    running: np.ndarray = field(default_factory=lambda: np.empty(0))

    @staticmethod
    def of(rec: Recording) -> EngineLoad | None:
        from autoglm_trace.analysis.engine import gauge, load_engine

        eng = load_engine(rec)
        if eng is None:
            return None
        (kts, kv), (rts, run) = gauge(eng, "kv_cache_usage"), gauge(eng, "running")
        if not len(kts) and not len(rts):
            return None
        return EngineLoad(kts, kv, eng.gauges.get("kv_cache_usage"), rts, run)


def _held(sts: np.ndarray, sv: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """A gauge's value at each of ``ts``: the last scrape at or before it (NaN before the first
    scrape or more than two scrape intervals after the last -- nothing is known there)."""
    out = np.full(len(ts), np.nan)
    if not len(sts):
        return out
    o = np.argsort(sts, kind="stable")
    sts, sv = sts[o], sv[o]
    i = np.searchsorted(sts, ts, side="right") - 1
    gap = 2 * float(np.median(np.diff(sts))) if len(sts) >= 2 else 0.0
    ok = (i >= 0) & (ts <= sts[-1] + gap)
    out[ok] = sv[i[ok]]
    return out


KV_FLAT = 0.05  # KV-cache usage that moved less than 5 points of the pool did not drive memory


def _kv_verdict(ts: np.ndarray, mem: np.ndarray, kv: np.ndarray, metric: str | None,
                ev: dict[str, Any]) -> dict[str, Any] | None:
    """Memory against the engine's KV-cache usage: growth that follows KV usage is load; growth
    while KV usage is flat, or beyond what KV usage explains, is a leak. None: KV usage does not
    decide (too few samples, or memory follows neither)."""
    ok = np.isfinite(kv)
    if ok.sum() < 8:
        return None
    ts, mem, kv = ts[ok], mem[ok], kv[ok]
    t = (ts - ts[0]) / 1e9
    name = metric or "KV-cache usage"
    ev.update(kv_metric=metric, kv_usage_min=round(float(kv.min()), 3), kv_usage_max=round(float(kv.max()), 3),
              kv_samples=int(len(kv)))
    slope = _slope(ts, mem) or 0.0
    trend = slope * float(t[-1])
    floor = float(mem.min())
    big = max(0.3 * float(np.ptp(mem)), 0.05 * floor)
    if float(np.ptp(kv)) < KV_FLAT:
        ev["trend_bytes"] = int(trend)
        if trend > big:
            return {"verdict": "leak", "reason": f"memory grew {trend / 2**20:.0f} MiB while the engine's KV-cache "
                    f"usage stayed flat at {float(np.median(kv)):.0%} ({name}): not load", **ev}
        return None
    corr = float(np.corrcoef(kv, mem)[0, 1]) if np.ptp(mem) > 0 else 0.0
    ev["kv_correlation"] = round(corr, 3)
    # Growth beyond what KV usage explains: mem = a + b * kv + c * t. When KV usage itself rises
    # steadily the two cannot be told apart, and memory that follows it is load.
    kt = float(np.corrcoef(kv, t)[0, 1]) if np.ptp(t) > 0 else 1.0
    if abs(kt) < 0.9:
        coef = np.linalg.lstsq(np.c_[np.ones_like(t), kv, t], mem, rcond=None)[0]
        beyond = float(coef[2] * t[-1])
        ev.update(trend_beyond_kv_bytes=int(beyond), kv_explained_bytes=int(coef[1] * np.ptp(kv)))
        if beyond > big:
            return {"verdict": "leak", "reason": f"memory rose {beyond / 2**20:.0f} MiB beyond what the engine's "
                    f"KV-cache usage ({name}, {kv.min():.0%}-{kv.max():.0%}) explains", **ev}
    if corr > 0.5:
        return {"verdict": "kv_cache_growth", "reason": f"memory tracked the engine's KV-cache usage ({name}, "
                f"{kv.min():.0%}-{kv.max():.0%}, correlation {corr:.2f}): load, not a leak -- the limit is "
                "too small for the peak load", **ev}
    return None


def growth_verdict(ts: np.ndarray, mem: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                   engine: EngineLoad | None = None) -> dict[str, Any]:
    """Leak vs KV-cache growth with load vs sudden allocation, with the numbers behind it. Load comes
    from the requests (``starts`` / ``ends``) and, from a scraped engine, its KV-cache usage and
    running requests."""
    ok = np.isfinite(mem)
    ts, mem = ts[ok], mem[ok]
    running = _held(engine.running_ts, engine.running, ts) if engine is not None else np.full(len(ts), np.nan)
    first = float(starts.min()) if len(starts) else None
    if first is None and np.any(running > 0):
        first = float(ts[np.flatnonzero(running > 0)[0]])
    if first is not None:
        # Start-up (imports, weights, warm-up) is growth too, but neither a leak nor load: judge the
        # memory from the first request on.
        serving = ts >= first
        if serving.sum() >= 8:
            ts, mem, running = ts[serving], mem[serving], running[serving]
    if len(ts) < 8 or np.ptp(ts) <= 0:
        return {"verdict": "unknown", "reason": "fewer than 8 memory samples before the kill"}
    rise = float(mem[-1] - mem.min())
    ev: dict[str, Any] = {"samples": len(ts), "start_bytes": int(mem[0]), "end_bytes": int(mem[-1]),
                          "min_bytes": int(mem.min()), "rise_bytes": int(rise)}
    span = ts[-1] - ts[0]
    late = ts >= ts[-1] - max(span // 10, 1)
    if rise > 0 and float(mem[-1] - mem[~late].max(initial=mem[0])) > 0.7 * rise and late.sum() < len(ts) // 5:
        return {"verdict": "sudden_allocation",
                "reason": "most of the growth came in the last tenth of the recording before the kill", **ev}
    if engine is not None and len(engine.kv_ts):
        kv = _kv_verdict(ts, mem, _held(engine.kv_ts, engine.kv, ts), engine.kv_metric, ev)
        if kv is not None:
            return kv
    load = None
    if len(starts):
        load = _in_flight_at(ts, starts, ends)
    elif np.isfinite(running).sum() >= 8:
        known = np.isfinite(running)
        ts, mem, load = ts[known], mem[known], running[known]
        ev["load_from"] = "engine running requests"
    if load is not None and first is not None:
        # Idle = no request in flight *after the first one*: before it the server is still starting.
        idle = (load <= 0) & (ts > first)
        # Distinct idle periods: runs of idle samples.
        runs = int(np.sum(np.diff(np.r_[0, idle.astype(int)]) == 1))
        ev.update(idle_samples=int(idle.sum()), idle_periods=runs)
        if idle.sum() >= 5 and runs >= 2:
            fslope = _slope(ts[idle], mem[idle]) or 0.0
            floor_rise = fslope * (ts[idle][-1] - ts[idle][0]) / 1e9
            ev.update(floor_slope_bytes_per_s=round(fslope, 1), floor_rise_bytes=int(floor_rise))
            if floor_rise > max(0.3 * rise, 0.05 * float(mem.min())):
                return {"verdict": "leak", "reason": "the memory floor while no request was in flight rose "
                        f"{floor_rise / 2**20:.0f} MiB across {runs} idle periods", **ev}
            corr = float(np.corrcoef(load, mem)[0, 1]) if np.ptp(load) > 0 and np.ptp(mem) > 0 else 0.0
            ev["load_correlation"] = round(corr, 3)
            if corr <= 0.5:
                return {"verdict": "unknown", "reason": "the floor did not rise, but memory did not follow the "
                        f"load either (correlation {corr:.2f})", **ev}
            return {"verdict": "kv_cache_growth",
                    "reason": "memory fell back to a flat floor whenever requests finished and tracked the "
                    f"load (correlation {corr:.2f}): the limit is too small for the peak load", **ev}
        if np.ptp(load) > 0 and np.ptp(mem) > 0:
            corr = float(np.corrcoef(load, mem)[0, 1])
            ev["load_correlation"] = round(corr, 3)
            if corr > 0.5:
                return {"verdict": "kv_cache_growth", "reason": f"memory tracked the load (correlation {corr:.2f})",
                        **ev}
    # No load information: rolling floor over 8 segments.
    seg = np.array_split(np.arange(len(ts)), 8)
    mins = np.array([mem[s].min() for s in seg if len(s)])
    ups = int(np.sum(np.diff(mins) > 0))
    floor_rise = float(mins[-1] - mins[0])
    ev.update(segment_floor_increases=ups, floor_rise_bytes=int(floor_rise))
    if ups >= len(mins) - 2 and floor_rise > 0.1 * float(mem.min()):
        why = ("no request timings to tell a leak from load" if load is None else
               "requests never paused, so the idle floor that tells a leak from KV-cache growth was never seen")
        return {"verdict": "steady_growth", "reason": f"the rolling memory floor rose in {ups} of "
                f"{len(mins) - 1} segments ({why})", **ev}
    return {"verdict": "unknown", "reason": "no steady floor rise and no load data to attribute the growth", **ev}


def _request_bounds(rec: Recording, latency_rows: list[dict[str, Any]] | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every request: spans, an ingested latency log and ``--latency`` rows (the
    request set ``analyze`` and ``diff`` use)."""
    from autoglm_trace.analysis.requests import request_spans

    t, _ = request_spans(rec, latency_rows)
    if not t.num_rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return col(t, "ts_ns", np.int64), col(t, "end_ns", np.int64)


def _pid_series(rec: Recording, pids: list[int] | None, until_ns: int, anon: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """RSS over time of ``pids`` summed (None: the whole tree), up to ``until_ns``. ``anon``: RSS minus
    resident shared (file-backed + shmem) memory -- what a leak or a KV cache grows, unlike page
    cache of mmapped weights."""
    if not rec.has("proc_samples"):
        return np.empty(0, np.int64), np.empty(0)
    t = rec.table("proc_samples")
    if not t.num_rows:
        return np.empty(0, np.int64), np.empty(0)
    ts, pid, rss = col(t, "ts_ns", np.int64), col(t, "pid", np.int64), col(t, "rss_bytes", np.float64, np.nan)
    if anon:
        shared = col(t, "shared_bytes", np.float64, np.nan)
        rss = np.where(np.isfinite(shared), np.maximum(rss - shared, 0), rss)
    m = ts <= until_ns
    if pids is not None:
        m &= np.isin(pid, pids)
    ts, rss = ts[m], rss[m]
    if not len(ts):
        return ts, rss
    # Sum per sampling tick (every pid shares a tick's timestamp within one sample pass; bin to 10 ms).
    tick = ts // 10_000_000
    u, inv = np.unique(tick, return_inverse=True)
    return u * 10_000_000, np.bincount(inv, weights=np.nan_to_num(rss))


def _gpu_series(rec: Recording, until_ns: int, target_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if rec.has("gpu_processes") and rec.table("gpu_processes").num_rows:
        t = rec.table("gpu_processes")
        ts, used = col(t, "ts_ns", np.int64), col(t, "used_bytes", np.float64, np.nan)
        m = ts <= until_ns
        if target_only:
            m &= col(t, "in_target")
        if m.any():
            u, inv = np.unique(ts[m], return_inverse=True)
            return u, np.bincount(inv, weights=np.nan_to_num(used[m]))
    if rec.has("gpu_devices") and rec.table("gpu_devices").num_rows:
        t = rec.table("gpu_devices")
        ts, used = col(t, "ts_ns", np.int64), col(t, "mem_used_bytes", np.float64, np.nan)
        m = ts <= until_ns
        u, inv = np.unique(ts[m], return_inverse=True)
        return u, np.bincount(inv, weights=np.nan_to_num(used[m]))
    return np.empty(0, np.int64), np.empty(0)


def _window_sum(rec: Recording, table: str, a: int, b: int, value: str | None,
                where: Any = None) -> float | None:
    if not recorded(rec, table):
        return None
    t = rec.table(table)
    if not t.num_rows:
        return 0.0
    ts = t.column("ts_ns")
    m = pc.and_(pc.greater_equal(ts, a), pc.less_equal(ts, b))
    if where is not None:
        m = pc.and_(m, where(t))
    f = t.filter(m)
    if value is None:
        return float(f.num_rows)
    return float(pc.sum(f.column(value)).as_py() or 0)


def _before(rec: Recording, ts_ns: int) -> dict[str, Any]:
    a = ts_ns - BEFORE_NS
    not_wake = lambda t: pc.fill_null(pc.not_equal(t.column("kind"), "kswapd_wake"), True)  # noqa: E731
    tgt = lambda t: pc.and_(not_wake(t), pc.fill_null(t.column("in_target"), False))  # noqa: E731
    oth = lambda t: pc.and_(not_wake(t), pc.invert(pc.fill_null(t.column("in_target"), False)))  # noqa: E731
    out: dict[str, Any] = {"window_s": BEFORE_NS / 1e9}
    r_t = _window_sum(rec, "reclaim", a, ts_ns, "duration_ns", tgt)
    r_o = _window_sum(rec, "reclaim", a, ts_ns, "duration_ns", oth)
    out["reclaim_stall_ms_target"] = None if r_t is None else round(r_t / 1e6, 3)
    out["reclaim_stall_ms_others"] = None if r_o is None else round(r_o / 1e6, 3)
    mf = _window_sum(rec, "faults", a, ts_ns, "major")
    out["major_faults_target"] = None if mf is None else int(mf)
    return out


def _others_grew(rec: Recording, ts_ns: int, victim: int) -> list[dict[str, Any]]:
    from autoglm_trace.analysis.culprits import growth_by_pid, memory_culprits, process_info

    info = process_info(rec)
    grew = [dict(g, comm=info.get(g["pid"], {}).get("comm"), in_target=True)
            for g in growth_by_pid(rec, ts_ns - LOOKBACK_NS, ts_ns) if g["pid"] != victim]
    mem = memory_culprits(rec, ts_ns - LOOKBACK_NS, ts_ns)
    for c in mem.get("culprits", []):
        if c["pid"] != victim and not c["in_target"]:
            grew.append({"pid": c["pid"], "comm": c["comm"], "in_target": False,
                         "reclaim_stall_ms": c.get("reclaim_stall_ms"),
                         "note": "allocated under pressure (direct-reclaim stalls)"})
    return grew


def _growth(ts: np.ndarray, v: np.ndarray, kill_ns: int) -> tuple[float | None, int | None]:
    m = ts >= kill_ns - LOOKBACK_NS
    return _slope(ts[m], v[m]), (int(v[m][-1]) if m.any() else None)


def oom_postmortem(rec: Recording, latency_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``latency_rows``: extra request timings (``--latency``) as ``spans``-table rows."""
    kills: list[dict[str, Any]] = []
    not_checked: list[dict[str, str]] = []
    checked: list[str] = []
    starts, ends = _request_bounds(rec, latency_rows)
    engine = EngineLoad.of(rec)
    if engine is not None:
        checked.append("scrape_samples" + (f" ({engine.kv_metric})" if engine.kv_metric else ""))
    if not len(starts) and (engine is None or not len(engine.kv_ts) and not len(engine.running_ts)):
        not_checked.append({"signal": "load", "reason": "no request spans, --latency log or scraped engine "
                            "metrics (KV-cache usage, running requests): leak vs load verdict uses the "
                            "rolling floor only"})
    if recorded(rec, "oom_kills"):
        checked.append("oom_kills")
        t = rec.table("oom_kills")
        for r in t.to_pylist():  # one row per OOM kill: a handful at most
            ts = int(r["ts_ns"])
            pid = int(r["pid"])
            limit = r.get("memcg_limit_bytes")
            memcg = r.get("memcg") or ""
            kind = "memcg" if (memcg not in ("", "/") and limit is not None and limit < (1 << 60)) else "host"
            rss = sum(int(r.get(k) or 0) for k in ("anon_rss_bytes", "file_rss_bytes", "shmem_rss_bytes"))
            vts, vmem = _pid_series(rec, [pid], ts)
            tts, tmem = _pid_series(rec, None, ts)
            gts, gmem = _gpu_series(rec, ts)
            growth, _ = _growth(vts, vmem, ts)
            # The tree as it was at the victim's last sample (after it, the victim is gone).
            upto = int(vts[-1]) if len(vts) else ts
            tgrowth, tlast = _growth(tts[tts <= upto], tmem[tts <= upto], upto)
            ats, amem = _pid_series(rec, [pid], ts, anon=True)
            agrowth, alast = _growth(ats, amem, ts)
            if len(ats) >= 8:
                verdict = growth_verdict(ats, amem, starts, ends, engine)
            elif r.get("in_target"):
                verdict = growth_verdict(*_pid_series(rec, None, ts, anon=True), starts, ends, engine)
            else:
                verdict = {"verdict": "unknown", "reason": "the victim is outside the target: its memory was "
                           "not sampled (only the kernel event is known)"}
            kills.append({
                "pid": pid, "comm": r.get("comm"), "time": iso(rec, ts), "ts_ns": ts, "kind": kind,
                "in_target": bool(r.get("in_target")), "rss_bytes": rss,
                "gpu_bytes": int(gmem[-1]) if len(gmem) and bool(r.get("in_target")) else None,
                "limit_bytes": int(limit) if kind == "memcg" else _host_total(rec),
                "usage_bytes": r.get("memcg_usage_bytes"), "memcg": memcg or None,
                "oom_score_adj": r.get("oom_score_adj"),
                "growth_bytes_per_s": None if growth is None else round(growth, 1),
                "anon_rss_bytes": int(r.get("anon_rss_bytes") or 0),
                "anon_growth_bytes_per_s": None if agrowth is None else round(agrowth, 1),
                "tree_rss_bytes": tlast, "tree_growth_bytes_per_s": None if tgrowth is None else round(tgrowth, 1),
                "memory_last_minute": _series_summary(vts, vmem, ts),
                "before": _before(rec, ts), "others_grew": _others_grew(rec, ts, pid),
                "verdict": verdict["verdict"], "verdict_reason": verdict["reason"], "verdict_evidence": verdict,
            })
    else:
        not_checked.append({"signal": "oom_kills", "reason": missing_reason(rec, "oom_kills")
                            + ": host and memcg OOM kills cannot be seen"})
    cuda = _cuda_oom(rec, starts, ends, engine)
    if cuda is not None:
        kills.append(cuda)
    kills.sort(key=lambda k: k["ts_ns"])
    return {"kills": kills, "checked": checked + ["manifest.target.stderr_tail"], "not_checked": not_checked}


def _host_total(rec: Recording) -> int | None:
    if rec.has("host_samples") and rec.table("host_samples").num_rows:
        v = pc.max(rec.table("host_samples").column("mem_total_bytes")).as_py()
        return int(v) if v is not None else None
    return None


def _series_summary(ts: np.ndarray, v: np.ndarray, kill_ns: int) -> dict[str, Any] | None:
    m = ts >= kill_ns - LOOKBACK_NS
    if not m.any():
        return None
    return {"samples": int(m.sum()), "min_bytes": int(v[m].min()), "max_bytes": int(v[m].max()),
            "first_bytes": int(v[m][0]), "last_bytes": int(v[m][-1])}


def _cuda_oom(rec: Recording, starts: np.ndarray, ends: np.ndarray, engine: EngineLoad | None = None
              ) -> dict[str, Any] | None:
    target = rec.target
    tail = target.get("stderr_tail") or []
    if isinstance(tail, str):
        tail = tail.splitlines()
    lines = [ln for ln in tail if isinstance(ln, str) and CUDA_OOM_RE.search(ln)]
    exit_ts = None
    root = target.get("pid")
    if rec.has("proc_events") and rec.table("proc_events").num_rows and root is not None:
        t = rec.table("proc_events")
        m = pc.and_(pc.equal(t.column("event"), "exit"), pc.equal(t.column("pid"), int(root)))
        f = t.filter(m)
        if f.num_rows:
            exit_ts = int(pc.max(f.column("ts_ns")).as_py())
    end = exit_ts or rec.end_ns
    gts, gmem = _gpu_series(rec, end, target_only=False)
    at_limit = False
    total = None
    if rec.has("gpu_devices") and rec.table("gpu_devices").num_rows:
        d = rec.table("gpu_devices")
        total = pc.max(d.column("mem_total_bytes")).as_py()
        dts = col(d, "ts_ns", np.int64)
        used = col(d, "mem_used_bytes", np.float64, np.nan) + col(d, "mem_reserved_bytes", np.float64, 0)
        tot = col(d, "mem_total_bytes", np.float64, np.nan)
        near = (dts >= end - BEFORE_NS) & (dts <= end) & (used >= 0.97 * tot)
        at_limit = bool(near.any())
    errored = bool(target.get("exit_code")) or bool(target.get("signal"))
    if not lines and not (at_limit and errored):
        return None
    tts, tmem = _gpu_series(rec, end, target_only=True)
    growth, last = _growth(tts, tmem, end)
    verdict = growth_verdict(tts, tmem, starts, ends, engine)
    return {
        "pid": root, "comm": target.get("comm"), "time": iso(rec, end), "ts_ns": int(end), "kind": "cuda",
        "in_target": True, "rss_bytes": None, "gpu_bytes": last if last is not None else (
            int(gmem[-1]) if len(gmem) else None),
        "limit_bytes": int(total) if total is not None else None, "usage_bytes": None, "memcg": None,
        "growth_bytes_per_s": None if growth is None else round(growth, 1),
        "gpu_at_limit": at_limit, "exit_code": target.get("exit_code"), "signal": target.get("signal"),
        "stderr": lines[-3:], "memory_last_minute": _series_summary(tts, tmem, end),
        "before": _before(rec, end), "others_grew": [],
        "verdict": verdict["verdict"], "verdict_reason": verdict["reason"], "verdict_evidence": verdict,
        "detected_by": "stderr" if lines else "gpu_at_limit_then_error_exit",
    }
