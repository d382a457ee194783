"""Serving-engine metrics from ``scrape_samples``: windowed latency quantiles and gauges.

The recorder stores Prometheus samples raw and cumulative (``probes.scrape``). A latency histogram's
quantiles over a window come from the *difference* of its cumulative buckets between the last scrape
at or before the window's start and the last scrape at or before its end, summed over every label set
(``sum by (le)``), then interpolated inside the bucket that holds the rank -- the same estimate as
PromQL's ``histogram_quantile(q, sum by (le) (increase(m_bucket[w])))``. A counter that went down
(engine restarted) is taken as restarted from zero.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa

from autoglm_trace.signals import bucket_quantile  # the one quantile rule (histogram_quantile)

# Names engines use for the same thing (first present wins); field-notes.md lists where they come from.
# vLLM: vllm/v1/metrics/loggers.py (renamed gpu_cache_usage_perc -> kv_cache_usage_perc and
# time_per_output_token_seconds -> inter_token_latency_seconds: both names are read). SGLang:
# python/sglang/srt/metrics/collector.py (only served with --enable-metrics; older releases used
# num_requests_running / num_requests_waiting). TGI: router/src/server.rs.
E2E_LATENCY = ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds", "tgi_request_duration")
TTFT = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")
INTER_TOKEN = (
    "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds",
    "sglang:inter_token_latency_seconds",
    "tgi_request_mean_time_per_token_duration",
)
QUEUE_TIME = ("vllm:request_queue_time_seconds", "sglang:queue_time_seconds", "tgi_request_queue_duration")
PREFILL_TIME = ("vllm:request_prefill_time_seconds",)
DECODE_TIME = ("vllm:request_decode_time_seconds",)
INFERENCE_TIME = ("vllm:request_inference_time_seconds", "tgi_request_inference_duration")
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "sglang:num_requests_running",
           "tgi_batch_current_size")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "sglang:num_requests_waiting", "tgi_queue_size")
# Requests the engine evicted to make room: vLLM counts preemptions (a counter); SGLang reports the
# requests retracted in its last logging interval (a gauge).
PREEMPTIONS_COUNTER = ("vllm:num_preemptions_total", "vllm:num_preemptions")
PREEMPTIONS_GAUGE = ("sglang:num_retracted_reqs",)

# Request latency phases, in the order an incident lists them: (key, candidates, words).
PHASES = (
    ("e2e", E2E_LATENCY, "end-to-end latency"),
    ("queue", QUEUE_TIME, "queue time (waiting for the engine to schedule it)"),
    ("ttft", TTFT, "time to first token"),
    ("prefill", PREFILL_TIME, "prefill time"),
    ("itl", INTER_TOKEN, "inter-token latency"),
    ("decode", DECODE_TIME, "decode time"),
    ("inference", INFERENCE_TIME, "inference time (prefill + decode)"),
)


WINDOW_SCHEMA = pa.schema([
    pa.field("window_start_ns", pa.int64()),
    pa.field("window_end_ns", pa.int64()),
    pa.field("count", pa.float64()),
    pa.field("sum", pa.float64()),
    pa.field("mean", pa.float64()),
    pa.field("p50", pa.float64()),
    pa.field("p90", pa.float64()),
    pa.field("p99", pa.float64()),
])


def metric_names(table: pa.Table) -> set[str]:
    if table.num_rows == 0:
        return set()
    return set(table.column("metric").unique().to_pylist())


def find_metric(table: pa.Table, candidates: Iterable[str]) -> str | None:
    """The first of ``candidates`` present in the table, as a histogram (``_bucket``) or a plain sample."""
    names = metric_names(table)
    for c in candidates:
        if c in names or f"{c}_bucket" in names:
            return c
    return None


def _rows(table: pa.Table, sample: str, url: str | None) -> list[tuple[int, dict, float]]:
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    mask = pc.equal(table.column("metric"), sample)
    if url is not None:
        mask = pc.and_(mask, pc.equal(table.column("url"), url))
    t = table.filter(mask)
    out = []
    parsed: dict[str | None, dict] = {}  # a scrape repeats the same few label sets: parse each once
    for ts, labels, value in zip(t.column("ts_ns").to_pylist(), t.column("labels").to_pylist(),
                                 t.column("value").to_pylist(), strict=True):
        lab = parsed.get(labels)
        if lab is None:
            try:
                lab = json.loads(labels) if labels else {}
            except ValueError:
                lab = {}
            if not isinstance(lab, dict):
                lab = {}
            parsed[labels] = lab
        out.append((ts, lab, value))
    return out


def _le(v: str) -> float:
    return math.inf if v in ("+Inf", "Inf", "inf") else float(v)


class HistogramStates:
    """A histogram's cumulative state at each scrape, summed over label sets (``sum by (le)``)."""

    def __init__(self, table: pa.Table, metric: str, url: str | None = None) -> None:
        buckets = _rows(table, f"{metric}_bucket", url)
        sums = _rows(table, f"{metric}_sum", url)
        per_ts: dict[int, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for ts, lab, value in buckets:
            le = lab.get("le")
            if le is None:
                continue
            try:
                per_ts[ts][_le(le)] += value
            except ValueError:
                continue
        sum_ts: dict[int, float] = defaultdict(float)
        for ts, _lab, value in sums:
            sum_ts[ts] += value
        self.times = sorted(per_ts)
        bounds = sorted({b for d in per_ts.values() for b in d})
        if not bounds or not math.isinf(bounds[-1]):
            bounds.append(math.inf)
        self.bounds = bounds
        self.states: dict[int, tuple[list[float], float]] = {}
        for ts in self.times:
            d = per_ts[ts]
            cum, last = [], 0.0
            for b in bounds:  # a bucket missing in one scrape: carry the lower cumulative value
                last = d.get(b, last)
                cum.append(last)
            self.states[ts] = (cum, sum_ts.get(ts, 0.0))

    def __bool__(self) -> bool:
        return bool(self.times)

    def delta(self, t0: int, t1: int) -> tuple[list[float], float]:
        """Bucket and sum increase between the scrapes at ``t0`` and ``t1`` (both scrape times). A
        counter that went down is an engine restart: counted from zero (PromQL's increase() rule)."""
        c0, s0 = self.states[t0]
        c1, s1 = self.states[t1]
        delta = [b - a for a, b in zip(c0, c1, strict=True)]
        dsum = s1 - s0
        if any(d < 0 for d in delta) or dsum < 0:
            return list(c1), s1
        return delta, dsum

    def row(self, ws: int, we: int, delta: list[float], dsum: float) -> dict:
        n = delta[-1]
        out = {"window_start_ns": ws, "window_end_ns": we, "count": n, "sum": dsum,
               "mean": dsum / n if n > 0 else None}
        for q, col in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            out[col] = bucket_quantile(q, self.bounds, delta) if n > 0 else None
        return out


def histogram_windows(table: pa.Table, metric: str, window_ns: int, url: str | None = None) -> pa.Table:
    """Per window of ``window_ns``: requests observed, their sum, mean, and p50 / p90 / p99 estimated
    from bucket deltas. ``metric`` is the histogram's base name (``vllm:e2e_request_latency_seconds``);
    windows start at the first scrape. Windows with no observation have count 0 and null quantiles."""
    if window_ns <= 0:
        raise ValueError("window_ns must be positive")
    h = HistogramStates(table, metric, url)
    if not h:
        return WINDOW_SCHEMA.empty_table()
    times = h.times
    rows = []
    start = times[0]
    ws = start
    while ws < times[-1] or ws == start:
        we = ws + window_ns
        i0 = bisect.bisect_right(times, ws) - 1
        i1 = bisect.bisect_right(times, we) - 1
        rows.append(h.row(ws, we, *h.delta(times[max(i0, 0)], times[i1])))
        ws = we
        if ws >= times[-1]:
            break
    return pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA)


