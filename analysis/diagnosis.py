"""``diagnose(rec)``: incidents, their ranked causes and culprits, OOMs and findings -- one dict.

This is the ``autoglm-trace analyze --json`` contract (documented in docs/analysis.md; key names are
stable, new keys may be added). Times are given both as wall-clock ISO-8601 (UTC) and as the
recording's monotonic ``*_ns``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autoglm_trace.analysis import anomalies, containers
from autoglm_trace.analysis import causes as causes_mod
from autoglm_trace.analysis import culprits as culprits_mod
from autoglm_trace.analysis import engine as engine_mod
from autoglm_trace.analysis import requests as requests_mod
from autoglm_trace.analysis import timesplit as timesplit_mod
from autoglm_trace.analysis import wakers as wakers_mod
from autoglm_trace.analysis.oom import iso, oom_postmortem
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.spikes import (
    Incident,
    impact,
    rank_and_cap,
    resource_incidents,
    score_spans,
)
from autoglm_trace.analysis.timeline import Signal, Timeline, build_timeline, in_flight

SCHEMA_ID = "autoglm-trace.diagnosis/1"


def _culprits_for(rec: Recording, kind: str, inc: Incident, slack: int,
                  baseline: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    a, b = inc.start_ns, inc.end_ns
    if kind == "cpu_contention":
        return culprits_mod.cpu_culprits(rec, a, b, slack, baseline)
    if kind in ("lock_contention", "gil_contention"):
        return wakers_mod.holder_culprits(rec, a, b, slack, "gil" if kind == "gil_contention" else "lock",
                                          culprits_mod.victims(rec), inc.n_requests or None, baseline)
    if kind == "io_wait":
        return culprits_mod.io_culprits(rec, a, b, slack, baseline)
    if kind in ("memory_pressure", "oom"):
        return culprits_mod.memory_culprits(rec, a, b)
    if kind == "gpu_memory":
        return culprits_mod.gpu_memory_culprits(rec, a, b)
    return {"culprits": []}


def culprit_sentence(kind: str, c: dict[str, Any]) -> str:
    if c.get("label") and not c.get("container"):  # a container's process is named as operators know it
        who = c["label"]
    else:
        who = containers.who(c)
        if c.get("in_target"):
            who += " (in the target)"
    share = f"{100 * c['share']:.0f}%" if c.get("share") is not None else "?"
    if kind == "cpu_contention":
        where = f" on CPU {c['cpu']}" if c.get("cpu") is not None else ""
        return f"{share} of the target's extra run-queue wait charged to {who}{where}"
    if kind in ("lock_contention", "gil_contention"):
        what = "GIL" if kind == "gil_contention" else "lock"
        return (f"{share} of the target's extra {what} wait ended by {who}, the holder "
                f"({c.get('wait_ms', 0):.0f} ms waited on it)")
    if kind == "io_wait":
        return f"{share} of block I/O bytes on {', '.join(c.get('devices') or []) or 'its devices'} from {who}"
    if kind in ("memory_pressure", "oom"):
        return f"{share} of direct-reclaim stall time in {who} ({c.get('stalls', 0)} stalls)"
    if kind == "gpu_memory":
        return (f"{who} grew to {c.get('gpu_bytes', 0) / 2**30:.1f} GiB on GPU {c.get('gpu')} "
                f"(+{c.get('gpu_growth_bytes', 0) / 2**30:.1f} GiB, {share} of the growth)")
    return f"{who} ({share})"


def _incident_dict(rec: Recording, tl: Timeline, i: int, inc: Incident, base: np.ndarray,
                   eng: engine_mod.Engine | None = None) -> dict[str, Any]:
    slack = tl.width_ns
    windows = [(tl.window_start(int(w)), tl.window_start(int(w)) + tl.width_ns) for w in np.flatnonzero(base)]
    shares = timesplit_mod.extra_shares(timesplit_mod.fractions(rec, [(inc.start_ns, inc.end_ns)]),
                                        timesplit_mod.fractions(rec, _runs(windows)), inc.latency_frac)
    causes = causes_mod.score_incident(tl, inc, base, shares)
    for c in causes:
        if c["kind"] == "unexplained":
            continue
        found = _culprits_for(rec, c["kind"], inc, slack, windows)
        c["culprits"] = found.pop("culprits", [])
        c["attribution"] = found
        if c["culprits"]:
            c["culprit_summary"] = culprit_sentence(c["kind"], c["culprits"][0])
        elif (own := ((found.get("remainder") or {}).get("parts") or {}).get("own_threads", 0)) >= 0.5:
            # No one else to name: say whose the wait was rather than nothing.
            c["culprit_summary"] = (f"{100 * own:.0f}% of the extra run-queue wait behind "
                                    f"{culprits_mod.REMAINDER_WORDS['own_threads']} (no other culprit)")
    causes_mod.fold_gil_holder_cpu(causes)
    hurt, unit = impact(inc)
    d: dict[str, Any] = {
        "id": i + 1, "kind": inc.kind, "start": iso(rec, inc.start_ns), "end": iso(rec, inc.end_ns),
        "start_ns": inc.start_ns, "end_ns": inc.end_ns, "offset_s": round((inc.start_ns - tl.start_ns) / 1e9, 3),
        "duration_s": round((inc.end_ns - inc.start_ns) / 1e9, 3),
        "requests": inc.n_requests, "requests_overlapping": inc.n_overlapping, "failed": inc.n_failed,
        "latency_ms": _r(inc.latency_ms), "max_latency_ms": _r(inc.max_ms), "baseline_ms": _r(inc.baseline_ms),
        "extra_ms": _r(inc.extra_ms), "latency_extra_fraction": _r(inc.latency_frac, 4),
        "impact": _r(hurt), "impact_unit": unit,
        "span_names": inc.names, "trigger": inc.trigger or None, "causes": causes,
        "shape": inc.shape, "shape_info": inc.shape_info or None, "latency_source": inc.source,
    }
    if eng is not None and inc.kind == "latency":
        split = anomalies.engine_split(eng, tl, inc, base)
        if split:
            d["engine"] = split
    d["time_split"] = timesplit_mod.time_split(rec, inc.start_ns, inc.end_ns, causes)
    d["headline"] = headline(d)
    return d


def _runs(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent windows joined into runs (end exclusive, as closed ranges of bucket starts)."""
    out: list[tuple[int, int]] = []
    for a, b in windows:
        if out and out[-1][1] + 1 >= a:
            out[-1] = (out[-1][0], b - 1)
        else:
            out.append((a, b - 1))
    return out


