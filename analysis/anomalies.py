"""Incidents in the shape users name them: spikes, one sustained shift, periodic stalls.

From request spans (``SpanScores``) or, without spans, from the engine's scraped latency histograms
(``analysis.engine``), in this order:

1. a **sustained shift** (``shapes.find_shift`` on the time-ordered log latency ratios): one
   incident from the change point to the end (or to where the level came back), whatever the
   per-request tests flagged inside it; its causes are measured against the windows *before* it,
   never against windows that already hold the new regime;
2. **periodic stalls** (``shapes.find_periodic``) among the rest: one incident holding every
   stall event, weighted to the windows the affected requests were in flight, its baseline the
   windows between the stalls;
3. **spikes**: what is left of the per-request (or per-window) slow tests, as before.

Without any request latency (no spans, no latency log, no scrape) the same shapes are found on the
stall signals themselves (``resource_shapes``: run-queue wait, D-state time, reclaim, ...), so a hog
that starts mid-run and stays is one shift, not a row of spikes. With request latency, a shift a
stall signal located is tested on the requests at that point (``corroborated_shift``): one tested
split, not a search, so a milder slowdown (>= 1.1x, statistic >= 3) counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from autoglm_trace.analysis import causes as causes_mod
from autoglm_trace.analysis import shapes
from autoglm_trace.analysis.engine import Engine, EngineLatency, spike_windows, window_series
from autoglm_trace.analysis.spikes import (
    DEFAULT_GAP_NS,
    RESOURCE_WATCH,
    Incident,
    SpanScores,
    latency_incidents,
    resource_incidents,
)
from autoglm_trace.analysis.timeline import Timeline, in_flight


def _pct(v: np.ndarray, q: float) -> float:
    return float(np.percentile(v, q)) if len(v) else float("nan")


# ------------------------------------------------------------------------------------------------
# from spans
# ------------------------------------------------------------------------------------------------
def span_incidents(sc: SpanScores, tl: Timeline, gap_ns: int = DEFAULT_GAP_NS) -> list[Incident]:
    n = len(sc.start)
    order = np.argsort(sc.start, kind="stable")
    lr = np.log(np.maximum(sc.ratio, 1e-9))
    slow = sc.slow.copy()
    covered = np.zeros(n, bool)
    out: list[Incident] = []
    sh = shapes.find_shift(sc.start[order], sc.end[order], lr[order], span_ns=(tl.start_ns, tl.end_ns))
    if sh is None:
        sh = corroborated_shift(sc, tl)
    if sh is not None:
        members = order[sh.first : sh.stop]
        before = np.r_[order[: sh.first], order[sh.stop :]]
        out.append(_shift_from_spans(sc, sh, members, before, tl))
        covered[members] = True
    rest = order[~covered[order]]
    if len(rest) >= 10:
        res_ns = int(np.median(sc.latency[rest]))
        per = shapes.find_periodic(sc.start[rest], sc.end[rest], lr[rest], res_ns)
        if per is not None:
            members = np.concatenate([rest[m] for m in per.members])
            out.append(_periodic_from_spans(sc, per, members, tl))
            covered[members] = True
            # slow requests caught in a stall belong to it, not to a spike of their own
            ev = np.array(per.events)
            for i in np.flatnonzero(slow & ~covered):
                if ((sc.start[i] <= ev[:, 1]) & (sc.end[i] >= ev[:, 0])).any():
                    covered[i] = True
    slow &= ~covered
    spikes = latency_incidents(dataclasses.replace(sc, slow=slow), gap_ns) if slow.any() else []
    if sh is not None:  # a spike touching the shift's edge is part of it
        spikes = [s for s in spikes if s.end_ns < sh.start_ns - gap_ns or s.start_ns > sh.end_ns + gap_ns]
    return sorted(out + spikes, key=lambda i: i.start_ns)


RESOURCE_SHIFT_RATIO = 2.0  # a stall signal is jumpy: its level must at least double
CORROBORATED_STAT = 3.0
CORROBORATED_RATIO = 1.1


def _window_series(tl: Timeline, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    sig = tl.get(name)
    if sig is None or tl.n < 6:
        return None
    v = np.nan_to_num(sig.values, nan=0.0)
    floor = max(float(sig.floor), 1e-12)
    x = np.log((v + floor) / (float(np.median(v)) + floor))
    s = tl.start_ns + np.arange(tl.n, dtype=np.int64) * tl.width_ns
    return s, s + tl.width_ns, x


def resource_shift(tl: Timeline) -> tuple[shapes.Shift, str] | None:
    """The strongest sustained shift among the stall signals (level at least doubled), with its signal."""
    best: tuple[shapes.Shift, str] | None = None
    for name in RESOURCE_WATCH:
        ser = _window_series(tl, name)
        if ser is None:
            continue
        sh = shapes.find_shift(*ser, span_ns=(tl.start_ns, tl.end_ns), min_ratio=RESOURCE_SHIFT_RATIO)
        if sh is not None and (best is None or sh.stat > best[0].stat):
            best = (sh, name)
    return best


def _resource_info(tl: Timeline, name: str) -> dict[str, Any]:
    sig = tl.signals[name]
    return {"signal": name, "describe": sig.describe, "unit": sig.unit}


def resource_shapes(tl: Timeline, gap_windows: int = 2) -> list[Incident]:
    """Incidents from the stall signals alone (no request latency of any kind): a sustained shift
    (one incident from the change point, its baseline before it), periodic stalls of the strongest
    periodic signal, and what is left as spikes (``spikes.resource_incidents``)."""
    out: list[Incident] = []
    covered = np.zeros(tl.n, bool)
    found = resource_shift(tl)
    if found is not None:
        sh, name = found
        sig = tl.signals[name]
        v = np.nan_to_num(sig.values, nan=0.0)
        before, after = v[: sh.first], v[sh.first : sh.stop]
        info = {"from_s": round((sh.start_ns - tl.start_ns) / 1e9, 3), "to_end": sh.to_end,
                "until_s": None if sh.to_end else round((sh.end_ns - tl.start_ns) / 1e9, 3),
                "ratio": round(sh.ratio, 3), "statistic": round(sh.stat, 2),
                "level_before": round(float(np.median(before)), 3), "level_after": round(float(np.median(after)), 3),
                **_resource_info(tl, name)}
        end = tl.end_ns if sh.to_end else sh.end_ns
        out.append(Incident(start_ns=sh.start_ns, end_ns=end, kind="resource", source="resource", shape="shift",
                            shape_info=info, trigger={"signal": name, "ratio": round(sh.ratio, 3),
                                                      "describe": sig.describe}))
        covered |= tl.window_mask(sh.start_ns, end)
    best: tuple[shapes.Periodic, str, np.ndarray] | None = None
    rest = np.flatnonzero(~covered)
    for name in RESOURCE_WATCH:
        ser = _window_series(tl, name)
        if ser is None or len(rest) < 10:
            continue
        s, e, x = ser
        per = shapes.find_periodic(s[rest], e[rest], x[rest], 2 * tl.width_ns)
        if per is not None and (best is None or len(per.events) > len(best[0].events)):
            best = (per, name, x[rest])
    if best is not None:
        per, name, xr = best
        hit = np.concatenate(per.members)
        inc = Incident(start_ns=per.start_ns, end_ns=per.end_ns, kind="resource", source="resource",
                       shape="periodic", shape_info={**_periodic_info(per, tl, None), **_resource_info(tl, name)},
                       trigger={"signal": name, "describe": tl.signals[name].describe,
                                "ratio": round(float(np.exp(np.median(xr[hit]))), 3)})
        w = np.zeros(tl.n)
        for a_, b_ in per.events:
            w[tl.window_mask(a_, b_)] = 1.0
        inc.weights = w
        out.append(inc)
        covered |= w > 0
    for sp in resource_incidents(tl, gap_windows):
        if not covered[tl.window_mask(sp.start_ns, sp.end_ns)].any():
            out.append(sp)
    return sorted(out, key=lambda i: i.start_ns)


def corroborated_shift(sc: SpanScores, tl: Timeline) -> shapes.Shift | None:
    """A shift in the requests' latency at the change point a stall signal located (within two
    windows of it): the one split is tested, so a milder, noisier slowdown still counts as the one
    regime change it is instead of a row of spikes."""
    found = resource_shift(tl)
    if found is None:
        return None
    rs, name = found
    order = np.argsort(sc.start, kind="stable")
    lr = np.log(np.maximum(sc.ratio, 1e-9))[order]
    near = (rs.start_ns - 2 * tl.width_ns, rs.start_ns + 2 * tl.width_ns)
    sh = shapes.find_shift(sc.start[order], sc.end[order], lr, span_ns=(tl.start_ns, tl.end_ns),
                           min_stat=CORROBORATED_STAT, min_ratio=CORROBORATED_RATIO, near_ns=near)
    if sh is not None:
        sh.located_by = name
    return sh


def _shift_from_spans(sc: SpanScores, sh: shapes.Shift, members: np.ndarray, before: np.ndarray,
                      tl: Timeline) -> Incident:
    lat_b, lat_a = sc.latency[before] / 1e6, sc.latency[members] / 1e6
    frac = float(max(0.0, 1 - np.exp(sh.level_before - sh.level_after)))
    info = {"from_s": round((sh.start_ns - tl.start_ns) / 1e9, 3), "to_end": sh.to_end,
            "until_s": None if sh.to_end else round((sh.end_ns - tl.start_ns) / 1e9, 3),
            "p50_before_ms": round(_pct(lat_b, 50), 3), "p50_after_ms": round(_pct(lat_a, 50), 3),
            "p99_before_ms": round(_pct(lat_b, 99), 3), "p99_after_ms": round(_pct(lat_a, 99), 3),
            "ratio": round(sh.ratio, 3), "statistic": round(sh.stat, 2), "requests_before": len(before),
            "located_by": sh.located_by}
    return Incident(
        start_ns=sh.start_ns, end_ns=sh.end_ns, kind="latency", n_requests=len(members), n_overlapping=len(members),
        n_failed=int((~sc.ok[members]).sum()), latency_ms=_pct(lat_a, 99), max_ms=float(lat_a.max()),
        baseline_ms=_pct(lat_b, 50), extra_ms=_pct(lat_a, 50) - _pct(lat_b, 50), latency_frac=frac,
        names=sorted({str(x) for x in sc.names[members]})[:5], shape="shift", shape_info=info)


def _periodic_from_spans(sc: SpanScores, per: shapes.Periodic, members: np.ndarray, tl: Timeline) -> Incident:
    others = np.ones(len(sc.start), bool)
    others[members] = False
    typical = float(np.median(sc.ratio[others])) if others.any() else 1.0
    exp = sc.expected[members] * typical
    lat = sc.latency[members]
    extra = lat - exp
    # One stall delays every request in flight by about its length: the event's largest extra.
    stall = [float(np.max(sc.latency[m_] - sc.expected[m_] * typical)) / 1e6 for m_ in
             (np.intersect1d(members, np.flatnonzero((sc.start <= b) & (sc.end >= a))) for a, b in per.events)
             if len(m_)]
    info = _periodic_info(per, tl, float(np.median(stall)) if stall else None)
    inc = Incident(
        start_ns=per.start_ns, end_ns=per.end_ns, kind="latency", n_requests=len(members),
        n_overlapping=len(members), n_failed=int((~sc.ok[members]).sum()),
        latency_ms=_pct(lat, 99) / 1e6, max_ms=float(lat.max()) / 1e6, baseline_ms=float(np.median(exp)) / 1e6,
        extra_ms=float(np.mean(extra)) / 1e6, latency_frac=float(np.mean(np.clip(1 - exp / lat, 0, 1))),
        names=sorted({str(x) for x in sc.names[members]})[:5], shape="periodic", shape_info=info)
    inc.weights = in_flight(tl, sc.start[members], sc.end[members])
    return inc


def _periodic_info(per: shapes.Periodic, tl: Timeline, stall_ms: float | None) -> dict[str, Any]:
    return {"period_s": round(per.period_s, 3), "jitter_s": round(per.jitter_s, 3),
            "stall_ms": None if stall_ms is None else round(stall_ms, 1), "events": len(per.events),
            "periods_hit": per.hit_fraction, "first_s": round((per.start_ns - tl.start_ns) / 1e9, 3),
            "last_s": round((per.end_ns - tl.start_ns) / 1e9, 3),
            "event_offsets_s": [round((t - tl.start_ns) / 1e9, 3) for t in per.event_ns[:50]],
            "lattice": {"phase_ns": int(per.phase_ns), "period_ns": int(per.period_s * 1e9),
                        "k_first": per.k_first, "k_last": per.k_last}}


# ------------------------------------------------------------------------------------------------
# from the engine's histograms
# ------------------------------------------------------------------------------------------------
def engine_incidents(eng: Engine, tl: Timeline) -> list[Incident]:
    ph = eng.latency
    if ph is None:
        return []
    s, e, x, w = window_series(ph)
    if len(x) < 3:
        return []
    out: list[Incident] = []
    covered = np.zeros(len(x), bool)
    sh = shapes.find_shift(s, e, x, w, span_ns=(tl.start_ns, tl.end_ns))
    if sh is not None:
        covered[sh.first : sh.stop] = True
        out.append(_engine_incident(eng, ph, s, e, covered.copy(), tl, "shift", sh=sh))
    rest = np.flatnonzero(~covered)
    if len(rest) >= 10:
        per = shapes.find_periodic(s[rest], e[rest], x[rest], int(2 * eng.interval_s * 1e9))
        if per is not None:
            m = np.zeros(len(x), bool)
            m[np.concatenate([rest[k] for k in per.members])] = True
            covered |= m
            out.append(_engine_incident(eng, ph, s, e, m, tl, "periodic", per=per))
    hit = spike_windows(x) & ~covered
    idx = np.flatnonzero(hit)
    if len(idx):
        # adjacent slow windows (within one scrape) are one spike
        new = np.ones(len(idx), bool)
        new[1:] = s[idx[1:]] > e[idx[:-1]] + int(eng.interval_s * 1e9 * 1.5)
        bounds = np.flatnonzero(new).tolist() + [len(idx)]
        for g in range(len(bounds) - 1):
            m = np.zeros(len(x), bool)
            m[idx[bounds[g] : bounds[g + 1]]] = True
            out.append(_engine_incident(eng, ph, s, e, m, tl, "spike"))
    return sorted(out, key=lambda i: i.start_ns)


def _engine_incident(eng: Engine, ph: EngineLatency, s: np.ndarray, e: np.ndarray, m: np.ndarray, tl: Timeline,
                     shape: str, sh: shapes.Shift | None = None, per: shapes.Periodic | None = None) -> Incident:
    full = _phase_mask(ph, s[m], e[m])
    if sh is not None:
        base = _phase_mask(ph, s[: sh.first], e[: sh.first]) | _phase_mask(ph, s[sh.stop :], e[sh.stop :])
    else:
        base = ~full & (ph.count > 0)
    a, b = ph.over(full), ph.over(base)
    am, bm = a["mean_s"] or 0.0, b["mean_s"] or 0.0
    start, end = int(s[m].min()), int(e[m].max())
    info: dict[str, Any] = {"latency_metric": ph.metric, "scrape_interval_s": round(eng.interval_s, 3),
                            "p50_before_ms": _ms(b["p50_s"]), "p50_after_ms": _ms(a["p50_s"]),
                            "p99_before_ms": _ms(b["p99_s"]), "p99_after_ms": _ms(a["p99_s"]),
                            "mean_before_ms": _ms(b["mean_s"]), "mean_after_ms": _ms(a["mean_s"])}
    if sh is not None:
        end = tl.end_ns if sh.to_end else end
        info.update(from_s=round((sh.start_ns - tl.start_ns) / 1e9, 3), to_end=sh.to_end,
                    until_s=None if sh.to_end else round((sh.end_ns - tl.start_ns) / 1e9, 3),
                    ratio=round(sh.ratio, 3), statistic=round(sh.stat, 2))
    inc = Incident(
        start_ns=start, end_ns=end, kind="latency", n_requests=int(a["count"]), n_overlapping=int(a["count"]),
        latency_ms=_ms(a["p99_s"]), max_ms=_ms(a["p99_s"]), baseline_ms=_ms(b["p50_s"]),
        extra_ms=1e3 * (am - bm), latency_frac=float(max(0.0, 1 - bm / am)) if am > 0 else None,
        names=[ph.metric], shape=shape, source="engine_metrics", shape_info=info)
    if per is not None:
        inc.shape_info.update(_periodic_info(per, tl, 1e3 * (am - bm) if am > bm else None))
        w = np.zeros(tl.n)
        for a_, b_ in per.events:
            w[tl.window_mask(a_, b_)] = 1.0
        inc.weights = w
    return inc


def _phase_mask(ph: EngineLatency, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Windows of ``ph`` overlapping any of the intervals (phases share the scrapes, so mostly the
    very same windows)."""
    m = np.zeros(len(ph.start), bool)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        m |= (ph.start < b) & (ph.end > a)
    return m


