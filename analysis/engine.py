"""The serving engine's own metrics (``record --scrape``): request latency without spans, its phases,
and the engine's state (KV cache, running / waiting requests, preemptions) as context signals.

A vLLM or SGLang server cannot be given spans, but it serves latency histograms. Their windowed
quantiles (``serving_metrics.scrape_windows``: ``histogram_quantile`` over the increase between two
scrapes) are the request latency of a recording that has no spans and no latency log: the series
the anomaly shapes (``analysis.shapes``) and the spike test run on, and the "extra latency" an
incident's causes are measured against. The scrape interval is the finest time resolution: a
10-second scrape cannot place a 2-second stall, and the output says so.

Per incident, the phases (queue time, time to first token, prefill, inter-token latency, decode)
are compared with the baseline: if the queue time grew by most of the extra latency, requests
*waited in the engine's queue* (more load than the engine keeps up with); if inter-token latency or
prefill / decode time grew, requests *ran slower* once scheduled (contention for CPU, GPU, memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from autoglm_trace.analysis import serving_metrics as sm
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import Signal, Timeline, col, counter_deltas

SPIKE_Z = 4.0
SPIKE_RATIO = 1.4
MIN_COUNT = 1  # requests a window needs to carry a latency


@dataclass
class EngineLatency:
    """One latency histogram's scrape windows as numpy arrays (seconds)."""

    key: str  # e2e | queue | ttft | prefill | itl | decode | inference
    metric: str
    describe: str
    start: np.ndarray  # ns
    end: np.ndarray  # ns
    count: np.ndarray
    total: np.ndarray  # sum of observed seconds
    p50: np.ndarray
    p90: np.ndarray
    p99: np.ndarray
    states: sm.HistogramStates | None = None

    def summed(self, mask: np.ndarray | None = None) -> tuple[list[float] | None, float]:
        """The cumulative bucket increases and the ``_sum`` increase over the windows in ``mask``
        (all by default): one histogram of every request those windows finished."""
        if self.states is None:
            return None, 0.0
        mask = np.ones(len(self.start), bool) if mask is None else mask
        acc: list[float] | None = None
        total = 0.0
        for a, b in zip(self.start[mask].tolist(), self.end[mask].tolist(), strict=True):
            d, s = self.states.delta(a, b)
            acc = d if acc is None else [x + y for x, y in zip(acc, d, strict=True)]
            total += s
        return acc, total

    def quantile_ci(self, q: float, mask: np.ndarray | None = None, z: float = 1.96
                    ) -> tuple[float, float, float] | None:
        """(estimate, low, high) in seconds of the q-quantile over ``mask``'s windows: the estimate is
        ``histogram_quantile`` (the rule every view uses); the bounds are the same rule at the
        distribution-free order-statistic ranks (``diff.ci_ranks``), so a bucket's width shows."""
        from autoglm_trace.analysis.diff import ci_ranks

        acc, _ = self.summed(mask)
        if acc is None or self.states is None or acc[-1] < 1:
            return None
        n = int(round(acc[-1]))
        lo, hi = ci_ranks(n, q, z)
        est, a, b = (sm.bucket_quantile(x, self.states.bounds, acc) for x in (q, (lo + 0.5) / n, (hi + 0.5) / n))
        if est is None or a is None or b is None:
            return None
        return est, min(a, est), max(b, est)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1e-12), np.nan)

    def over(self, mask: np.ndarray) -> dict[str, float | None]:
        """Requests, mean and quantiles over a set of windows: the bucket increases summed first
        (one ``histogram_quantile`` over the whole span), never an average of window quantiles."""
        acc, total = self.summed(mask)
        if self.states is None or acc is None:
            return {"count": 0.0, "mean_s": None, "p50_s": None, "p90_s": None, "p99_s": None}
        n = acc[-1]
        q = {f"p{int(p * 100)}_s": sm.bucket_quantile(p, self.states.bounds, acc) if n > 0 else None
             for p in (0.5, 0.9, 0.99)}
        return {"count": n, "mean_s": total / n if n > 0 else None, **q}


@dataclass
class Engine:
    url: str | None
    engine: str  # vllm | sglang | tgi | unknown
    interval_s: float  # median scrape interval
    phases: dict[str, EngineLatency] = field(default_factory=dict)
    gauges: dict[str, str] = field(default_factory=dict)  # role -> metric name used
    table: pa.Table | None = None

    @property
    def latency(self) -> EngineLatency | None:
        """The series incidents are found on: end-to-end latency, else TTFT, else inter-token."""
        for key in ("e2e", "ttft", "itl"):
            ph = self.phases.get(key)
            if ph is not None and (ph.count > 0).sum() >= 3:
                return ph
        return None

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "engine": self.engine, "scrape_interval_s": round(self.interval_s, 3),
                "histograms": {k: v.metric for k, v in self.phases.items()}, "gauges": dict(self.gauges),
                "resolution_note": f"latency from the engine's histograms, scraped every {self.interval_s:.3g} s: "
                                   f"incident times are accurate to about {self.interval_s:.3g} s"}


