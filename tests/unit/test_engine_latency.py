"""Request latency from a serving engine's own histograms, without spans.

The exposition text is what vLLM / SGLang serve: metric names and bucket layouts copied from
vllm/v1/metrics/loggers.py (vllm-project/vllm) and python/sglang/srt/metrics/collector.py
(sgl-project/sglang) -- see tests/fakes/engine_sim.py -- rendered by prometheus_client and parsed
by the recorder's own parser (probes.scrape.parse_samples), stored as scrape_samples rows. The
windowed quantiles must equal PromQL's histogram_quantile over increase(), computed here
independently from the raw rows.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import generate_latest

from autoglm_trace import schema
from autoglm_trace.analysis.diagnosis import diagnose
from autoglm_trace.analysis.engine import load_engine
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.probes.scrape import parse_samples
from autoglm_trace.tracer.writer import RecordingWriter
from tests.fakes.engine_sim import Metrics

S = 1_000_000_000
T0 = 7_000 * S


def _record(path, engine: str, slow_from: float | None, where: str, duration: float = 60.0,
            old_names: bool = False, period: float | None = None, seed: int = 0) -> None:
    """Simulated time: 4 requests/s for ``duration`` s, scraped every 0.5 s. From ``slow_from`` on
    either the queue time grows (``where='queue'``: load) or every token is slower ('itl': contention);
    with ``period``, a 400 ms stall every ``period`` s instead."""
    rng = np.random.default_rng(seed)
    m = Metrics(engine, old_names)
    w = RecordingWriter(path, {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
                               "target": {"mode": "host"}, "start_ns": T0, "end_ns": T0 + int(duration * S),
                               "clock": {"monotonic_to_wall_ns": 1_764_000_000 * S}, "complete": True,
                               "collectors": {"scrape": {"status": "ok", "tables": ["scrape_samples"]}}})
    arrivals = np.sort(rng.uniform(0, duration, int(4 * duration)))
    nxt = 0.5
    rows: list[dict] = []

    def scrape(t: float) -> None:
        for name, labels, value in parse_samples(generate_latest(m.registry).decode()):
            rows.append({"ts_ns": T0 + int(t * S), "url": "http://engine/metrics", "metric": name,
                         "labels": labels, "value": value})

    scrape(0.0)
    for a in arrivals:
        while a >= nxt:
            scrape(nxt)
            nxt += 0.5
        hot = slow_from is not None and a >= slow_from
        if period is not None:
            hot = (a % period) < 0.4
        queue_s = 0.02 * rng.lognormal(0, 0.2) + (0.5 if hot and where == "queue" else 0.0)
        prefill = 0.05 * rng.lognormal(0, 0.1)
        itl = 0.012 * rng.lognormal(0, 0.1) * (2.0 if hot and where == "itl" else 1.0)
        stall = 0.4 if hot and period is not None else 0.0
        tokens = 24
        m.queue.observe(queue_s)
        m.ttft.observe(queue_s + prefill)
        for _ in range(tokens - 1):
            m.itl.observe(itl)
        decode = itl * (tokens - 1) + stall
        m.e2e.observe(queue_s + prefill + decode)
        if m.prefill is not None:
            m.prefill.observe(prefill)
            m.decode.observe(decode)
            m.inference.observe(prefill + decode)
        m.kv.set(0.3 + (0.5 if hot else 0.0))
        m.running.set(1)
        m.waiting.set(6 if hot and where == "queue" else 0)
    while nxt <= duration:
        scrape(nxt)
        nxt += 0.5
    w.writer("scrape_samples").append_batch(
        pa.RecordBatch.from_pylist(rows, schema=schema.schema_for("scrape_samples")))
    w.close()


def promql_histogram_quantile(q: float, rows: dict, metric: str, t0: int, t1: int) -> float | None:
    """histogram_quantile(q, sum by (le) (increase(metric_bucket[t1 - t0]))) at t1, from raw rows
    (promql/quantile.go: linear interpolation inside the bucket holding the rank; the +Inf bucket
    returns the highest finite bound; the lowest bucket starts at 0)."""
    at: dict[int, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for ts in (t0, t1):
        for r in rows.get((f"{metric}_bucket", ts), []):
            le = json.loads(r["labels"])["le"]
            at[ts][math.inf if le == "+Inf" else float(le)] += r["value"]
    les = sorted(at[t1])
    inc = [at[t1][le] - at[t0].get(le, 0.0) for le in les]
    total = inc[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (le, c) in enumerate(zip(les, inc, strict=True)):
        if c >= rank:
            if math.isinf(le):
                return les[i - 1]
            lo, below = (les[i - 1], inc[i - 1]) if i else (0.0, 0.0)
            if le <= 0:
                return le
            return lo + (le - lo) * (rank - below) / (c - below)
    return les[-2]


@pytest.mark.parametrize("engine,old", [("vllm", False), ("vllm", True), ("sglang", False)])
def test_windowed_quantiles_equal_histogram_quantile_over_increase(tmp_path, engine, old):
    _record(tmp_path / "rec", engine, 30.0, "itl", old_names=old)
    rec = Recording(tmp_path / "rec")
    eng = load_engine(rec)
    assert eng is not None and eng.engine == engine
    assert eng.interval_s == pytest.approx(0.5)
    want = {"e2e", "queue", "ttft", "itl"} | ({"prefill", "decode", "inference"} if engine == "vllm" else set())
    assert set(eng.phases) == want
    if old:
        assert eng.phases["itl"].metric == "vllm:time_per_output_token_seconds"
        assert eng.gauges["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    rows: dict = defaultdict(list)
    for r in rec.table("scrape_samples").to_pylist():
        rows[(r["metric"], r["ts_ns"])].append(r)
    checked = 0
    for ph in eng.phases.values():
        for i in range(len(ph.start)):
            for q, got in ((0.5, ph.p50[i]), (0.9, ph.p90[i]), (0.99, ph.p99[i])):
                exp = promql_histogram_quantile(q, rows, ph.metric, int(ph.start[i]), int(ph.end[i]))
                if exp is None:
                    assert not np.isfinite(got)
                else:
                    assert got == pytest.approx(exp, rel=1e-9, abs=1e-12), (ph.metric, i, q)
                    checked += 1
    assert checked > 300


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_slower_tokens_are_one_shift_that_ran_slower(tmp_path, engine):
    _record(tmp_path / "rec", engine, 30.0, "itl")
    d = diagnose(Recording(tmp_path / "rec"))
    assert d["requests"] is None and d["engine"]["used_for_incidents"]
    assert d["engine"]["scrape_interval_s"] == pytest.approx(0.5)
    assert "scraped every 0.5 s" in d["engine"]["resolution_note"]
    (inc,) = d["incidents"]
    assert inc["shape"] == "shift" and inc["latency_source"] == "engine_metrics"
    assert 29 <= inc["shape_info"]["from_s"] <= 31.5 and inc["shape_info"]["to_end"]
    assert inc["engine"]["verdict"] == "slower", inc["engine"]
    assert "inter-token latency 2.0x" in inc["engine"]["summary"]
    assert inc["latency_extra_fraction"] == pytest.approx(1 - 0.33 / 0.61, abs=0.08)


def test_queue_growth_is_load(tmp_path):
    _record(tmp_path / "rec", "vllm", 30.0, "queue")
    d = diagnose(Recording(tmp_path / "rec"))
    (inc,) = d["incidents"]
    assert inc["engine"]["verdict"] == "queued", inc["engine"]
    assert inc["engine"]["queue_share"] > 0.9
    assert "waited in the engine's queue" in inc["headline"]
    ctx = inc["causes"][0]["context"]
    assert "engine_waiting" in ctx and ctx["engine_waiting"]["incident"] > ctx["engine_waiting"]["baseline"]


def test_engine_periodic_stall_at_scrape_resolution(tmp_path):
    _record(tmp_path / "rec", "vllm", None, "itl", duration=80.0, period=4.0)
    d = diagnose(Recording(tmp_path / "rec"))
    per = [i for i in d["incidents"] if i["shape"] == "periodic"]
    assert len(per) == 1, [i["headline"] for i in d["incidents"]]
    assert per[0]["shape_info"]["period_s"] == pytest.approx(4.0, abs=0.3)


def test_no_incident_on_a_steady_engine(tmp_path):
    _record(tmp_path / "rec", "sglang", None, "itl")
    d = diagnose(Recording(tmp_path / "rec"))
    assert d["incidents"] == []
    assert d["engine"]["latency"]["requests"] > 200


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_diff_compares_the_engines_latency_without_spans(tmp_path, engine):
    """Two ``--scrape``-only recordings: diff's quantiles are histogram_quantile over the increase
    across the whole recording (computed here independently), each phase separately, with the
    engine's KV-cache usage beside them."""
    from autoglm_trace.analysis.diff import diff_recordings
    from autoglm_trace.analysis.render import render_diff

    _record(tmp_path / "base", engine, None, "itl")
    _record(tmp_path / "new", engine, 0.0, "itl", seed=1)
    d = diff_recordings(Recording(tmp_path / "base"), Recording(tmp_path / "new"))
    json.dumps(d)
    e2e = "vllm:e2e_request_latency_seconds" if engine == "vllm" else "sglang:e2e_request_latency_seconds"
    assert d["latency_source"] == f"engine:{e2e}" and d["regressed"] is True
    e = d["engine"]
    assert e["base"]["scrape_interval_s"] == pytest.approx(0.5)
    for side in ("base", "new"):
        rec = Recording(tmp_path / side)
        rows: dict = defaultdict(list)
        for r in rec.table("scrape_samples").to_pylist():
            rows[(r["metric"], r["ts_ns"])].append(r)
        times = sorted({ts for (_m, ts) in rows})
        for key, row in e["phases"].items():
            for q in (50, 90, 99):
                exp = promql_histogram_quantile(q / 100, rows, row["metric"], times[0], times[-1])
                assert row[f"p{q}"][side] == pytest.approx(1e3 * exp, abs=1e-3), (key, q, side)
                lo, hi = row[f"p{q}"][f"{side}_ci"]
                assert lo <= row[f"p{q}"][side] <= hi
    itl = e["phases"]["itl"]
    # the quantile reads the coarse buckets (0.01-0.025 s holds both); the mean is exact
    assert itl["p50"]["significant"] and itl["p50"]["ratio"] > 1.15
    assert itl["mean"]["ratio"] == pytest.approx(2.0, rel=0.1)
    assert not e["phases"]["queue"]["p50"]["significant"]  # the queue did not change, only the service
    kv = e["state"]["kv_cache_usage"]
    assert kv["base"]["mean"] == pytest.approx(0.3, abs=0.01) and kv["new"]["mean"] == pytest.approx(0.8, abs=0.01)
    text = render_diff(d)
    assert "Latency regressed" in text and "scraped every 0.5 s" in text and "KV-cache usage (mean): 30% -> 79%" in text
    assert "requests (engine)" in text
    # the same workload: no regression claimed
    _record(tmp_path / "again", engine, None, "itl", seed=2)
    d = diff_recordings(Recording(tmp_path / "base"), Recording(tmp_path / "again"))
    assert d["regressed"] is False