def _f0(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}"


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


def headline(inc: dict[str, Any]) -> str:
    top = inc["causes"][0] if inc["causes"] else None
    shape = inc.get("shape") or "spike"
    info = inc.get("shape_info") or {}
    if inc["kind"] == "latency" and shape == "shift":
        until = "the end" if info.get("to_end") else f"+{info.get('until_s', 0):.1f} s"
        what = (f"sustained shift from +{info.get('from_s', 0):.1f} s to {until}: p50 "
                f"{_f0(info.get('p50_before_ms'))} -> {_f0(info.get('p50_after_ms'))} ms, p99 "
                f"{_f0(info.get('p99_before_ms'))} -> {_f0(info.get('p99_after_ms'))} ms")
    elif inc["kind"] == "latency" and shape == "periodic":
        stall = f", {info['stall_ms']:.0f} ms" if info.get("stall_ms") is not None else ""
        what = (f"periodic stalls every {info.get('period_s', 0):.1f} s +- {info.get('jitter_s', 0):.2f} s{stall} "
                f"({info.get('events')} seen from +{info.get('first_s', 0):.1f} s to +{info.get('last_s', 0):.1f} s)")
    elif inc["kind"] == "latency" and inc.get("latency_source") == "engine_metrics":
        what = (f"engine latency spike: p50 {_f0(info.get('p50_before_ms'))} -> {_f0(info.get('p50_after_ms'))} ms, "
                f"p99 {_f0(info.get('p99_after_ms'))} ms over {inc['requests']} requests")
    elif inc["kind"] == "latency":
        what = (f"{inc['requests']} slow request{'s' if inc['requests'] != 1 else ''}, p99 "
                f"{inc['latency_ms']:.0f} ms vs {inc['baseline_ms']:.0f} ms expected")
    elif shape == "shift":
        until = "the end" if info.get("to_end") else f"+{info.get('until_s', 0):.1f} s"
        what = (f"sustained shift from +{info.get('from_s', 0):.1f} s to {until}: {info.get('describe')} "
                f"{info.get('ratio', 0):.1f}x (no request latency recorded)")
    elif shape == "periodic":
        what = (f"periodic {info.get('describe')} every {info.get('period_s', 0):.1f} s +- "
                f"{info.get('jitter_s', 0):.2f} s ({info.get('events')} seen from +{info.get('first_s', 0):.1f} s "
                f"to +{info.get('last_s', 0):.1f} s; no request latency recorded)")
    else:
        trig = inc.get("trigger") or {}
        what = f"{trig.get('describe', 'a resource signal')} spiked {trig.get('ratio', 0):.0f}x"
        if trig.get("requests_slower"):
            what += (f"; {inc['requests']} requests during it {trig['requests_slower']:.2f}x slower than the "
                     f"rest (p99 {inc['latency_ms']:.0f} ms)")
    if inc.get("engine", {}).get("summary"):
        what += f"; {inc['engine']['summary']}"
    if top is None:
        return what
    cause = f"{top['kind']} (score {top['score']:.2f}): {top['summary']}"
    if top.get("culprit_summary"):
        cause += f"; {top['culprit_summary']}"
    return f"{what} -> {cause}"


