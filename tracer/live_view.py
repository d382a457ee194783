"""The live view of ``autoglm-trace top`` and ``record --live``.

``render(source)`` draws one frame from anything with the read API of ``analysis.reader.Recording``
(``table(name)``, ``has(name)``, ``manifest``, ``start_ns``, ``end_ns``): in practice
``analysis.live.LiveRecording`` over the recorder's in-memory ring, and in tests a plain recording.
It never talks to the probes: every number comes from the recorded tables, computed over the last
``window_s`` seconds, so what ``top`` shows is exactly what ``analyze`` will later read.

``compute(source, now_ns, window_s)`` does the arithmetic (numpy over the window's rows, no
per-event Python) and returns a ``Frame`` of plain numbers; ``render`` only lays it out. Both are
pure, so a test renders a frame to text with ``Console(record=True)``.

``LiveView`` drives rich.live.Live at ~2 Hz on rich's own refresh thread (rendering never runs on
the recorder's sampling thread); ``update(recorder)`` is the recorder's ``on_tick`` hook and only
stores a reference.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from autoglm_trace.printable import printable
from autoglm_trace.signals import column as _col
from autoglm_trace.signals import (
    human_bytes,
    human_seconds,
    log2_quantile,
    log2_sum,
    throttle_labels,
    window_rate,
)

NS = 1_000_000_000
DEFAULT_WINDOW_S = 10.0

# ----------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------
def _window(t: pa.Table, since_ns: int, col: str = "ts_ns") -> pa.Table:
    """Rows with ``col >= since_ns``. The ring appends in time order, so a binary search and a
    zero-copy slice usually do (filtering would copy every list histogram in the window)."""
    if t.num_rows == 0:
        return t
    ts = t.column(col).to_numpy()
    if ts.size < 2 or bool((ts[1:] >= ts[:-1]).all()):
        return t.slice(int(np.searchsorted(ts, since_ns, side="left")))
    return t.filter(pc.greater_equal(t.column(col), since_ns))


def _in_target(t: pa.Table, col: str = "in_target") -> pa.Table:
    if t.num_rows == 0:
        return t
    return t.filter(pc.fill_null(t.column(col), False))


def _per_key_delta(ts: np.ndarray, key: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per key: (last - first value, last - first time) over the rows given (gauges such as RSS)."""
    if ts.size == 0:
        return np.empty(0), np.empty(0)
    order = np.lexsort((ts, key))
    k, t, x = key[order], ts[order], v[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    last = np.r_[first[1:] - 1, k.size - 1]
    return x[last] - x[first], (t[last] - t[first]).astype(np.float64)


def _counter_rate(t: pa.Table, column: str) -> float | None:
    """Sum over pids of each pid's counter rate (per second) across the window."""
    if t.num_rows < 2:
        return None
    return window_rate(_col(t, "ts_ns", np.int64), _col(t, column), _col(t, "pid", np.int64))


@dataclass
class Frame:
    """One frame's numbers (None: not measured -- the source table is absent or empty)."""

    now_ns: int
    window_s: float
    span_s: float  # seconds of data the rates are computed over (<= window_s)
    target: str = ""
    spans: list[dict[str, Any]] = field(default_factory=list)
    runq_p50_s: float | None = None
    runq_p99_s: float | None = None
    runq_max_s: float | None = None
    switches_invol_per_s: float | None = None
    switches_vol_per_s: float | None = None
    switches_source: str = ""
    oncpu_frac: float | None = None
    dstate_frac: float | None = None
    preemptors: list[dict[str, Any]] = field(default_factory=list)
    faults_per_s: float | None = None
    major_faults_per_s: float | None = None
    faults_source: str = ""
    reclaim_stalls: int | None = None
    reclaim_ms: float | None = None
    reclaim_max_ms: float | None = None
    kswapd_wakes: int | None = None
    oom_kills: int | None = None
    last_oom: str | None = None
    rss_total: float | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    io: dict[str, Any] | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    etas: list[dict[str, Any]] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    lost_total: int = 0
    ring_dropped: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    engine: dict[str, Any] | None = None  # the serving engine's own latency and state (--scrape)


def _target_label(manifest: dict[str, Any]) -> str:
    t = manifest.get("target") or {}
    mode = t.get("mode")
    if mode in ("command", "pid"):
        return f"pid {t.get('pid')} ({t.get('comm') or '?'})"
    if mode == "cgroup":
        return f"cgroup {t.get('cgroup')}"
    if mode == "host":
        return "host"
    return "?"


def compute(source: Any, now_ns: int | None = None, window_s: float = DEFAULT_WINDOW_S) -> Frame:
    """The numbers of one frame: the last ``window_s`` seconds of ``source`` before ``now_ns``
    (default: the source's newest data)."""
    if now_ns is None:
        now_ns = int(source.end_ns)
    win_ns = int(window_s * NS)
    since = now_ns - win_ns
    start = int(getattr(source, "start_ns", 0) or 0)
    span_s = max((now_ns - max(since, start)) / NS, 1e-3)
    manifest = getattr(source, "manifest", {}) or {}
    f = Frame(now_ns=now_ns, window_s=window_s, span_s=span_s, target=_target_label(manifest))
    f.unavailable = {name: str(c.get("reason", "")) for name, c in (manifest.get("collectors") or {}).items()
                     if isinstance(c, dict) and c.get("status") not in (None, "ok")}

    names: dict[int, str] = {}
    procs = source.table("processes")
    if procs.num_rows:
        for p, c in zip(_col(procs, "pid", np.int64).tolist(), procs.column("comm").to_pylist()):
            names[p] = c or "?"

    _spans(f, _window(source.table("spans"), since, "end_ns"))
    _engine(f, source, since)
    _sched(f, source, since, names)
    _memory(f, source, since, names)
    _block_io(f, _window(source.table("block_io"), since))
    _gpu(f, source)
    _alerts(f, source.table("alerts"), now_ns)
    _lost(f, source, since)
    return f


def _spans(f: Frame, t: pa.Table) -> None:
    if t.num_rows == 0:
        return
    lat = (_col(t, "end_ns", np.int64) - _col(t, "ts_ns", np.int64)) / NS
    ok = pc.fill_null(t.column("ok"), True).to_numpy(zero_copy_only=False).astype(bool)
    name = np.asarray(pc.fill_null(t.column("name"), "").to_pylist(), dtype=object)
    groups = [("all", np.ones(lat.size, bool))]
    uniq, counts = np.unique(name, return_counts=True)
    if uniq.size > 1:
        for n in uniq[np.argsort(-counts)][:4]:
            groups.append((str(n) or "(unnamed)", name == n))
    elif uniq.size == 1:
        groups = [(str(uniq[0]) or "(unnamed)", np.ones(lat.size, bool))]
    for label, m in groups:
        x = lat[m]
        f.spans.append({
            "name": label, "count": int(x.size), "rate": x.size / f.span_s,
            "p50": float(np.quantile(x, 0.5)), "p99": float(np.quantile(x, 0.99)), "max": float(x.max()),
            "errors": int((~ok[m]).sum()),
        })


ENGINE_PHASES = (("e2e", "end-to-end"), ("ttft", "first token"), ("itl", "inter-token"), ("queue", "queue"))


def _engine(f: Frame, source: Any, since: int) -> None:
    """The engine's latency over the scrape windows that ended inside the window -- one
    ``histogram_quantile`` over their summed bucket increases (``EngineLatency.over``, what
    ``analyze`` and the report use) -- and its KV-cache usage, running / waiting requests and
    preemptions."""
    from autoglm_trace.analysis import engine as engine_mod
    from autoglm_trace.analysis.timeline import counter_deltas

    if not source.has("scrape_samples"):
        return
    eng = engine_mod.load_engine(source)
    if eng is None:
        return
    phases = []
    for key, words in ENGINE_PHASES:
        ph = eng.phases.get(key)
        if ph is None:
            continue
        o = ph.over(ph.end > since)
        if o["count"]:
            phases.append({"phase": words, "metric": ph.metric, "count": int(o["count"]), "p50": o["p50_s"],
                           "p99": o["p99_s"], "mean": o["mean_s"]})
    state: dict[str, Any] = {}
    for role in ("kv_cache_usage", "running", "waiting"):
        ts, v = engine_mod.gauge(eng, role)
        m = (ts > since) & np.isfinite(v)
        if m.any():
            state[role] = {"last": float(v[m][-1]), "max": float(v[m].max())}
    ts, v = engine_mod.gauge(eng, "preemptions")
    if len(ts) >= 2:
        dts, d = counter_deltas(ts, np.zeros(len(ts), np.int64), v)
        state["preemptions"] = {"last": float(d[dts > since].sum())}
    f.engine = {"engine": eng.engine, "interval_s": eng.interval_s, "phases": phases, "state": state}


def _sched(f: Frame, source: Any, since: int, names: dict[int, str]) -> None:
    sched = _window(source.table("sched"), since)
    if source.has("sched"):
        h = log2_sum(sched.column("runq_hist"))
        f.runq_p50_s = log2_quantile(h, 0.5)
        f.runq_p99_s = log2_quantile(h, 0.99)
        if sched.num_rows:
            f.runq_max_s = float(np.nanmax(_col(sched, "runq_max_ns"))) / NS
            f.switches_invol_per_s = float(np.nansum(_col(sched, "switches_involuntary"))) / f.span_s
            f.switches_vol_per_s = float(np.nansum(_col(sched, "switches_voluntary"))) / f.span_s
            f.oncpu_frac = float(np.nansum(_col(sched, "oncpu_ns"))) / NS / f.span_s
            f.dstate_frac = float(np.nansum(_col(sched, "offcpu_dstate_ns"))) / NS / f.span_s
        else:
            f.switches_invol_per_s = f.switches_vol_per_s = 0.0
        f.switches_source = "kernel"
    if f.switches_invol_per_s is None:
        ps = _window(source.table("proc_samples"), since)
        f.switches_invol_per_s = _counter_rate(ps, "ctx_involuntary")
        f.switches_vol_per_s = _counter_rate(ps, "ctx_voluntary")
        f.switches_source = "/proc"
    pre = _window(source.table("preemptions"), since)
    if pre.num_rows:
        g = pre.group_by(["preemptor_pid", "preemptor_comm"]).aggregate(
            [("count", "sum"), ("wait_ns", "sum"), ("preemptor_in_target", "max")])
        g = g.sort_by([("wait_ns_sum", "descending"), ("count_sum", "descending")])
        for r in g.slice(0, 5).to_pylist():
            f.preemptors.append({
                "pid": r["preemptor_pid"], "comm": r["preemptor_comm"] or "?",
                "count": int(r["count_sum"] or 0), "wait_s": (r["wait_ns_sum"] or 0) / NS,
                "in_target": bool(r["preemptor_in_target_max"]),
            })


def _memory(f: Frame, source: Any, since: int, names: dict[int, str]) -> None:
    faults = _window(source.table("faults"), since)
    if source.has("faults"):
        f.faults_per_s = float(np.nansum(_col(faults, "faults"))) / f.span_s if faults.num_rows else 0.0
        f.major_faults_per_s = float(np.nansum(_col(faults, "major"))) / f.span_s if faults.num_rows else 0.0
        f.faults_source = "kernel"
    ps = _window(source.table("proc_samples"), since)
    if f.faults_per_s is None and ps.num_rows:
        minor = _counter_rate(ps, "minflt")
        major = _counter_rate(ps, "majflt")
        f.faults_per_s = None if minor is None else minor + (major or 0.0)
        f.major_faults_per_s = major
        f.faults_source = "/proc"
    if ps.num_rows:
        ts = _col(ps, "ts_ns", np.int64)
        latest = ps.filter(pc.equal(ps.column("ts_ns"), int(ts.max())))
        pid = _col(latest, "pid", np.int64)
        rss = _col(latest, "rss_bytes")
        f.rss_total = float(np.nansum(rss))
        # Growth per pid over the window (bytes/s), from first and last sample of each pid.
        dv, dt = _per_key_delta(ts, _col(ps, "pid", np.int64), _col(ps, "rss_bytes"))
        upid = np.unique(_col(ps, "pid", np.int64))
        growth = {int(p): (float(d) / t * NS if t > 0 else 0.0) for p, d, t in zip(upid, dv, dt)}
        order = np.argsort(-np.nan_to_num(rss))[:5]
        for i in order:
            p = int(pid[i])
            f.processes.append({"pid": p, "comm": names.get(p, "?"), "rss": float(rss[i]),
                                "growth": growth.get(p, 0.0)})
    if source.has("reclaim"):
        rc = _window(source.table("reclaim"), since)
        if rc.num_rows:
            wake = pc.equal(pc.fill_null(rc.column("kind"), ""), "kswapd_wake")
            f.kswapd_wakes = int(pc.sum(pc.cast(wake, pa.int64())).as_py() or 0)
            st = rc.filter(pc.invert(wake))
            d = _col(st, "duration_ns")
            f.reclaim_stalls = int(st.num_rows)
            f.reclaim_ms = float(np.nansum(d)) / 1e6
            f.reclaim_max_ms = float(np.nanmax(d)) / 1e6 if d.size else 0.0
        else:
            f.reclaim_stalls, f.reclaim_ms, f.reclaim_max_ms, f.kswapd_wakes = 0, 0.0, 0.0, 0
    if source.has("oom_kills"):
        oom = source.table("oom_kills")
        f.oom_kills = int(oom.num_rows)
        if oom.num_rows:
            i = int(np.argmax(_col(oom, "ts_ns", np.int64)))
            r = oom.slice(i, 1).to_pylist()[0]
            ago = (f.now_ns - r["ts_ns"]) / NS
            f.last_oom = f"{r['comm']} ({r['pid']}) {ago:.0f} s ago" + (" [target]" if r.get("in_target") else "")


def _block_io(f: Frame, t: pa.Table) -> None:
    if t.num_rows == 0:
        return
    out: dict[str, Any] = {}
    for label, part in (("target", _in_target(t)), ("all", t)):
        h = log2_sum(part.column("lat_hist"))
        out[label] = {
            "iops": float(np.nansum(_col(part, "count"))) / f.span_s if part.num_rows else 0.0,
            "bytes_per_s": float(np.nansum(_col(part, "bytes"))) / f.span_s if part.num_rows else 0.0,
            "p99_s": log2_quantile(h, 0.99),
            "max_s": float(np.nanmax(_col(part, "lat_max_ns"))) / NS if part.num_rows else None,
        }
    f.io = out


def _gpu(f: Frame, source: Any) -> None:
    g = source.table("gpu_devices")
    if g.num_rows == 0:
        return
    ts = _col(g, "ts_ns", np.int64)
    gpu = _col(g, "gpu", np.int64)
    rev = np.argsort(ts, kind="stable")[::-1]
    ug, idx = np.unique(gpu[rev], return_index=True)
    rows = g.take(pa.array(rev[idx])).to_pylist()
    for r in rows:
        mask = r.get("clocks_event_reasons") or 0
        f.gpus.append({
            "gpu": r["gpu"], "used": r["mem_used_bytes"], "total": r["mem_total_bytes"],
            "util": r["util_gpu_pct"], "sm_mhz": r["sm_clock_mhz"], "mem_mhz": r["mem_clock_mhz"],
            "power_w": None if r["power_mw"] is None else r["power_mw"] / 1000,
            "limit_w": None if r["power_limit_mw"] is None else r["power_limit_mw"] / 1000,
            "temp": r["temp_c"],
            "throttle": throttle_labels(mask),
        })


def _alerts(f: Frame, t: pa.Table, now_ns: int) -> None:
    if t.num_rows == 0:
        return
    kind = pc.fill_null(t.column("kind"), "")
    m = pc.or_(pc.equal(kind, "memory_growth"), pc.equal(kind, "gpu_memory_growth"))
    a = t.filter(m)
    if a.num_rows == 0:
        return
    a = a.sort_by([("ts_ns", "descending")])
    seen: set[tuple[str, str]] = set()
    for r in a.to_pylist():  # alerts are rare (rate-limited per subject)
        key = (r["kind"], r["subject"] or "")
        if key in seen:
            continue
        seen.add(key)
        f.etas.append({"kind": r["kind"], "subject": r["subject"] or "", "eta_s": r["eta_s"],
                       "message": r["message"] or "", "age_s": (now_ns - r["ts_ns"]) / NS})


def _lost(f: Frame, source: Any, since: int) -> None:
    ps = source.table("probe_stats")
    if ps.num_rows:
        f.lost_total = int(np.nansum(_col(ps, "lost")))
        w = _window(ps, since)
        if w.num_rows:
            g = w.group_by("probe").aggregate([("lost", "sum"), ("events", "sum")]).sort_by("probe")
            for r in g.to_pylist():
                f.lost.append({"probe": r["probe"], "lost": int(r["lost_sum"] or 0),
                               "events": int(r["events_sum"] or 0)})
    ring = getattr(source, "ring", None)
    if ring is not None and hasattr(ring, "stats"):
        try:
            f.ring_dropped = int(ring.stats().get("dropped_rows", 0))
        except Exception:  # noqa: BLE001 - a display detail
            pass


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
fmt_s = human_seconds


def fmt_rate(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.1f}M/s"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k/s"
    return f"{v:.0f}/s" if v >= 10 else f"{v:.1f}/s"


def fmt_eta(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    if v <= 0:
        return "FULL"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h"


def _kv(rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="dim")
    t.add_column()
    for k, v in rows:
        t.add_row(Text(printable(k)), Text(printable(v)))  # values carry comms: never markup
    return t


def _engine_body(e: dict[str, Any]) -> RenderableType:
    head = Text(printable(f"engine {e['engine']} (its own histograms, scraped every {e['interval_s']:.3g} s: "
                          "the time resolution)"), style="dim")
    parts: list[RenderableType] = [head]
    if e["phases"]:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
        for c in ("phase", "n", "p50", "p99", "mean"):
            t.add_column(c, justify="left" if c == "phase" else "right", no_wrap=True)
        for p in e["phases"]:
            t.add_row(Text(printable(p["phase"])), str(p["count"]), fmt_s(p["p50"]), fmt_s(p["p99"]), fmt_s(p["mean"]))
        parts.append(t)
    st = e["state"]
    bits = []
    if "kv_cache_usage" in st:
        bits.append(f"KV cache {st['kv_cache_usage']['last']:.0%} (max {st['kv_cache_usage']['max']:.0%})")
    for role in ("running", "waiting"):
        if role in st:
            bits.append(f"{role} {st[role]['last']:.0f} (max {st[role]['max']:.0f})")
    if "preemptions" in st:
        bits.append(f"preemptions {st['preemptions']['last']:.0f}")
    if bits:
        parts.append(Text(printable(" · ".join(bits))))
    return Group(*parts)


def _requests_panel(f: Frame) -> Panel:
    body = _spans_body(f)
    if f.engine is not None:
        body = Group(body, _engine_body(f.engine)) if f.spans else _engine_body(f.engine)
    return Panel(body, title="Request latency", border_style="cyan")


def _spans_body(f: Frame) -> RenderableType:
    if not f.spans:
        body: RenderableType = Text("no spans in the window (span API, --probe URL or --latency-log)", style="dim")
    else:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
        for c in ("name", "n", "rate", "p50", "p99", "max", "err"):
            t.add_column(c, justify="left" if c == "name" else "right", no_wrap=True)
        for s in f.spans:
            t.add_row(Text(printable(s["name"])), str(s["count"]), fmt_rate(s["rate"]), fmt_s(s["p50"]), fmt_s(s["p99"]),
                      fmt_s(s["max"]), Text(str(s["errors"]), style="red" if s["errors"] else ""))
        body = t
    return body


def _cpu_panel(f: Frame) -> Panel:
    src = f" ({f.switches_source})" if f.switches_source else ""
    rows = [
        ("run-queue p50 / p99", f"{fmt_s(f.runq_p50_s)} / {fmt_s(f.runq_p99_s)}" if f.runq_p99_s is not None
         else ("-" if f.runq_p50_s is None else fmt_s(f.runq_p50_s))),
        ("run-queue max", fmt_s(f.runq_max_s)),
        (f"involuntary sw{src}", fmt_rate(f.switches_invol_per_s)),
        (f"voluntary sw{src}", fmt_rate(f.switches_vol_per_s)),
        ("on-CPU", "-" if f.oncpu_frac is None else f"{f.oncpu_frac:.2f} cores"),
        ("D-state", "-" if f.dstate_frac is None else f"{f.dstate_frac * 1e3:.1f} ms/s"),
    ]
    parts: list[RenderableType] = [_kv(rows)]
    if f.preemptors:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True, title="top preemptors", title_style="dim")
        for c in ("comm", "pid", "count", "wait"):
            t.add_column(c, justify="left" if c == "comm" else "right", no_wrap=True)
        for p in f.preemptors:
            t.add_row(Text(printable(p["comm"]) + (" *" if p["in_target"] else "")), str(p["pid"]), str(p["count"]),
                      fmt_s(p["wait_s"]))
        parts.append(t)
    return Panel(Group(*parts), title="CPU / scheduler", border_style="green")


def _memory_panel(f: Frame) -> Panel:
    fsrc = f" ({f.faults_source})" if f.faults_source else ""
    rows = [
        ("RSS (tree)", human_bytes(f.rss_total)),
        (f"page faults{fsrc}", f"{fmt_rate(f.faults_per_s)}  major {fmt_rate(f.major_faults_per_s)}"),
        ("reclaim stalls", "-" if f.reclaim_stalls is None else
         f"{f.reclaim_stalls}  {f.reclaim_ms:.1f} ms (max {f.reclaim_max_ms:.1f} ms)  kswapd {f.kswapd_wakes}"),
        ("OOM kills", "-" if f.oom_kills is None else
         (str(f.oom_kills) + (f"  last {f.last_oom}" if f.last_oom else ""))),
    ]
    for e in f.etas:
        if e["kind"] == "memory_growth":
            rows.append((f"time to full {e['subject']}", f"{fmt_eta(e['eta_s'])}  ({e['age_s']:.0f} s ago)"))
    parts: list[RenderableType] = [_kv(rows)]
    if f.processes:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
        for c in ("pid", "comm", "rss", "growth"):
            t.add_column(c, justify="left" if c == "comm" else "right", no_wrap=True)
        for p in f.processes:
            t.add_row(str(p["pid"]), Text(printable(p["comm"])), human_bytes(p["rss"]), human_bytes(p["growth"]) + "/s")
        parts.append(t)
    return Panel(Group(*parts), title="Memory", border_style="magenta")


def _io_panel(f: Frame) -> Panel:
    if f.io is None:
        return Panel(Text("no block I/O in the window (or kernel probes off)", style="dim"), title="Block I/O",
                     border_style="yellow")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    for c in ("issuer", "req", "bytes", "p99", "max"):
        t.add_column(c, justify="left" if c == "issuer" else "right", no_wrap=True)
    for label in ("target", "all"):
        d = f.io[label]
        t.add_row(label, fmt_rate(d["iops"]), human_bytes(d["bytes_per_s"]) + "/s", fmt_s(d["p99_s"]),
                  fmt_s(d["max_s"]))
    return Panel(t, title="Block I/O", border_style="yellow")


def _gpu_panel(f: Frame) -> Panel:
    if not f.gpus:
        reason = f.unavailable.get("gpu")
        return Panel(Text(f"no GPU samples{': ' + reason if reason else ''}", style="dim"), title="GPU",
                     border_style="blue")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    for c in ("gpu", "memory", "util", "SM clk", "power", "temp", "throttle"):
        # Only the throttle reasons may wrap: numbers cut short would mislead.
        t.add_column(c, justify="left" if c == "throttle" else "right", no_wrap=c != "throttle",
                     min_width=len(c))
    for g in f.gpus:
        mem = f"{human_bytes(g['used'])} / {human_bytes(g['total'])}" if g["total"] else human_bytes(g["used"])
        power = "-" if g["power_w"] is None else (
            f"{g['power_w']:.0f}/{g['limit_w']:.0f} W" if g["limit_w"] else f"{g['power_w']:.0f} W")
        t.add_row(str(g["gpu"]), mem, "-" if g["util"] is None else f"{g['util']:.0f}%",
                  "-" if g["sm_mhz"] is None else f"{g['sm_mhz']} MHz", power,
                  "-" if g["temp"] is None else f"{g['temp']} C",
                  Text(", ".join(g["throttle"]) or "none", style="bold red" if g["throttle"] else "dim"))
    parts: list[RenderableType] = [t]
    etas = [e for e in f.etas if e["kind"] == "gpu_memory_growth"]
    if etas:
        parts.append(_kv([(f"time to full {e['subject']}", f"{fmt_eta(e['eta_s'])}  ({e['age_s']:.0f} s ago)")
                          for e in etas]))
    return Panel(Group(*parts), title="GPU", border_style="blue")


def _lost_panel(f: Frame) -> Panel:
    style = "bold red" if f.lost_total or f.ring_dropped else "green"
    rows = [("lost (all)", Text(str(f.lost_total), style=style).plain)]
    for r in f.lost:
        rows.append((r["probe"], f"lost {r['lost']}  of {r['events']} events"))
    if f.ring_dropped:
        rows.append(("ring dropped rows", str(f.ring_dropped)))
    for name, reason in sorted(f.unavailable.items()):
        rows.append((name, f"off: {reason[:60]}"))
    return Panel(_kv(rows), title="Lost events / collectors", border_style=style)


def render(source: Any, now_ns: int | None = None, window_s: float = DEFAULT_WINDOW_S,
           header: str | None = None) -> RenderableType:
    """One frame of the live view from a source with the Recording read API."""
    f = compute(source, now_ns, window_s)
    return render_frame(f, header)


def render_frame(f: Frame, header: str | None = None) -> RenderableType:
    title = Text()
    title.append("autoglm-trace top ", style="bold")
    title.append(f"{printable(f.target)}  ", style="bold cyan")
    title.append(f"window {f.window_s:.0f} s  ", style="dim")
    if header:
        title.append(printable(header), style="dim")
    return _Layout(title, [_cpu_panel(f), _memory_panel(f), _io_panel(f), _lost_panel(f)],
                   _requests_panel(f), _gpu_panel(f))


class _Layout:
    """Requests and GPUs span the full width (their tables have the most columns); the four other
    panels go two per row on a wide terminal and one per row below ``TWO_COLUMNS_MIN``."""

    TWO_COLUMNS_MIN = 110

    def __init__(self, title: Text, pairs: list[Panel], top: Panel, bottom: Panel) -> None:
        self.title, self.pairs, self.top, self.bottom = title, pairs, top, bottom

    def __rich_console__(self, console: Console, options: Any) -> Any:
        if options.max_width >= self.TWO_COLUMNS_MIN:
            grid = Table.grid(expand=True, padding=(0, 1))
            grid.add_column(ratio=1)
            grid.add_column(ratio=1)
            for i in range(0, len(self.pairs), 2):
                grid.add_row(*self.pairs[i:i + 2])
            middle: list[RenderableType] = [grid]
        else:
            middle = list(self.pairs)
        yield Group(self.title, self.top, *middle, self.bottom)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
class LiveView:
    """Refresh ``render`` at ``refresh_hz`` with rich.live.Live.

    Give it a ``source`` directly, or a ``ring`` (tracer.ring.RingSink) and let ``update(recorder)``
    -- the recorder's ``on_tick`` -- wrap it in a LiveRecording once the recorder's manifest exists.
    """

    def __init__(self, source: Any = None, ring: Any = None, window_s: float = DEFAULT_WINDOW_S,
                 refresh_hz: float = 2.0, console: Console | None = None, screen: bool = False,
                 header: str | None = None) -> None:
        self.source = source
        self.ring = ring
        self.window_s = window_s
        self.refresh_hz = refresh_hz
        self.console = console or Console()
        self.screen = screen
        self.header = header
        self.recorder: Any = None
        self._live: Live | None = None
        self._lock = threading.Lock()
        self.frames = 0
        self.last_error: str | None = None

    def update(self, recorder: Any) -> None:
        """The recorder's on_tick: remember it; build the live source on the first tick."""
        self.recorder = recorder
        if self.source is None and self.ring is not None and getattr(recorder, "manifest", None) is not None:
            from autoglm_trace.analysis.live import LiveRecording

            with self._lock:
                if self.source is None:
                    self.source = LiveRecording(self.ring, recorder.manifest)

    def _header(self) -> str:
        parts = []
        rec = self.recorder
        if rec is not None and getattr(rec, "started_ns", 0):
            parts.append(f"t+{(time.monotonic_ns() - rec.started_ns) / NS:.0f} s")
        if self.header:
            parts.append(self.header)
        notes = rec.ctx.notes if rec is not None and getattr(rec, "ctx", None) else []
        if notes:
            parts.append(f"! {notes[-1][:90]}")
        return "  ".join(parts)

    def frame(self) -> RenderableType:
        if self.source is None:
            return Text("autoglm-trace: starting...", style="dim")
        try:
            r = render(self.source, time.monotonic_ns(), self.window_s, self._header())
            self.frames += 1
            return r
        except Exception as e:  # noqa: BLE001 - a broken frame must not kill the refresh thread
            self.last_error = f"{type(e).__name__}: {e}"
            return Text(f"live view error: {self.last_error}", style="red")

    def start(self) -> None:
        self._live = Live(get_renderable=self.frame, console=self.console, screen=self.screen,
                          refresh_per_second=self.refresh_hz, transient=True, redirect_stderr=False)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if self.source is not None:  # leave the last frame on the terminal (the live one was transient)
                self.console.print(self.frame())


def ring_for_window(window_s: float) -> Any:
    """The in-memory ring a live view reads: a few windows of every table, at most 64 MiB."""
    from autoglm_trace.tracer.ring import RingSink

    return RingSink(duration_ns=int(max(30.0, 3 * window_s) * NS), max_bytes=64 << 20)


def side_outputs(live: bool, prometheus: str | None, window_s: float = DEFAULT_WINDOW_S,
                 console: Console | None = None) -> tuple[list[Any], LiveView | None, Any]:
    """The sinks and live view behind ``--live`` / ``--prometheus [ADDR:]PORT`` (record and top):
    returns (sinks for the Recorder, the LiveView or None, the started exporter or None). The
    exporter listens before the recording starts, so a bad address fails fast as a UsageError."""
    sinks: list[Any] = []
    exporter = None
    header = None
    if prometheus:
        from autoglm_trace.tracer.exporter import PrometheusExporter, parse_listen

        addr, port = parse_listen(prometheus)
        exporter = PrometheusExporter().start(addr, port)
        sinks.append(exporter)
        header = exporter.url
        Console(stderr=True).print(f"autoglm-trace: serving metrics on {exporter.url}", style="dim",
                                   highlight=False)
    view = None
    if live:
        ring = ring_for_window(window_s)
        sinks.append(ring)
        console = console or Console(stderr=True)
        view = LiveView(ring=ring, window_s=window_s, console=console, screen=console.is_terminal,
                        header=header)
    return sinks, view, exporter
