"""``diff_recordings(base, new)``: a performance-regression root-cause hunt between two recordings.

1. Latency distribution change: p50 / p90 / p99 of request latency (and latency per output token) in
   each recording with distribution-free 95 % confidence intervals from order statistics (the ranks
   ``n q +- 1.96 sqrt(n q (1 - q))``), the change, and whether the intervals are disjoint.
2. Every resource signal of ``analysis.timeline`` normalised per request (per second when either side
   has no requests): additive signals (time, counts, bytes per window) as totals / requests, level
   signals (fractions, clocks, memory) as their mean. Ranked by |log ratio| of the worsening.
3. The likely cause: the cause kind (``analysis.causes.CAUSES``) of the highest-ranked signal that got
   worse by at least 1.5x, and who grew into it (``culprits``): for CPU, lock, GIL and I/O causes the
   tasks charged with the wait (bytes) per request in each recording, matched across the two by name
   and place (pids differ between runs), the largest increase first.
4. Where the request threads' time went in each recording (``time_split``, analysis/timesplit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from autoglm_trace.analysis import timesplit, wakers
from autoglm_trace.analysis import tree as tree_mod
from autoglm_trace.analysis.causes import CAUSES
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.requests import request_spans
from autoglm_trace.analysis.timeline import Signal, Timeline, build_timeline, col

SCHEMA_ID = "autoglm-trace.diff/1"
QUANTILES = (50, 90, 99)
WORSE = 1.5
ADDITIVE_UNITS = ("ns/window", "count/window", "bytes/window")


def ci_ranks(n: int, q: float, z: float = 1.96) -> tuple[int, int]:
    """0-based ranks of the order statistics bounding the q-quantile of n samples (distribution-free)."""
    half = z * np.sqrt(n * q * (1 - q))
    return int(np.clip(np.floor(n * q - half), 0, n - 1)), int(np.clip(np.ceil(n * q + half), 0, n - 1))


def quantile_ci(x: np.ndarray, q: float, z: float = 1.96) -> tuple[float, float, float] | None:
    """(estimate, low, high) of the q-quantile (0..1) with an order-statistic confidence interval."""
    n = len(x)
    if n == 0:
        return None
    s = np.sort(x)
    lo, hi = ci_ranks(n, q, z)
    return float(np.quantile(s, q)), float(s[lo]), float(s[hi])


def histogram_quantile_ci(values: np.ndarray, counts: np.ndarray, q: float, z: float = 1.96
                          ) -> tuple[float, float, float] | None:
    """``quantile_ci`` on aggregated samples: ``counts[i]`` samples of value ``values[i]`` (a bucket's
    representative value, ascending). Same ranks, read off the cumulative counts."""
    n = int(counts.sum())
    if n == 0:
        return None
    cum = np.cumsum(counts)
    lo, hi = ci_ranks(n, q, z)
    at = int(np.clip(np.ceil(n * q) - 1, 0, n - 1))
    pick = np.searchsorted(cum, np.array([at, lo, hi]), side="right")
    v = values[np.clip(pick, 0, len(values) - 1)]
    return float(v[0]), float(v[1]), float(v[2])


def _latencies(rec: Recording) -> tuple[np.ndarray, np.ndarray]:
    t, _sources = request_spans(rec)  # each request once, as the diagnosis counts them
    if not t.num_rows:
        return np.empty(0), np.empty(0)
    lat = (col(t, "end_ns", np.int64) - col(t, "ts_ns", np.int64)) / 1e6
    tok = col(t, "output_tokens", np.float64, 0)
    return lat, lat[tok > 0] / tok[tok > 0]


def _dist(b: np.ndarray, n: np.ndarray, unit: str) -> dict[str, Any] | None:
    if not len(b) or not len(n):
        return None
    return _compare(lambda q: quantile_ci(b, q), lambda q: quantile_ci(n, q), len(b), len(n), unit)


def histogram_dist(base: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], unit: str
                   ) -> dict[str, Any] | None:
    """The latency comparison of ``diff`` on aggregates: each side a (bucket values, counts) histogram."""
    nb, nn = int(base[1].sum()), int(new[1].sum())
    if not nb or not nn:
        return None
    return _compare(lambda q: histogram_quantile_ci(*base, q), lambda q: histogram_quantile_ci(*new, q),
                    nb, nn, unit)


Quantile = Callable[[float], "tuple[float, float, float] | None"]


def _compare(qb: Quantile, qn: Quantile, nb: int, nn: int, unit: str) -> dict[str, Any]:
    out: dict[str, Any] = {"unit": unit, "base_count": nb, "new_count": nn}
    for q in QUANTILES:
        eb, en = qb(q / 100), qn(q / 100)
        assert eb is not None and en is not None
        out[f"p{q}"] = {
            "base": round(eb[0], 4), "base_ci": [round(eb[1], 4), round(eb[2], 4)],
            "new": round(en[0], 4), "new_ci": [round(en[1], 4), round(en[2], 4)],
            "change": round(en[0] - eb[0], 4), "ratio": round(en[0] / eb[0], 4) if eb[0] > 0 else None,
            # Disjoint intervals: conservative (each at 95 %), so "significant" is a strong claim.
            "significant": bool(en[1] > eb[2] or en[2] < eb[1]),
        }
    return out


def _normalised(tl: Timeline, sig: Signal, requests: int) -> tuple[float, str, str] | None:
    """(value, normalisation, unit): time in ms, counts and bytes as they are."""
    v = sig.values[np.isfinite(sig.values)]
    if not len(v):
        return None
    scale, base_unit = (1e-6, "ms") if sig.unit.startswith("ns") else (1.0, sig.unit.split("/")[0])
    if sig.unit in ADDITIVE_UNITS:
        total = float(v.sum()) * scale
        if requests > 0:
            return total / requests, "per_request", f"{base_unit}/request"
        return total / (tl.n * tl.width_ns / 1e9), "per_second", f"{base_unit}/s"
    return float(v.mean()) * scale, "mean", base_unit


_KIND_OF = {s: kind for kind, (specific, stalls) in CAUSES.items() for s in specific + stalls}


ENGINE_GAUGES = ("kv_cache_usage", "running", "waiting")


def engine_diff(base: Recording, new: Recording) -> dict[str, Any] | None:
    """The serving engines' own latency (``record --scrape``) compared phase by phase -- end-to-end,
    time to first token, inter-token, queue, prefill, decode -- each quantile ``histogram_quantile``
    over the whole recording (``EngineLatency.quantile_ci``, the windowed-quantile rule every view
    uses) with its order-statistic interval; and the engine's state: KV-cache usage, running /
    waiting requests (means) and preemptions per second. None unless both recordings scraped one."""
    from autoglm_trace.analysis import engine as engine_mod

    eb, en = engine_mod.load_engine(base), engine_mod.load_engine(new)
    if eb is None or en is None:
        return None
    phases: dict[str, Any] = {}
    for key, pb in eb.phases.items():
        pn = en.phases.get(key)
        if pn is None:
            continue
        (nb, sb), (nn, sn) = pb.summed(), pn.summed()
        if not nb or not nn or nb[-1] < 1 or nn[-1] < 1:
            continue
        # _sum / _count: exact where the buckets are coarse (vLLM's request buckets start at 0.3 s).
        mean = {"base": round(1e3 * sb / nb[-1], 4), "new": round(1e3 * sn / nn[-1], 4)}
        mean["ratio"] = round(mean["new"] / mean["base"], 4) if mean["base"] > 0 else None
        qb = lambda q, ph=pb: _ms(ph.quantile_ci(q))  # noqa: E731
        qn = lambda q, ph=pn: _ms(ph.quantile_ci(q))  # noqa: E731
        if all(qb(q / 100) is not None and qn(q / 100) is not None for q in QUANTILES):
            phases[key] = {"metric": pn.metric, "describe": pn.describe, "mean": mean,
                           **_compare(qb, qn, int(nb[-1]), int(nn[-1]), "ms")}
    state: dict[str, Any] = {}
    for role in ENGINE_GAUGES:
        gb, gn = engine_mod.gauge_summary(eb, role), engine_mod.gauge_summary(en, role)
        if gb is not None and gn is not None:
            state[role] = {"metric": en.gauges.get(role), "base": gb, "new": gn}
    pb_, pn_ = engine_mod.counter_rate_per_s(eb, "preemptions"), engine_mod.counter_rate_per_s(en, "preemptions")
    if pb_ is not None and pn_ is not None:
        state["preemptions_per_s"] = {"metric": en.gauges.get("preemptions"), "base": pb_, "new": pn_}
    if not phases and not state:
        return None
    main = next((k for k in ("e2e", "ttft", "itl") if k in phases), None)
    return {"base": eb.describe(), "new": en.describe(), "latency_phase": main, "phases": phases, "state": state}


def _ms(v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    return None if v is None else (v[0] * 1e3, v[1] * 1e3, v[2] * 1e3)


def diff_recordings(base: Recording, new: Recording) -> dict[str, Any]:
    lb, tb = _latencies(base)
    ln, tn = _latencies(new)
    latency = _dist(lb, ln, "ms")
    per_token = _dist(tb, tn, "ms/token")
    engine = engine_diff(base, new)
    latency_source = "requests" if latency is not None else None
    if latency is None and engine is not None and engine["latency_phase"]:
        # No request timings on a side: the engine's own histograms are the request latency.
        ph = engine["phases"][engine["latency_phase"]]
        latency = {k: v for k, v in ph.items() if k not in ("metric", "describe", "mean")}
        latency_source = f"engine:{ph['metric']}"
    tlb, tln = build_timeline(base), build_timeline(new)
    signals = []
    for name, sb in tlb.signals.items():
        sn = tln.signals.get(name)
        if sn is None or sb.scope == "load":
            continue
        vb, vn = _normalised(tlb, sb, len(lb)), _normalised(tln, sn, len(ln))
        if vb is None or vn is None or vb[1] != vn[1]:
            continue
        b, n = vb[0], vn[0]
        floor = sb.floor * (1e-6 if sb.unit.startswith("ns") else 1) / (10 if vb[1] == "per_request" else 1)
        if sb.direction >= 0:
            ratio = max(n, floor) / max(b, floor)
        else:
            ratio = max(b, floor) / max(n, floor)
        signals.append({"signal": name, "describe": sb.describe, "unit": vb[2], "normalised": vb[1],
                        "base": round(b, 4), "new": round(n, 4), "ratio": round(ratio, 4),
                        "worse": ratio >= WORSE, "cause_kind": _KIND_OF.get(name), "scope": sb.scope})
    signals.sort(key=lambda s: abs(np.log(max(s["ratio"], 1e-9))), reverse=True)
    not_checked = []
    for side, tl in (("base", tlb), ("new", tln)):
        for nc in tl.not_checked:
            not_checked.append({**nc, "recording": side})
    only = sorted(set(tlb.signals) ^ set(tln.signals))
    for s in only:
        not_checked.append({"signal": s, "reason": "recorded in only one of the two recordings"})
    regressed = None
    if latency is not None:
        regressed = any(latency[f"p{q}"]["significant"] and latency[f"p{q}"]["change"] > 0 for q in QUANTILES)
    likely = None
    for s in signals:
        if s["worse"] and s["cause_kind"] and s["cause_kind"] != "load":
            likely = {"kind": s["cause_kind"], "signal": s["signal"],
                      "summary": f"{s['describe']} {s['ratio']:.1f}x worse ({s['normalised'].replace('_', ' ')})"}
            break
    if likely is None and regressed:
        likely = {"kind": "unexplained", "signal": None,
                  "summary": "latency regressed but no recorded resource signal changed by 1.5x or more"}
    who = diff_culprits(base, new, likely["kind"], len(lb), len(ln)) if likely else []
    splits = {side: timesplit.time_split(r, r.start_ns, r.end_ns) for side, r in (("base", base), ("new", new))}
    return {
        "schema": SCHEMA_ID,
        "base": {"recording": str(base.path), "requests": len(lb), "duration_s": round(tlb.n * tlb.width_ns / 1e9, 3)},
        "new": {"recording": str(new.path), "requests": len(ln), "duration_s": round(tln.n * tln.width_ns / 1e9, 3)},
        "latency": latency, "latency_source": latency_source, "latency_per_token": per_token,
        "engine": engine, "regressed": regressed,
        "likely_cause": likely, "culprits": who, "time_split": splits, "signals": signals,
        "not_checked": not_checked,
    }


def _charges(rec: Recording, kind: str) -> dict[str, float]:
    """name of the task (as a label without ids) -> what it is charged with over the recording."""
    tr = tree_mod.load(rec)
    out: dict[str, float] = {}

    def add(pid: int, tid: int | None, comm: Any, v: float) -> None:
        c = tree_mod.describe(tr, {"pid": int(pid), "tid": tid, "comm": comm})
        name = c.get("thread_name") or comm or "?"
        key = f'{"thread" if tid is not None else "process"} "{name}" ({tree_mod.where_words(tr, c["where"])})'
        out[key] = out.get(key, 0.0) + float(v)

    if kind == "cpu_contention" and rec.has("preemptions"):
        vic = tree_mod.victims(rec, tr)
        for r in rec.table("preemptions").select(["pid", "preemptor_pid", "preemptor_tid", "preemptor_comm",
                                                    "wait_ns"]).to_pylist():
            if r["pid"] in vic and r["preemptor_pid"]:
                same = r["preemptor_pid"] in vic
                add(r["preemptor_pid"], r["preemptor_tid"] if same else None, r["preemptor_comm"], r["wait_ns"] or 0)
    elif kind in ("lock_contention", "gil_contention"):
        t = wakers.classify(rec, tr)
        if t is not None and t.num_rows:
            cls = "gil" if kind == "gil_contention" else "lock"
            for r in t.select(["waker_pid", "waker_tid", "waker_comm", "class", "wait_ns"]).to_pylist():
                if r["class"] == cls and r["waker_tid"]:
                    add(r["waker_pid"], r["waker_tid"], r["waker_comm"], r["wait_ns"] or 0)
    elif kind == "io_wait" and rec.has("block_io"):
        for r in rec.table("block_io").select(["pid", "comm", "bytes"]).to_pylist():
            add(r["pid"], None, r["comm"], r["bytes"] or 0)
    return out


def diff_culprits(base: Recording, new: Recording, kind: str, nb: int, nn: int, top: int = 3) -> list[dict[str, Any]]:
    """Who grew into ``kind`` between the recordings, per request (per second without requests)."""
    unit = "bytes" if kind == "io_wait" else "ms"
    scale = 1.0 if kind == "io_wait" else 1e-6
    db = max(nb, 1) if nb and nn else max(1e-9, (base.end_ns - base.start_ns) / 1e9)
    dn = max(nn, 1) if nb and nn else max(1e-9, (new.end_ns - new.start_ns) / 1e9)
    per = "per request" if nb and nn else "per second"
    cb, cn = _charges(base, kind), _charges(new, kind)
    rows = []
    for k in set(cb) | set(cn):
        b, n = cb.get(k, 0.0) * scale / db, cn.get(k, 0.0) * scale / dn
        if n > b:
            rows.append({"who": k, "base": round(b, 4), "new": round(n, 4), "unit": f"{unit} {per}"})
    rows.sort(key=lambda r: r["base"] - r["new"])
    return rows[:top]