def scrape_windows(table: pa.Table, metric: str, min_width_ns: int = 0, url: str | None = None) -> pa.Table:
    """Windows bounded by the scrapes themselves: each runs from one scrape to the next (merged with
    the following ones until it is at least ``min_width_ns`` long), so every window holds exactly
    the observations between two scrapes -- ``histogram_quantile(q, sum by (le) (increase(m_bucket[w])))``
    evaluated at the window's end with ``w`` its length. The scrape interval is the finest time
    resolution any analysis of these metrics can have."""
    h = HistogramStates(table, metric, url)
    if len(h.times) < 2:
        return WINDOW_SCHEMA.empty_table()
    rows = []
    i = 0
    times = h.times
    while i < len(times) - 1:
        j = i + 1
        while j < len(times) - 1 and times[j] - times[i] < min_width_ns:
            j += 1
        rows.append(h.row(times[i], times[j], *h.delta(times[i], times[j])))
        i = j
    return pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA)


def scrape_times(table: pa.Table, url: str | None = None) -> list[int]:
    if table.num_rows == 0:
        return []
    import pyarrow.compute as pc

    t = table if url is None else table.filter(pc.equal(table.column("url"), url))
    return sorted(set(t.column("ts_ns").to_pylist()))


def gauge_series(table: pa.Table, metric: str, url: str | None = None) -> pa.Table:
    """A gauge (or counter) summed over its label sets, one row per scrape: ts_ns, value."""
    agg: dict[int, float] = defaultdict(float)
    for ts, _lab, value in _rows(table, metric, url):
        agg[ts] += value
    ts_sorted = sorted(agg)
    return pa.table({"ts_ns": pa.array(ts_sorted, pa.int64()),
                     "value": pa.array([agg[t] for t in ts_sorted], pa.float64())})
