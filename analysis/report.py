"""The HTML report: one self-contained file a person opens in a browser, offline.

``write_report(rec, path)`` renders, top to bottom:

* the header: target, host, time span, what each collector recorded, and what was *not* recorded
  and why (the manifest's collector reasons) -- so a reader knows which causes were not checked;
* the incidents with their ranked causes and culprit processes (``analysis.diagnosis``);
* one timeline figure (plotly, plotly.js embedded inline: no network) with a shared wall-clock x
  axis: request latency (every span, windowed p50/p99, incidents shaded) above the resource
  tracks of ``analysis.tracks`` (CPU wait, faults, block I/O, memory, GPU), OOM kills, Xid errors
  and abnormal exits as vertical lines through every row;
* the OOM post-mortem (``analysis.oom``), the recorder's alerts, and the top preemptors.

The page is rendered from Jinja2 templates (analysis/templates/: ``report.html.j2`` lays out the
page, ``sections.html.j2`` holds one macro per section, ``report.css`` the style); this module only
gathers plain values for them. Everything that comes from a recording (comm, cmdline, span names,
collector reasons) is attacker-controlled text: the templates autoescape every value, plot labels are
escaped before plotly sees them (it renders a subset of HTML in labels), and plotly's JSON embedding
escapes ``</script>``. The figure is the one fragment passed in as ``Markup``.
"""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pyarrow.compute as pc
from markupsafe import Markup, escape

from autoglm_trace.analysis import tracks as T
from autoglm_trace.analysis.outfile import atomic_file
from autoglm_trace.signals import human_bytes, human_seconds, log2_quantile, log2_sum