def _engine_name(metric: str) -> str:
    if metric.startswith("vllm:"):
        return "vllm"
    if metric.startswith("sglang:"):
        return "sglang"
    if metric.startswith("tgi_"):
        return "tgi"
    return "unknown"


def load_engine(rec: Recording, min_width_ns: int = 0) -> Engine | None:
    """The engine's latency histograms and gauges, or None when nothing was scraped."""
    if not rec.has("scrape_samples"):
        return None
    t = rec.table("scrape_samples")
    if not t.num_rows:
        return None
    times = sm.scrape_times(t)
    interval = float(np.median(np.diff(times))) / 1e9 if len(times) >= 2 else 0.0
    urls = sorted(set(t.column("url").unique().to_pylist()) - {None})
    eng = Engine(urls[0] if len(urls) == 1 else None, "unknown", interval, table=t)
    for key, cands, words in sm.PHASES:
        m = sm.find_metric(t, cands)
        if m is None or f"{m}_bucket" not in sm.metric_names(t):
            continue
        h = sm.HistogramStates(t, m)
        w = sm.scrape_windows(t, m, min_width_ns)
        if not w.num_rows:
            continue
        eng.phases[key] = EngineLatency(
            key, m, words, col(w, "window_start_ns", np.int64), col(w, "window_end_ns", np.int64),
            col(w, "count"), col(w, "sum"), col(w, "p50", np.float64, np.nan), col(w, "p90", np.float64, np.nan),
            col(w, "p99", np.float64, np.nan), h)
        if eng.engine == "unknown":
            eng.engine = _engine_name(m)
    for role, cands in (("kv_cache_usage", sm.KV_CACHE_USAGE), ("running", sm.RUNNING), ("waiting", sm.WAITING),
                        ("preemptions", sm.PREEMPTIONS_COUNTER), ("retracted", sm.PREEMPTIONS_GAUGE)):
        m = sm.find_metric(t, cands)
        if m is not None:
            eng.gauges[role] = m
            if eng.engine == "unknown":
                eng.engine = _engine_name(m)
    if not eng.phases and not eng.gauges:
        return None
    return eng


def gauge(eng: Engine, role: str) -> tuple[np.ndarray, np.ndarray]:
    m = eng.gauges.get(role)
    if m is None or eng.table is None:
        return np.empty(0, np.int64), np.empty(0)
    g = sm.gauge_series(eng.table, m)
    return col(g, "ts_ns", np.int64), col(g, "value")