def worst_summary(incidents: list[dict[str, Any]], worst_first: list[int]) -> str:
    """The incident that hurt most (``worst_first``), its first cause and culprit, in one line."""
    inc = next(i for i in incidents if i["id"] == worst_first[0])
    hurt = (f"{inc['impact'] / 1e3:.1f} s of extra latency over {inc['requests']} slow requests"
            if inc.get("impact_unit") == "ms" else f"lasting {inc['duration_s']:.1f} s")
    s = f"Worst: incident {inc['id']} at {(inc.get('start') or '?')[11:23]} ({hurt}, of {len(incidents)} incidents)"
    top = inc["causes"][0] if inc["causes"] else None
    if top:
        s += f" -> {top['kind']}"
        if top.get("culprits"):
            cu = top["culprits"][0]
            s += f": {cu.get('label') or containers.who(cu)} {100 * (cu.get('share') or 0):.0f}%"
        elif top.get("culprit_summary"):
            s += f": {top['culprit_summary']}"
    return s


def _findings(rec: Recording, tl: Timeline, sc: Any, incidents: list[dict[str, Any]], oom: dict[str, Any],
              dropped: int, resource_only: list[Incident]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(kind: str, severity: str, message: str, **kw: Any) -> None:
        out.append({"kind": kind, "severity": severity, "message": message, **kw})

    for k in oom["kills"]:
        verb = "failed with CUDA out of memory" if k["kind"] == "cuda" else "killed"
        where = "" if k.get("in_target") else " (outside the target)"
        add("oom", "critical" if k.get("in_target") else "warning",
            f"{k['kind']} OOM: pid {k['pid']} `{k.get('comm')}`{where} {verb} at {k['time']}"
            f" ({k['verdict']}: {k['verdict_reason']})", pid=k["pid"], ts_ns=k["ts_ns"])
    if sc is not None and not incidents:
        add("no_incident", "info", f"no latency spike: all {len(sc.latency)} requests within the expected "
            "range for their size")
    if dropped:
        add("incidents_capped", "info", f"{dropped} smaller incidents not shown (the largest "
            f"{len(incidents)} are)")
    for inc in resource_only:
        trig = inc.trigger
        add("resource_anomaly", "warning", f"{trig['describe']} spiked {trig['ratio']:.0f}x at "
            f"{iso(rec, inc.start_ns)} without slowing requests", ts_ns=inc.start_ns, signal=trig["signal"])
    for inc in incidents:
        if inc["causes"] and inc["causes"][0]["kind"] == "unexplained":
            add("unexplained", "warning", f"incident {inc['id']}: no recorded signal explains it "
                "(application-level cause? e.g. GC, lock, batch scheduling)", incident=inc["id"])
    if sc is not None:
        failed = int((~sc.ok).sum())
        if failed:
            add("failed_requests", "warning", f"{failed} of {len(sc.ok)} requests failed", count=failed)
    for name, c in rec.collectors.items():
        if isinstance(c, dict) and c.get("status") not in (None, "ok", "off"):
            add("collector", "info", f"collector {name} {c.get('status')}: {c.get('reason') or ''}".strip(),
                collector=name)
    for name, err in rec.truncated.items():
        add("truncated", "warning", f"table {name} is cut short ({err}); analysed up to its last whole batch")
    if not rec.complete and not rec.truncated:
        add("incomplete", "warning", "the recording did not finish cleanly (recorder killed?)")
    if rec.has("probe_stats") and rec.table("probe_stats").num_rows:
        ps = rec.table("probe_stats")
        g = ps.group_by("probe").aggregate([("lost", "sum"), ("events", "sum")])
        for probe, lost, ev in zip(g.column("probe").to_pylist(), g.column("lost_sum").to_pylist(),
                                   g.column("events_sum").to_pylist(), strict=False):
            if lost:
                add("lost_events", "warning", f"probe {probe} lost {lost} of {(ev or 0) + lost} events; "
                    "its signals undercount", probe=probe, lost=int(lost))
    if rec.has("alerts") and rec.table("alerts").num_rows:
        for a in rec.table("alerts").slice(0, 20).to_pylist():
            add(f"alert_{a['kind']}", "warning", a.get("message") or a["kind"], ts_ns=a["ts_ns"],
                eta_s=a.get("eta_s"))
    return out


PROMOTE_RATIO = 1.2  # requests during a resource spike this much slower than the rest: an incident


def _promote_resource_spikes(sc: Any, spikes: list[Incident]) -> tuple[list[Incident], list[Incident]]:
    """Resource spikes during which the overlapping requests were measurably slower than the others
    (by their median latency ratio) become incidents with those requests' latency; the rest stay
    findings ("spiked ... without slowing requests"). Catches slowdowns too mild for the per-request
    tests (1.2x-1.5x) when a stall signal says exactly when they happened."""
    promoted, others = [], []
    for inc in spikes:
        over = (sc.start <= inc.end_ns) & (sc.end >= inc.start_ns)
        if over.sum() < 3 or (~over).sum() < 3:
            others.append(inc)
            continue
        rel = float(np.median(sc.ratio[over]) / np.median(sc.ratio[~over]))
        if rel < PROMOTE_RATIO:
            others.append(inc)
            continue
        lat, exp = sc.latency[over], sc.expected[over] * float(np.median(sc.ratio[~over]))
        inc.n_requests = inc.n_overlapping = int(over.sum())
        inc.n_failed = int((~sc.ok[over]).sum())
        inc.latency_ms = float(np.percentile(lat, 99)) / 1e6
        inc.max_ms = float(lat.max()) / 1e6
        inc.baseline_ms = float(np.median(exp)) / 1e6
        inc.extra_ms = float(np.mean(lat - exp)) / 1e6
        inc.latency_frac = float(max(0.0, 1 - 1 / rel))
        inc.names = sorted({str(n) for n in sc.names[over]})[:5]
        inc.trigger = dict(inc.trigger, requests_slower=round(rel, 3))
        promoted.append(inc)
    return promoted, others


def diagnose(rec: Recording, latency_rows: list[dict[str, Any]] | None = None,
             window_ns: int | None = None) -> dict[str, Any]:
    """The analysis of one recording (see the module docstring and docs/analysis.md).

    ``latency_rows``: extra request timings as ``spans``-table rows on the recording's monotonic clock
    (``probes.latency_log.to_spans(parse_latency_file(path)[0], rec.wall_offset_ns)``).
    """
    tl = build_timeline(rec, window_ns)
    spans, span_sources = requests_mod.request_spans(rec, latency_rows)
    sc = score_spans(spans)
    if sc is not None:
        # Load signals from the de-duplicated requests, --latency log included.
        tl.add(Signal("requests_in_flight", in_flight(tl, sc.start, sc.end), "requests", "spans", "load",
                      "requests in flight", floor=1))
        arrivals = np.bincount(tl.index(sc.start), minlength=tl.n)[: tl.n].astype(np.float64)
        tl.add(Signal("request_arrivals", arrivals, "count/window", "spans", "load", "request arrivals", floor=1))
    not_checked = list(tl.not_checked)
    eng = engine_mod.load_engine(rec, min_width_ns=tl.width_ns // 2)
    if eng is not None:
        engine_mod.add_signals(tl, eng)
    resource_only: list[Incident] = []
    if sc is not None:
        found = anomalies.span_incidents(sc, tl)
        if not found:
            found, resource_only = _promote_resource_spikes(sc, resource_incidents(tl))
            resource_only = resource_only[:5]
    elif eng is not None and eng.latency is not None:
        found = anomalies.engine_incidents(eng, tl)
    else:
        not_checked.append({"signal": "request_latency", "reason": "no spans, no --latency log and no scraped "
                            "latency histogram: incidents are found from resource signals alone"})
        found = anomalies.resource_shapes(tl)
    found, dropped = rank_and_cap(found)
    if sc is not None and found:
        w = in_flight(tl, sc.start[sc.slow], sc.end[sc.slow])
        for inc in found:
            if inc.weights is None and inc.shape == "spike":
                inc.weights = w
    bases = anomalies.baselines(tl, found)
    incidents = []
    for i, inc in enumerate(found):
        tli, basei = tl, bases[i]
        if inc.shape == "periodic":  # judged on a grid that separates the stalls from the gaps
            tli, inc.weights, basei = anomalies.periodic_grid(rec, tl, inc, [o for o in found if o is not inc], eng)
        incidents.append(_incident_dict(rec, tli, i, inc, basei, eng))
    worst = [d["id"] for d in sorted(incidents, key=lambda d: -(d["impact"] or 0))]
    oom = oom_postmortem(rec, latency_rows)
    for nc in oom["not_checked"]:
        if nc not in not_checked:
            not_checked.append(nc)
    target = dict(rec.target)
    target.setdefault("pids", _target_pids(rec))
    requests = None
    if sc is not None:
        lat_ms = sc.latency / 1e6
        requests = {"count": len(lat_ms), "failed": int((~sc.ok).sum()), "sources": span_sources,
                    "p50_ms": _r(float(np.percentile(lat_ms, 50))), "p90_ms": _r(float(np.percentile(lat_ms, 90))),
                    "p99_ms": _r(float(np.percentile(lat_ms, 99))), "slow": int(sc.slow.sum()),
                    "model": sc.model}
    engine = None
    if eng is not None:
        engine = eng.describe()
        lat = eng.latency
        if lat is not None:
            allw = lat.over(lat.count > 0)
            engine["latency"] = {"metric": lat.metric, "requests": int(allw["count"]),
                                 **{k.replace("_s", "_ms"): _r(1e3 * v) if v is not None else None
                                    for k, v in allw.items() if k != "count"}}
            if sc is None:
                engine["used_for_incidents"] = True
    return {
        "schema": SCHEMA_ID,
        "recording": str(rec.path),
        "target": target,
        "window": {"start": iso(rec, tl.start_ns), "end": iso(rec, tl.end_ns), "start_ns": tl.start_ns,
                   "end_ns": tl.end_ns, "duration_s": round((tl.end_ns - tl.start_ns) / 1e9, 3),
                   "analysis_window_s": tl.width_ns / 1e9},
        "requests": requests,
        "engine": engine,
        "incidents": incidents,
        # Incident ids, the one that hurt most first (spikes.impact): where a reader starts.
        "worst_first": worst,
        "worst": {"id": worst[0], "summary": worst_summary(incidents, worst)} if worst else None,
        "oom": oom["kills"],
        "findings": _findings(rec, tl, sc, incidents, oom, dropped, resource_only),
        "checked": sorted(tl.signals),
        "not_checked": not_checked,
    }


def _target_pids(rec: Recording) -> list[int]:
    if rec.has("processes") and rec.table("processes").num_rows:
        return sorted(set(rec.table("processes").column("pid").to_pylist()))[:50]
    return []
