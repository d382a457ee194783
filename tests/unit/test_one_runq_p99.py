"""One run-queue p99 for one recording, whichever view asks: ``top`` (the live view's frame and its
rendered text), ``/metrics`` (the exporter's buckets, evaluated the way PromQL's
``histogram_quantile`` does), a ``--trigger-expr runq_wait_ms_p99`` threshold and the HTML report.

The recording is written with the project's writer and read back with the ordinary reader; every
view gets the same rows. Its sched buckets all lie within the last second, the window the trigger
looks at, so all four views cover the same waits.
"""

from __future__ import annotations

import math
import re
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.report import render_html
from autoglm_trace.signals import LOG2_LE_S
from autoglm_trace.tracer.exporter import PrometheusExporter
from autoglm_trace.tracer.flight import MetricState, parse_expr
from autoglm_trace.tracer.live_view import compute, fmt_s, render
from autoglm_trace.tracer.manifest import new_manifest
from autoglm_trace.tracer.writer import RecordingWriter

NS = 1_000_000_000
T0 = 5_000 * NS
BUCKET = 100_000_000  # 100 ms kernel buckets


def _sched_rows() -> list[dict]:
    rng = np.random.default_rng(12)
    rows = []
    for i in range(9):  # 0.0 .. 0.8 s: inside the trigger's one-second window
        for pid in (100, 101, 102):
            h = np.zeros(schema.LOG2_BUCKETS, dtype=np.int64)
            # Mostly short waits (8 us .. 1 ms), a tail of 2..16 ms waits that holds the p99.
            np.add.at(h, rng.integers(3, 11, 300), 1)
            np.add.at(h, rng.integers(12, 15, 4 + pid % 3), 1)
            rows.append({"ts_ns": T0 + i * BUCKET, "bucket_ns": BUCKET, "pid": pid, "tid": pid, "comm": "server",
                         "runq_count": int(h.sum()), "runq_wait_ns": int(h.sum()) * 200_000,
                         "runq_max_ns": 15_000_000, "runq_hist": h.tolist()})
    return rows


@pytest.fixture
def recording(tmp_path) -> Recording:
    m = new_manifest({"mode": "command", "pid": 100, "comm": "server"}, {}, BUCKET)
    m["start_ns"] = T0
    m["collectors"] = {"kernel": {"status": "ok"}}
    w = RecordingWriter(tmp_path / "rec", m)
    w.emit("sched", _sched_rows())
    w.close()
    w.write_manifest()
    return Recording(tmp_path / "rec")


def _promql_histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile (promql/quantile.go bucketQuantile), written out here on
    purpose: the exporter's exposition is checked against PromQL, not against our own code."""
    buckets = sorted(buckets)
    assert math.isinf(buckets[-1][0])
    rank = q * buckets[-1][1]
    b = next((i for i, (_, c) in enumerate(buckets[:-1]) if c >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (0.0, 0.0) if b == 0 else buckets[b - 1]
    end, count = buckets[b]
    return start + (end - start) * (rank - below) / (count - below)


def _metrics_p99(rec: Recording) -> float:
    e = PrometheusExporter().start("127.0.0.1", 0)
    try:
        for batch in rec.table("sched").to_batches():
            e.emit_batch("sched", batch)
        with urllib.request.urlopen(e.url, timeout=5) as r:
            text = r.read().decode()
    finally:
        e.close()
    per_le: dict[float, float] = {}  # sum by (le) over every pid's series
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "autoglm_trace_runq_latency_seconds_bucket":
                le = float(s.labels["le"])
                per_le[le] = per_le.get(le, 0.0) + s.value
    return _promql_histogram_quantile(0.99, list(per_le.items()))


def test_top_metrics_trigger_and_report_agree_on_the_runq_p99(recording):
    now = T0 + 9 * BUCKET
    # top: the frame's number and the text it prints.
    frame = compute(recording, now, 10.0)
    top_p99 = frame.runq_p99_s
    assert top_p99 is not None
    console = Console(record=True, width=140, color_system=None)
    console.print(render(recording, now, 10.0))
    top_text = console.export_text()
    m = re.search(r"run-queue p50 / p99\s+(\S+ \S+) / (\S+ \S+)", top_text)
    assert m, top_text
    printed = m.group(2)
    assert printed == fmt_s(top_p99)

    # The p99 is interpolated inside its bucket, not the bucket's upper edge: the rule is visible.
    assert not any(math.isclose(top_p99, le) for le in LOG2_LE_S)

    # /metrics, evaluated as PromQL would.
    assert _metrics_p99(recording) == pytest.approx(top_p99, rel=1e-12)

    # The trigger: the metric --trigger-expr runq_wait_ms_p99 compares, and the comparison at that value.
    ms = MetricState()
    ms.update({"sched": recording.table("sched")})
    trig_ms = ms.value("runq_wait_ms_p99")
    assert trig_ms == pytest.approx(top_p99 * 1e3, rel=1e-12)
    assert parse_expr(f"runq_wait_ms_p99 >= {trig_ms * 0.999}ms").holds(trig_ms)
    assert not parse_expr(f"runq_wait_ms_p99 > {trig_ms * 1.001}ms").holds(trig_ms)

    # The report: the same number, printed the way top prints it.
    html = render_html(recording, diagnosis={"incidents": []}, oom={"kills": []})
    rm = re.search(r"Run-queue wait</dt><dd>([^<]*)</dd>", html)
    assert rm, "no run-queue line in the report"
    assert f"p99 {printed}" in rm.group(1)