def test_report_shows_the_engines_signals_at_its_scrape_resolution(tmp_path):
    """The HTML report plots the windowed quantiles analyze uses (the very arrays), KV-cache usage,
    running / waiting requests, and names the scrape interval as the time resolution."""
    from autoglm_trace.analysis import tracks
    from autoglm_trace.analysis.report import render_html

    _record(tmp_path / "rec", "vllm", 30.0, "itl")
    rec = Recording(tmp_path / "rec")
    eng = load_engine(rec)
    got = {t.name: t for t in tracks.engine_tracks(rec)}
    assert {"engine.e2e_p50", "engine.e2e_p99", "engine.ttft_p99", "engine.itl_p50", "engine.queue_p99",
            "engine.kv_cache_usage", "engine.running", "engine.waiting", "engine.preemptions"} <= set(got)
    ph = eng.phases["itl"]
    np.testing.assert_array_equal(got["engine.itl_p99"].values, ph.p99 * 1e3)
    np.testing.assert_array_equal(got["engine.itl_p99"].ts_ns, ph.end)
    kv = got["engine.kv_cache_usage"].values
    assert kv.max() == pytest.approx(0.8) and np.nanmedian(kv[:40]) == pytest.approx(0.3)
    assert tracks.panel_title("engine_latency", list(got.values())).endswith(
        "scraped every 0.5 s (the time resolution)")
    html = render_html(rec)
    assert "Engine latency (its own histograms), scraped every 0.5 s (the time resolution)" in html
    assert "inter-token latency p99 (vllm:inter_token_latency_seconds)" in html
    assert "KV-cache usage (vllm:kv_cache_usage_perc)" in html
    assert "scraped every 0.5 s: incident times are accurate to about 0.5 s" in html