# ------------------------------------------------------------------------------------------------
# context signals on the analysis grid
# ------------------------------------------------------------------------------------------------
def _mean_per_window(tl: Timeline, ts: np.ndarray, v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    if not ok.any():
        return np.full(tl.n, np.nan)
    idx = tl.index(ts[ok])
    s = np.bincount(idx, weights=v[ok], minlength=tl.n)[: tl.n]
    c = np.bincount(idx, minlength=tl.n)[: tl.n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def add_signals(tl: Timeline, eng: Engine) -> None:
    """The engine's state beside the kernel signals: KV-cache usage, running / waiting requests,
    preemptions, and each latency phase's mean per window (delta of _sum / delta of _count,
    charged to the window of the later scrape, as every cumulative counter on the grid is)."""
    src = "scrape_samples"
    ts, v = gauge(eng, "kv_cache_usage")
    if len(ts):
        vals = np.full(tl.n, np.nan)
        ok = np.isfinite(v)
        if ok.any():
            np.fmax.at(vals, tl.index(ts[ok]), v[ok])
        tl.add(Signal("engine_kv_cache", vals, "fraction", src, "target",
                      f"engine KV-cache usage ({eng.gauges['kv_cache_usage']})", floor=0.05, peak=True))
    for role, name, words in (("running", "engine_running", "requests running in the engine"),
                              ("waiting", "engine_waiting", "requests waiting in the engine's queue")):
        ts, v = gauge(eng, role)
        if len(ts):
            tl.add(Signal(name, _mean_per_window(tl, ts, v), "requests", src, "load", words, floor=1))
    ts, v = gauge(eng, "preemptions")
    if len(ts) >= 2:
        dts, d = counter_deltas(ts, np.zeros(len(ts), np.int64), v)
        vals = np.bincount(tl.index(dts), weights=d, minlength=tl.n)[: tl.n].astype(float) if len(dts) else np.zeros(tl.n)
        tl.add(Signal("engine_preemptions", vals, "count/window", src, "target",
                      "requests preempted by the engine (KV cache full)", floor=0.5))
    else:
        ts, v = gauge(eng, "retracted")
        if len(ts):
            tl.add(Signal("engine_preemptions", _mean_per_window(tl, ts, v), "count/window", src, "target",
                          "requests retracted by the engine (KV cache full)", floor=0.5))
    for key, ph in eng.phases.items():
        idx = tl.index(ph.end)
        s = np.bincount(idx, weights=ph.total, minlength=tl.n)[: tl.n]
        c = np.bincount(idx, weights=ph.count, minlength=tl.n)[: tl.n]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, s / np.maximum(c, 1e-12), np.nan)
        tl.add(Signal(f"engine_{key}", mean * 1e9, "ns", src, "load" if key == "queue" else "target",
                      f"mean {ph.describe} ({ph.metric})", floor=1e6))
        if key == "e2e":
            tl.add(Signal("engine_requests", c.astype(float), "count/window", src, "load",
                          "requests finished (engine)", floor=1))


# ------------------------------------------------------------------------------------------------
# the latency series and per-incident phase breakdown
# ------------------------------------------------------------------------------------------------
def window_series(ph: EngineLatency) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, x, weight) for windows with requests: x = log(window mean / median window mean)."""
    ok = ph.count >= MIN_COUNT
    mean = ph.mean[ok]
    x = np.log(np.maximum(mean, 1e-9))
    x = x - float(np.median(x)) if len(x) else x
    return ph.start[ok], ph.end[ok], x, ph.count[ok]


def spike_windows(x: np.ndarray) -> np.ndarray:
    """Windows whose typical request was slow: robust z of the log mean (noise from adjacent
    differences) >= 4 and >= 1.4x the median window."""
    if len(x) < 5:
        return np.zeros(len(x), bool)
    from autoglm_trace.analysis.shapes import noise

    sig = noise(x)
    med = float(np.median(x))
    return ((x - med) / sig >= SPIKE_Z) & (np.exp(x - med) >= SPIKE_RATIO)


def phase_breakdown(eng: Engine, inc_mask_fn: Any, base_mask_fn: Any) -> dict[str, Any] | None:
    """Each phase's mean / p50 / p99 in the incident vs the baseline, and the verdict: waited in the
    queue (load) or ran slower (contention). ``*_mask_fn(phase)`` -> bool mask over its windows."""
    rows: dict[str, Any] = {}
    for key, ph in eng.phases.items():
        im, bm = inc_mask_fn(ph), base_mask_fn(ph)
        a, b = ph.over(im), ph.over(bm)
        if not a["count"] or not b["count"]:
            continue
        rows[key] = {"metric": ph.metric, "describe": ph.describe, "incident": _ms(a), "baseline": _ms(b),
                     "extra_mean_ms": _r(1e3 * (a["mean_s"] - b["mean_s"]))
                     if a["mean_s"] is not None and b["mean_s"] is not None else None}
    if not rows:
        return None
    e2e = rows.get("e2e") or rows.get("ttft")
    out: dict[str, Any] = {"phases": rows, "scrape_interval_s": round(eng.interval_s, 3)}
    extra = (e2e or {}).get("extra_mean_ms")
    q = (rows.get("queue") or {}).get("extra_mean_ms")
    slower = [k for k in ("itl", "prefill", "decode", "inference") if k in rows
              and (rows[k]["extra_mean_ms"] or 0) > 0
              and _ratio(rows[k]) >= 1.2]
    if extra and extra > 0 and q is not None:
        out["queue_share"] = _r(max(0.0, min(1.0, q / extra)), 3)
    # Service phases first: an engine that runs slower also queues more (the queue is then a
    # consequence), so "waited in the queue" means the queue grew while service stayed the same.
    if slower:
        words = ", ".join(f"{rows[k]['describe'].split(' (')[0]} {_ratio(rows[k]):.1f}x" for k in slower)
        out["verdict"] = "slower"
        out["summary"] = f"requests ran slower once scheduled: {words} (contention, not only load)"
        if q is not None and q > 0 and out.get("queue_share"):
            out["summary"] += f"; the queue grew with it (+{q:.0f} ms)"
    elif out.get("queue_share") is not None and out["queue_share"] >= 0.5:
        out["verdict"] = "queued"
        out["summary"] = (f"requests waited in the engine's queue: queue time +{q:.0f} ms of the "
                          f"+{extra:.0f} ms extra, service time unchanged (load the engine could not keep up with)")
    elif extra is not None:
        out["verdict"] = "unclear"
        out["summary"] = "the engine's phase histograms do not say where the extra time went"
    return out


def _ratio(row: dict[str, Any]) -> float:
    a, b = row["incident"].get("mean_ms"), row["baseline"].get("mean_ms")
    return float(a / b) if a is not None and b else 1.0


def _ms(d: dict[str, Any]) -> dict[str, Any]:
    return {"requests": int(d["count"]), **{k.replace("_s", "_ms"): _r(1e3 * v) if v is not None else None
                                            for k, v in d.items() if k != "count"}}


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def gauge_summary(eng: Engine, role: str) -> dict[str, float] | None:
    """Mean and maximum of a gauge over the recording (the KV-cache usage, running / waiting requests)."""
    _ts, v = gauge(eng, role)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    return {"mean": round(float(v.mean()), 4), "max": round(float(v.max()), 4)}


def counter_rate_per_s(eng: Engine, role: str) -> float | None:
    """A counter's increase per second over the recording (preemptions), resets counted as restarts."""
    ts, v = gauge(eng, role)
    if len(ts) < 2 or np.ptp(ts) <= 0:
        return None
    _dts, d = counter_deltas(ts, np.zeros(len(ts), np.int64), v)
    return round(float(d.sum()) / (float(np.ptp(ts)) / 1e9), 4)