def _ms(v: float | None) -> float | None:
    return None if v is None else round(1e3 * float(v), 3)


# ------------------------------------------------------------------------------------------------
# baselines and the engine's phase split per incident
# ------------------------------------------------------------------------------------------------
def baselines(tl: Timeline, incidents: list[Incident]) -> list[np.ndarray]:
    """Per incident, the windows its causes are measured against: outside every other incident, and
    for a shift only *before* it (after it too if it ended), for periodic stalls the windows
    between the stalls."""
    out = []
    for inc in incidents:
        others = [o for o in incidents if o is not inc]
        m = causes_mod.baseline_mask(tl, others)
        if inc.shape == "shift":
            own = ~_grown(tl.window_mask(inc.start_ns, inc.end_ns))
        elif inc.shape == "periodic" and inc.weights is not None:
            own = ~_grown(inc.weights > 0)
        else:
            own = ~_grown(tl.window_mask(inc.start_ns, inc.end_ns))
        mm = m & own
        if mm.sum() < 3:
            mm = causes_mod.baseline_mask(tl, incidents)
        out.append(mm)
    return out


def periodic_grid(rec: Any, tl: Timeline, inc: Incident, others: list[Incident], eng: Engine | None = None
                  ) -> tuple[Timeline, np.ndarray, np.ndarray]:
    """A periodic incident is judged on a grid fine enough to separate the stalls from the time
    between them (period / 8, never finer than the kernel's buckets): incident windows are those
    around every lattice point -- stalls that hit no request included -- weighted 1; the baseline is
    the windows clear of every stall (and of the other incidents)."""
    from autoglm_trace.analysis.timeline import build_timeline

    lat = (inc.shape_info or {}).get("lattice")
    if not lat:
        return tl, inc.weights if inc.weights is not None else np.ones(tl.n), causes_mod.baseline_mask(tl, others)
    period = lat["period_ns"]
    fine = build_timeline(rec, max(1, min(tl.width_ns, period // 8)))
    if eng is not None:
        from autoglm_trace.analysis.engine import add_signals

        add_signals(fine, eng)
    stall_ns = int(1e6 * (inc.shape_info.get("stall_ms") or 0))
    jitter_ns = int(1e9 * (inc.shape_info.get("jitter_s") or 0))
    pad = max(stall_ns, 2 * jitter_ns, fine.width_ns)
    centres = lat["phase_ns"] + np.arange(lat["k_first"], lat["k_last"] + 1) * period
    hot = np.zeros(fine.n, bool)
    near = np.zeros(fine.n, bool)
    for c in centres.tolist():
        hot |= fine.window_mask(int(c - pad), int(c + pad))
        near |= fine.window_mask(int(c - 2 * pad), int(c + 2 * pad))
    span = fine.window_mask(inc.start_ns, inc.end_ns)
    base = ~near
    for o in others:
        base &= ~fine.window_mask(o.start_ns, o.end_ns)
    if base.sum() < 3:
        base = ~hot
    return fine, (hot & span).astype(float), base


def _grown(m: np.ndarray) -> np.ndarray:
    g = m.copy()
    g[1:] |= m[:-1]
    g[:-1] |= m[1:]
    return g


def engine_split(eng: Engine, tl: Timeline, inc: Incident, base: np.ndarray) -> dict[str, Any] | None:
    from autoglm_trace.analysis.engine import phase_breakdown

    if inc.shape == "periodic" and inc.weights is not None:
        hot = inc.weights > 0
    else:
        hot = tl.window_mask(inc.start_ns, inc.end_ns)

    def mid(ph: EngineLatency) -> np.ndarray:
        return tl.index(ph.start + (ph.end - ph.start) // 2)

    return phase_breakdown(eng, lambda ph: hot[mid(ph)] & (ph.end > inc.start_ns) & (ph.start < inc.end_ns),
                           lambda ph: base[mid(ph)])