def test_top_shows_the_engines_windowed_latency_and_kv_usage(tmp_path):
    """``top --scrape URL``: the live view's engine figures are histogram_quantile over the scrape
    windows that ended inside its window (computed here independently), from a recording or from
    the recorder's ring alike."""
    from rich.console import Console

    from autoglm_trace.analysis.live import LiveRecording
    from autoglm_trace.sinks import rows_to_batch
    from autoglm_trace.tracer.live_view import compute, render_frame
    from autoglm_trace.tracer.ring import RingSink

    _record(tmp_path / "rec", "vllm", 30.0, "itl")
    rec = Recording(tmp_path / "rec")
    now = rec.end_ns
    f = compute(rec, now, 10.0)
    assert f.engine is not None and f.engine["interval_s"] == pytest.approx(0.5)
    rows: dict = defaultdict(list)
    for r in rec.table("scrape_samples").to_pylist():
        rows[(r["metric"], r["ts_ns"])].append(r)
    times = sorted({ts for (_m, ts) in rows})
    since = now - 10 * S
    first = max(t for t in times if t <= since)  # the windows that end inside span from this scrape
    by = {p["phase"]: p for p in f.engine["phases"]}
    for words, metric in (("inter-token", "vllm:inter_token_latency_seconds"),
                          ("end-to-end", "vllm:e2e_request_latency_seconds")):
        for q in (0.5, 0.99):
            exp = promql_histogram_quantile(q, rows, metric, first, times[-1])
            assert by[words][f"p{int(q * 100)}"] == pytest.approx(exp, rel=1e-9), (words, q)
    assert f.engine["state"]["kv_cache_usage"]["last"] == pytest.approx(0.8)
    con = Console(record=True, width=140)
    con.print(render_frame(f))
    text = con.export_text()
    assert "engine vllm" in text and "scraped every 0.5 s" in text and "KV cache 80% (max 80%)" in text
    assert "inter-token" in text and "queue" in text
    ring = RingSink(duration_ns=600 * S)
    ring.emit_batch("scrape_samples", rows_to_batch("scrape_samples", rec.table("scrape_samples").to_pylist()))
    live = compute(LiveRecording(ring, dict(rec.manifest)), now, 10.0)
    assert live.engine == f.engine