UNIT_SCALE: dict[str, tuple[float, str]] = {
    "bytes": (1 / 2**30, "GiB"),
    "bytes/s": (1 / 2**20, "MiB/s"),
    "fraction": (100.0, "%"),
    "flag": (100.0, "%"),
}
# Tracks shown only from the legend when a kernel-side equivalent exists.
SUPERSEDED = {
    "proc.ctx_involuntary": "sched.involuntary",
    "proc.minflt": "faults.minor",
    "proc.majflt": "faults.major",
    "proc.io_read": "block_io.target_bytes",
    "proc.io_write": "block_io.target_bytes",
}
PANEL_HEIGHT = {"latency": 330}
MARKER_COLOURS = {"oom_kill": "#c0392b", "exit": "#7f8c8d", "xid": "#8e44ad"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _label(x: Any) -> str:
    """Recording text for a plot label: plotly renders a subset of HTML in labels, so it is escaped."""
    return "" if x is None else str(escape(str(x)))


# ----------------------------------------------------------------------------------------------
# Diagnosis / OOM (other modules, imported lazily so the report works without them)
# ----------------------------------------------------------------------------------------------
def _call(module: str, fn: str, rec) -> tuple[dict | None, str | None]:
    try:
        mod = __import__(f"autoglm_trace.analysis.{module}", fromlist=[fn])
        f = getattr(mod, fn)
    except (ImportError, AttributeError) as e:
        return None, f"autoglm_trace.analysis.{module}.{fn} is not available ({e})"
    try:
        out = f(rec)
    except Exception as e:  # noqa: BLE001 - a failing analysis must not lose the rest of the report
        frames = traceback.extract_tb(e.__traceback__)
        ours = [f for f in frames if "site-packages" not in f.filename and not f.filename.endswith(".pxi")]
        where = (ours or frames)[-1]
        return None, (f"{module}.{fn} failed: {type(e).__name__}: {e} "
                      f"(at {os.path.basename(where.filename)}:{where.lineno})")
    if not isinstance(out, dict):
        return None, f"{module}.{fn} returned {type(out).__name__}, not a dict"
    return out, None


# ----------------------------------------------------------------------------------------------
# Time helpers
# ----------------------------------------------------------------------------------------------
def wall_strings(ts_ns: np.ndarray, offset_ns: int) -> np.ndarray:
    """Monotonic ns -> ISO wall-clock strings (UTC, ms), vectorised; plotly reads them as dates."""
    return np.datetime_as_string((np.asarray(ts_ns, np.int64) + offset_ns).astype("datetime64[ns]"), unit="ms")


def wall_one(ts_ns: int, offset_ns: int) -> str:
    return str(wall_strings(np.array([ts_ns]), offset_ns)[0])


def fmt_wall(ts_ns: int | None, offset_ns: int) -> str:
    if ts_ns is None:
        return ""
    return datetime.fromtimestamp((ts_ns + offset_ns) / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def fmt_bytes(n: Any) -> str:
    return human_bytes(n, missing="–")


def fmt_num(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


# ----------------------------------------------------------------------------------------------
# The figure
# ----------------------------------------------------------------------------------------------
def simple_incidents(lat: T.LatencySeries) -> list[dict[str, Any]]:
    """Fallback shading when no diagnosis is available: windows whose p99 is above 3x the median
    of the windowed p50s (contiguous windows merged). Labelled as such in the report."""
    if lat is None or lat.p99_ms.size == 0:
        return []
    base = float(np.median(lat.p50_ms))
    hot = lat.p99_ms > 3 * base
    if not hot.any():
        return []
    idx = np.flatnonzero(hot)
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return [{"start_ns": int(lat.win_ts_ns[a]), "end_ns": int(lat.win_ts_ns[b] + lat.window_ns),
             "latency_ms": float(lat.p99_ms[a:b + 1].max()), "baseline_ms": base, "causes": []}
            for a, b in zip(starts, ends)]


def build_figure(rec, incidents: list[dict], max_points: int = T.DEFAULT_MAX_POINTS):
    """The timeline figure and the list of track names drawn. Returns (figure or None, drawn)."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    off = rec.wall_offset_ns
    lat = T.latency_series(rec, max_points)
    tracks = T.resource_tracks(rec, max_points)
    names = {t.name for t in tracks}
    panels = [p for p in T.PANELS if (p == "latency" and lat is not None) or any(t.panel == p for t in tracks)]
    if not panels:
        return None, []
    # Two y axes per panel, keyed by (display unit, the track's preferred side): a track goes on an
    # axis with its key, else on one with its unit, else on a free one; a track whose unit has no
    # axis is reachable from the legend only (its numbers would be misread on a foreign axis).
    slots: dict[str, list[tuple[str, str]]] = {"latency": [("ms", "y")]}
    placement: dict[str, tuple[int, bool]] = {}  # track name -> (axis 0/1, hidden)
    ordered = sorted(tracks, key=lambda t: bool(t.meta.get("hidden") or SUPERSEDED.get(t.name) in names))
    for t in ordered:
        unit = UNIT_SCALE.get(t.unit, (1, t.unit))[1]
        hidden = bool(t.meta.get("hidden") or SUPERSEDED.get(t.name) in names)
        ax = slots.setdefault(t.panel, [])
        key = (unit, t.axis)
        same_unit = [i for i, (u, _) in enumerate(ax) if u == unit]
        if key in ax:
            placement[t.name] = (ax.index(key), hidden)
        elif len(ax) < 2 and (not same_unit or (t.axis == "y2" and not hidden)):
            ax.append(key)
            placement[t.name] = (len(ax) - 1, hidden)
        elif same_unit:
            placement[t.name] = (same_unit[0], hidden)
        else:
            placement[t.name] = (1, True)
    axis_units = {p: [u for u, _ in ax] for p, ax in slots.items()}
    heights = [PANEL_HEIGHT.get(p, 210) for p in panels]
    fig = make_subplots(
        rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.045 if len(panels) < 5 else 0.03,
        row_heights=heights, specs=[[{"secondary_y": True}] for _ in panels],
        subplot_titles=[T.panel_title(p, tracks) for p in panels],
    )
    row_of = {p: i + 1 for i, p in enumerate(panels)}
    drawn: list[str] = []
    if lat is not None:
        r = row_of["latency"]
        x = wall_strings(lat.ts_ns, off)
        fig.add_trace(go.Scatter(x=x[lat.ok], y=lat.latency_ms[lat.ok], mode="markers", name="request latency",
                                   legendgroup="latency", marker={"size": 4, "color": "#1f77b4", "opacity": 0.5},
                                   hovertemplate="%{y:.1f} ms<extra>request (end time)</extra>"), row=r, col=1)
        if (~lat.ok).any():
            fig.add_trace(go.Scatter(x=x[~lat.ok], y=lat.latency_ms[~lat.ok], mode="markers",
                                       name="failed request", marker={"size": 6, "color": "#d62728", "symbol": "x"},
                                       hovertemplate="%{y:.1f} ms<extra>failed request</extra>"), row=r, col=1)
        wx = wall_strings(lat.win_ts_ns + lat.window_ns // 2, off)
        win = f"{lat.window_ns / 1e9:g} s"
        fig.add_trace(go.Scatter(x=wx, y=lat.p50_ms, mode="lines", name=f"p50 per {win}",
                                 line={"color": "#2ca02c", "width": 2}), row=r, col=1)
        fig.add_trace(go.Scatter(x=wx, y=lat.p99_ms, mode="lines", name=f"p99 per {win}",
                                 line={"color": "#ff7f0e", "width": 2}), row=r, col=1)
        fig.update_yaxes(title_text="latency (ms)", rangemode="tozero", row=r, col=1, secondary_y=False)
        drawn += ["spans.latency", "spans.p50", "spans.p99"]
    colour_i: dict[str, int] = {}
    for t in tracks:
        r = row_of[t.panel]
        scale, unit = UNIT_SCALE.get(t.unit, (1.0, t.unit))
        slot, hidden = placement[t.name]
        secondary = slot == 1
        y = t.values * scale
        if t.unit == "flag":
            y = np.where(t.values > 0, 100.0, np.nan)
        i = colour_i[t.panel] = colour_i.get(t.panel, -1) + 1
        dash = "dot" if secondary else None
        kw: dict[str, Any] = {"mode": t.mode}
        if t.mode == "markers":
            kw["marker"] = {"size": 7, "symbol": "triangle-up", "color": PALETTE[i % len(PALETTE)]}
        else:
            kw["line"] = {"width": 1.5, "color": PALETTE[i % len(PALETTE)], "dash": dash}
        fig.add_trace(go.Scatter(
            x=wall_strings(t.ts_ns, off), y=y, name=_label(f"{t.label} ({unit})"), legendgroup=t.panel,
            visible="legendonly" if hidden else True,
            hovertemplate=f"%{{y:.3g}} {_label(unit)}<extra>{_label(t.label)}</extra>", **kw,
        ), row=r, col=1, secondary_y=secondary)
        drawn.append(t.name)
    for p in panels:
        if p == "latency":
            continue
        units = axis_units.get(p, [])
        if units:
            fig.update_yaxes(title_text=units[0], rangemode="tozero", row=row_of[p], col=1, secondary_y=False)
        if len(units) > 1:
            fig.update_yaxes(title_text=units[1], rangemode="tozero", showgrid=False, row=row_of[p], col=1,
                             secondary_y=True)
    # Incidents shaded through every row; markers as vertical lines with a label in the top row.
    for n, inc in enumerate(incidents, 1):
        a, b = inc.get("start_ns"), inc.get("end_ns")
        if a is None or b is None:
            continue
        fig.add_vrect(x0=wall_one(int(a), off), x1=wall_one(max(int(b), int(a) + 1), off), row="all", col=1,
                      fillcolor="#f39c12", opacity=0.18, line_width=0, layer="below")
        fig.add_annotation(x=wall_one(int(a), off), y=1.0, xref="x", yref="y domain", text=f"#{n}",
                           showarrow=False, xanchor="left", yanchor="top", font={"color": "#b9770e", "size": 12})
    for m in T.markers(rec):
        x0 = wall_one(m.ts_ns, off)
        fig.add_vline(x=x0, row="all", col=1, line_width=1.5, line_dash="dash",
                      line_color=MARKER_COLOURS.get(m.kind, "#555"))
        fig.add_annotation(x=x0, y=1.0, xref="x", yref="y domain", text=_label(m.label), showarrow=False,
                           textangle=-90, xanchor="right", yanchor="top",
                           font={"color": MARKER_COLOURS.get(m.kind, "#555"), "size": 10})
    fig.update_xaxes(type="date", showspikes=True, spikemode="across", spikethickness=1)
    fig.update_xaxes(title_text="time (UTC)", row=len(panels), col=1)
    fig.update_layout(
        height=sum(heights) + 140, template="plotly_white", hovermode="x unified",
        margin={"l": 70, "r": 70, "t": 40, "b": 50},
        legend={"orientation": "v", "x": 1.06, "y": 1, "font": {"size": 11}, "groupclick": "toggleitem"},
    )
    return fig, drawn


# ----------------------------------------------------------------------------------------------
# The page: plain data for the templates (analysis/templates/), which escape everything
# ----------------------------------------------------------------------------------------------
def _header(rec) -> dict[str, Any]:
    m = rec.manifest
    tgt, host = rec.target, m.get("host") or {}
    off = rec.wall_offset_ns
    cmd = tgt.get("command")
    cmd = " ".join(map(str, cmd)) if isinstance(cmd, list) else (cmd or tgt.get("cmdline") or tgt.get("comm") or "")
    mode = tgt.get("mode", "?")
    what = {"host": "the whole host", "cgroup": f"cgroup {tgt.get('cgroup', '')}"}.get(
        mode, f"pid {tgt.get('pid', tgt.get('root_pid', '?'))}")
    dur = (rec.end_ns - rec.start_ns) / 1e9 if rec.start_ns else m.get("duration_s")
    interval = m.get("interval_ns")
    span_txt = f"{dur:.1f} s" if isinstance(dur, (int, float)) else "? s"
    if isinstance(interval, int) and interval > 0:
        span_txt += f", sampling every {interval / 1e6:g} ms"
    host_parts = [host.get("hostname"), host.get("kernel"), f"{host.get('cpus')} CPUs" if host.get("cpus") else None,
                  fmt_bytes(host.get("mem_total_bytes")) if host.get("mem_total_bytes") else None]
    runq = runq_wait(rec)
    tool = m.get("tool")
    return {
        "what": what, "cmd": cmd, "host": " · ".join(str(x) for x in host_parts if x),
        "start": fmt_wall(rec.start_ns, off), "end": fmt_wall(rec.end_ns, off), "span": span_txt,
        "complete": rec.complete, "stop_reason": m.get("stop_reason"),
        "runq": None if runq is None else {
            "p50": human_seconds(runq["p50_s"]), "p99": human_seconds(runq["p99_s"]),
            "max": human_seconds(runq["max_s"]), "waits": f"{runq['waits']:,.0f}",
            "counted": runq["waits"] > 0},
        "tool": f"{tool.get('name', '')} {tool.get('version', '')}" if tool else None,
    }


def runq_wait(rec) -> dict[str, float | None] | None:
    """Run-queue wait of the target's threads over the whole recording (``sched``), by the same
    histogram and quantile rule as ``top``, ``/metrics`` and the flight triggers. None if not recorded."""
    if not rec.has("sched"):
        return None
    t = rec.table("sched")
    h = log2_sum(t.column("runq_hist"))
    mx = pc.max(t.column("runq_max_ns")).as_py() if t.num_rows else None
    return {"p50_s": log2_quantile(h, 0.5), "p99_s": log2_quantile(h, 0.99),
            "max_s": None if mx is None else mx / 1e9, "waits": float(h.sum())}


def _losses(rec) -> dict[str, Any] | None:
    """Events the probes lost (``probe_stats``), per probe and reason: a gap in the data must be
    visible next to the data."""
    t = rec.table("probe_stats")
    if t.num_rows == 0:
        return None
    g = t.group_by(["probe", "reason"], use_threads=False).aggregate([("events", "sum"), ("lost", "sum")])
    rows = [r for r in g.to_pylist() if (r["lost_sum"] or 0) > 0]
    if not rows:
        return {"handled": f"{pc.sum(t.column('events')).as_py() or 0:,}", "rows": []}
    rows.sort(key=lambda r: -(r["lost_sum"] or 0))
    return {"rows": [{"probe": r["probe"], "reason": r["reason"] or "", "events": fmt_num(int(r["events_sum"] or 0)),
                      "lost": fmt_num(int(r["lost_sum"]))} for r in rows]}


def _coverage(rec, not_checked: list[dict[str, Any]]) -> dict[str, Any]:
    collectors = []
    for c in T.collector_status(rec):
        tabs = ", ".join(f"{t} ({rec.table(t).num_rows:,} rows)" for t in c["tables"] if rec.has(t))
        collectors.append({"name": c["name"], "ok": c["ok"], "detail": c["reason"] or tabs})
    missing = T.missing_signals(rec)
    seen = {mm["signal"] for mm in missing}
    covered = {t.strip() for mm in missing for t in mm.get("tables", "").split(",") if t.strip()}
    for nc in not_checked:
        reason = str(nc.get("reason", ""))
        if any(re.search(rf"\b{re.escape(t)}\b", reason) for t in covered):
            continue  # the same missing table, already listed with what it would have shown
        if nc.get("signal") not in seen:
            missing.append({"signal": nc.get("signal", ""), "reason": nc.get("reason", ""), "loses": "", "tables": ""})
    return {
        "collectors": collectors, "losses": _losses(rec),
        "truncated": ", ".join(f"{k} ({v})" for k, v in rec.truncated.items()) if rec.truncated else None,
        "notes": [str(n) for n in rec.manifest.get("notes") or []],
        "missing": [{"signal": x["signal"], "reason": x["reason"], "loses": x.get("loses", "")} for x in missing],
    }


def _evidence(ev: Any, limit: int = 4) -> list[str]:
    """Evidence of a cause: per signal ``{describe, incident, baseline, ratio, unit}`` (diagnosis'
    shape) as "run-queue wait ×201.9"; scalars as k=v. Strongest ratios first."""
    if not isinstance(ev, dict):
        return [str(ev)]
    sig = [(k, v) for k, v in ev.items() if isinstance(v, dict) and isinstance(v.get("ratio"), (int, float))]
    # What rose, most first (a signal that fell is context, not evidence, unless nothing rose).
    sig.sort(key=lambda kv: -float(kv[1]["ratio"]))
    rose = [kv for kv in sig if float(kv[1]["ratio"]) > 1.0] or sig
    out = [f"{v.get('describe') or k} ×{fmt_num(float(v['ratio']))}" for k, v in rose[:limit]]
    for k, v in ev.items():
        if len(out) >= limit + 2:
            break
        if isinstance(v, dict):
            continue
        out.append(f"{k}={fmt_num(v) if isinstance(v, (int, float)) else json.dumps(v, default=str)[:80]}")
    return out


def _culprits(cs: Any) -> list[Any]:
    """Up to five culprits: dicts with comm, pid, share and the notes after them (or plain text)."""
    if not isinstance(cs, list):
        return []
    out: list[Any] = []
    for c in cs[:5]:
        if not isinstance(c, dict):
            out.append(str(c))
            continue
        share = c.get("share")
        more = []
        if isinstance(c.get("wait_ms"), (int, float)):
            more.append(f"{c['wait_ms']:,.0f} ms wait")
        if c.get("in_target") is False:
            more.append("outside the target")
        if c.get("is_recorder"):
            more.append("the autoglm-trace recorder itself")
        if isinstance(c.get("processes"), int) and c["processes"] > 1:
            more.append(f"{c['processes']} processes")
        out.append({"comm": c.get("comm"), "pid": c.get("pid"), "label": c.get("label"),
                    "share": f" {share * 100:.0f}%" if isinstance(share, (int, float)) and math.isfinite(share) else "",
                    "more": ", ".join(more)})
    return out


def _remainder(c: dict) -> str:
    """The part of the extra wait no listed culprit accounts for ("61% not attributed: ...")."""
    att = c.get("attribution")
    rest = att.get("remainder") if isinstance(att, dict) else None
    if not c.get("culprits") or not isinstance(rest, dict) or not rest.get("summary") or (rest.get("share") or 0) < 0.01:
        return ""
    return str(rest["summary"])


SPLIT_COLOURS = {"on_cpu": "#27ae60", "runq_wait": "#e67e22", "gil_wait": "#8e44ad", "lock_wait": "#c0392b",
                 "sleep": "#95a5a6", "dstate": "#2980b9"}


def _time_split(split: Any) -> dict[str, Any] | None:
    """One bar per incident: the slow requests' time by where it went (analysis/timesplit.py)."""
    if not isinstance(split, dict) or not split.get("parts"):
        return None
    parts = []
    for p in split["parts"]:
        frac = float(p.get("fraction") or 0)
        if frac <= 0:
            continue
        by = "; ".join(f"{b.get('label')} {100 * float(b.get('fraction') or 0):.0f}%" for b in p.get("by") or [])
        parts.append({"width": f"{100 * frac:.2f}", "colour": SPLIT_COLOURS.get(str(p.get("part")), "#bbb"),
                      "pct": f"{100 * frac:.0f}%" if frac >= 0.06 else "",
                      "tip": f"{p.get('describe')} {100 * frac:.0f}% ({fmt_num(p.get('ms'))} ms)" + (f": {by}" if by else "")})
    return {"scope": split.get("scope"), "threads": split.get("threads"), "total_ms": fmt_num(split.get("total_ms")),
            "parts": parts}


def _requests_line(diag: dict) -> str:
    r = diag.get("requests")
    if not isinstance(r, dict) or not r.get("count"):
        return ""
    bits = [f"{r.get('count'):,} requests" if isinstance(r.get("count"), int) else ""]
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        if isinstance(r.get(q), (int, float)):
            bits.append(f"{q[:-3]} {r[q]:,.1f} ms")
    if r.get("failed"):
        bits.append(f"{r['failed']:,} failed")
    if r.get("slow") is not None:
        bits.append(f"{r['slow']:,} slow")
    return " · ".join(b for b in bits if b)


def _engine_line(diag: dict) -> str:
    """The engine's latency over the recording and the scrape interval that bounds its time resolution."""
    e = diag.get("engine")
    if not isinstance(e, dict):
        return ""
    bits = [f"engine: {e.get('engine')}"]
    lat = e.get("latency") if isinstance(e.get("latency"), dict) else {}
    if lat.get("requests"):
        bits.append(f"{lat['requests']:,} requests in {lat.get('metric')}")
        bits += [f"{q[:-3]} {lat[q]:,.1f} ms" for q in ("p50_ms", "p99_ms") if isinstance(lat.get(q), (int, float))]
    if e.get("resolution_note"):
        bits.append(str(e["resolution_note"]))
    return " · ".join(bits)


def _incidents(rec, diag: dict | None, why: str | None, fallback: list[dict]) -> dict[str, Any]:
    off = rec.wall_offset_ns
    if diag is None:
        return {"available": False, "why": why, "fallback": [
            {"from": fmt_wall(x["start_ns"], off), "to": fmt_wall(x["end_ns"], off),
             "p99": fmt_num(x["latency_ms"]), "base": fmt_num(x["baseline_ms"])} for x in fallback]}
    incidents = []
    for inc in diag.get("incidents") or []:
        if not isinstance(inc, dict):
            continue
        a, b = inc.get("start_ns"), inc.get("end_ns")
        when = (f"{fmt_wall(int(a), off)} → {fmt_wall(int(b), off)} ({(int(b) - int(a)) / 1e9:.1f} s)"
                if a is not None and b is not None else f"{inc.get('start', '')} → {inc.get('end', '')}")
        lat = (f" · latency {fmt_num(inc.get('latency_ms'))} ms (baseline {fmt_num(inc.get('baseline_ms'))} ms)"
               if inc.get("latency_ms") is not None else "")
        causes = [{"kind": c.get("kind"), "score": fmt_num(c.get("score")), "summary": c.get("summary", ""),
                   "culprits": _culprits(c.get("culprits")), "remainder": _remainder(c),
                   "evidence": _evidence(c.get("evidence"))}
                  for c in inc.get("causes") or [] if isinstance(c, dict)]
        incidents.append({"title": when + lat, "headline": inc.get("headline"), "causes": causes,
                          "split": _time_split(inc.get("time_split"))})
    findings = []
    for f in diag.get("findings") or []:
        if isinstance(f, dict):
            sev = f.get("severity") or f.get("kind")
            findings.append({"severity": sev, "cls": {"critical": "bad", "warning": "warn"}.get(str(sev), ""),
                             "text": f.get("message") or f.get("text") or f.get("summary") or json.dumps(f, default=str)})
        else:
            findings.append({"severity": None, "cls": "", "text": str(f)})
    w = diag.get("worst")
    worst = w.get("summary") if len(incidents) > 1 and isinstance(w, dict) else None
    return {"available": True, "requests": _requests_line(diag), "engine": _engine_line(diag),
            "worst": worst, "incidents": incidents, "findings": findings}


def _oom(rec, oom: dict | None, why: str | None) -> dict[str, Any]:
    off = rec.wall_offset_ns
    kills = oom.get("kills") if isinstance(oom, dict) else None
    if kills is None:  # no post-mortem: the raw kills, if recorded
        raw = rec.table("oom_kills")
        rows = [{"time": fmt_wall(r["ts_ns"], off), "comm": r["comm"], "pid": r["pid"],
                 "in_target": "yes" if r["in_target"] else "no",
                 "rss": fmt_bytes((r["anon_rss_bytes"] or 0) + (r["file_rss_bytes"] or 0) + (r["shmem_rss_bytes"] or 0)),
                 "memcg": r["memcg"] or "host", "limit": fmt_bytes(r["memcg_limit_bytes"])}
                for r in raw.to_pylist()[:50]]
        return {"why": why, "recorded": rec.has("oom_kills"), "raw": rows, "kills": None}
    rows = []
    for k in kills:
        if not isinstance(k, dict):
            continue
        ts = k.get("ts_ns")
        growth = k.get("growth_bytes_per_s")
        rows.append({
            "time": fmt_wall(int(ts), off) if isinstance(ts, int) else k.get("time"),
            "comm": k.get("comm"), "pid": k.get("pid"), "kind": k.get("kind"),
            "in_target": "yes" if k.get("in_target") else "no", "rss": fmt_bytes(k.get("rss_bytes")),
            "gpu": fmt_bytes(k.get("gpu_bytes")), "limit": fmt_bytes(k.get("limit_bytes")),
            "growth": fmt_bytes(growth) + "/s" if isinstance(growth, (int, float)) else "–",
            "verdict": k.get("verdict"), "verdict_reason": k.get("verdict_reason"),
        })
    return {"why": None, "recorded": True, "raw": None, "kills": rows}


def _alerts(rec) -> list[dict[str, Any]]:
    off = rec.wall_offset_ns
    return [{"time": fmt_wall(r["ts_ns"], off), "kind": r["kind"], "subject": r["subject"], "message": r["message"]}
            for r in rec.table("alerts").slice(0, 50).to_pylist()]


def _preemptors(rec, top: int = 10) -> list[dict[str, Any]]:
    t = rec.table("preemptions")
    if t.num_rows == 0:
        return []
    # Per task (tgid): its comm may change (exec, thread names), so take the last one seen.
    g = t.group_by("preemptor_pid", use_threads=False).aggregate(
        [("count", "sum"), ("wait_ns", "sum"), ("preemptor_comm", "last"), ("preemptor_in_target", "any")])
    g = g.rename_columns({"preemptor_comm_last": "preemptor_comm", "preemptor_in_target_any": "preemptor_in_target"})
    g = g.sort_by([("wait_ns_sum", "descending")]).slice(0, top)
    total = pc.sum(t.column("wait_ns")).as_py() or 0
    rows = []
    for r in g.to_pylist():
        w = r["wait_ns_sum"] or 0
        rows.append({"comm": r["preemptor_comm"], "pid": r["preemptor_pid"],
                     "side": "target" if r["preemptor_in_target"] else "other",
                     "count": fmt_num(int(r["count_sum"] or 0)), "wait_ms": f"{w / 1e6:,.1f}",
                     "share": f"{100 * w / total:.0f}%" if total else "–"})
    return rows


_ENV: jinja2.Environment | None = None


def _wakers(rec, top: int = 10) -> list[dict[str, Any]]:
    """Who ended the target threads' sleep over the whole recording, by the sleep they ended."""
    if not rec.has("wakeups") or not rec.table("wakeups").num_rows:
        return []
    from autoglm_trace.analysis import tree as tree_mod
    from autoglm_trace.analysis import wakers as wakers_mod

    t = wakers_mod.classify(rec)
    if t is None or not t.num_rows:
        return []
    tree = tree_mod.load(rec)
    g = t.group_by(["waker_pid", "waker_tid", "class"], use_threads=False).aggregate(
        [("sleep_ns", "sum"), ("count", "sum"), ("waker_comm", "last")])
    g = g.sort_by([("sleep_ns_sum", "descending")]).slice(0, top)
    total = pc.sum(t.column("sleep_ns")).as_py() or 0
    words = {"gil": "GIL hand-over", "lock": "lock / condition (held)", "handoff": "hand-off (queue, answer)",
             "other": "timer / network / outside"}
    rows = []
    for r in g.to_pylist():
        w = r["sleep_ns_sum"] or 0
        who = (tree_mod.describe(tree, {"pid": r["waker_pid"], "tid": r["waker_tid"], "comm": r["waker_comm_last"]})
               ["label"] if r["waker_tid"] else (r["waker_comm_last"] or "?"))
        rows.append({"who": who, "cls": words.get(r["class"], r["class"]), "count": fmt_num(int(r["count_sum"] or 0)),
                     "ms": f"{w / 1e6:,.1f}", "share": f"{100 * w / total:.0f}%" if total else "–"})
    return rows


def _templates() -> jinja2.Environment:
    """The report's Jinja environment: templates beside this module, every value autoescaped."""
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
    return _ENV


def render_html(rec, diagnosis: dict | None = None, oom: dict | None = None,
                max_points: int = T.DEFAULT_MAX_POINTS) -> str:
    """The whole report as one HTML string (plotly.js inline), from analysis/templates/report.html.j2."""
    why = None
    if diagnosis is None:
        diagnosis, why = _call("diagnosis", "diagnose", rec)
    oom_why = None
    if oom is None and isinstance((diagnosis or {}).get("oom"), list):
        oom = {"kills": diagnosis["oom"]}  # diagnose() already ran the post-mortem
    if oom is None:
        oom, oom_why = _call("oom", "oom_postmortem", rec)
    lat = T.latency_series(rec, max_points)
    incidents = [i for i in (diagnosis or {}).get("incidents") or [] if isinstance(i, dict)]
    fallback = simple_incidents(lat) if diagnosis is None else []
    fig, _ = build_figure(rec, incidents or fallback, max_points)
    not_checked = [x for x in (diagnosis or {}).get("not_checked") or [] if isinstance(x, dict)]
    # plotly's own HTML (its JSON embedding escapes "</script>"; recording text in labels is escaped
    # in build_figure): the one fragment the template does not escape.
    figure = None if fig is None else Markup(fig.to_html(
        full_html=False, include_plotlyjs=True, include_mathjax=False, div_id="timeline",
        config={"displaylogo": False, "responsive": True,
                "toImageButtonOptions": {"filename": "autoglm-trace-timeline"}}))
    return _templates().get_template("report.html.j2").render(
        title=rec.target.get("comm") or rec.target.get("mode") or "recording",
        header=_header(rec), incidents=_incidents(rec, diagnosis, why, fallback), figure=figure,
        oom=_oom(rec, oom, oom_why), preemptors=_preemptors(rec), wakers=_wakers(rec), alerts=_alerts(rec),
        coverage=_coverage(rec, not_checked), path=str(rec.path),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
    )


def write_report(rec, path: str | Path, diagnosis: dict | None = None, oom: dict | None = None,
                 max_points: int = T.DEFAULT_MAX_POINTS) -> None:
    """Render ``rec`` (a Recording) into one self-contained HTML file at ``path``. ``diagnosis`` /
    ``oom`` default to ``analysis.diagnosis.diagnose(rec)`` / ``analysis.oom.oom_postmortem(rec)``
    when those modules exist; when they do not (or fail) the report says so and carries on."""
    with atomic_file(path) as f:
        f.write(render_html(rec, diagnosis, oom, max_points).encode("utf-8"))
