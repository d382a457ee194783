"""Windowed histogram quantiles from raw cumulative scrape samples: deltas, label sums, resets."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from autoglm_trace import schema
from autoglm_trace.analysis.serving_metrics import (
    E2E_LATENCY,
    bucket_quantile,
    find_metric,
    gauge_series,
    histogram_windows,
)

S = 1_000_000_000
M = "vllm:e2e_request_latency_seconds"
LE = ["0.1", "0.5", "1.0", "+Inf"]


def scrape(ts: int, model: str, cum: list[float], total: float) -> list[dict]:
    rows = [{"ts_ns": ts, "url": "u", "metric": f"{M}_bucket",
             "labels": json.dumps({"le": le, "model_name": model}, sort_keys=True), "value": v}
            for le, v in zip(LE, cum, strict=True)]
    rows.append({"ts_ns": ts, "url": "u", "metric": f"{M}_sum", "labels": json.dumps({"model_name": model}),
                 "value": total})
    rows.append({"ts_ns": ts, "url": "u", "metric": f"{M}_count", "labels": json.dumps({"model_name": model}),
                 "value": cum[-1]})
    return rows


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.schema_for("scrape_samples"))


def test_deltas_summed_over_label_sets_per_window():
    rows = []
    # two models; cumulative counts at t = 0, 10, 20 s
    rows += scrape(0, "a", [0, 0, 0, 0], 0.0) + scrape(0, "b", [0, 0, 0, 0], 0.0)
    rows += scrape(10 * S, "a", [10, 10, 10, 10], 0.5) + scrape(10 * S, "b", [0, 0, 10, 10], 8.0)
    rows += scrape(20 * S, "a", [10, 10, 10, 10], 0.5) + scrape(20 * S, "b", [0, 0, 10, 30], 58.0)
    w = histogram_windows(table(rows), M, 10 * S).to_pylist()
    assert [x["window_start_ns"] for x in w] == [0, 10 * S]
    # window 1: 10 fast (<= 0.1) + 10 in (0.5, 1.0]: p50 at the top of the first bucket
    assert w[0]["count"] == 20 and w[0]["sum"] == pytest.approx(8.5)
    assert w[0]["p50"] == pytest.approx(0.1)
    assert w[0]["p90"] == pytest.approx(0.5 + 0.5 * (18 - 10) / 10)
    # window 2: 20 new, all above 1.0 -> the +Inf bucket: the highest finite bound
    assert w[1]["count"] == 20 and w[1]["p50"] == 1.0 and w[1]["mean"] == pytest.approx(50 / 20)


def test_counter_reset_is_a_restart_and_empty_windows_are_null():
    rows = scrape(0, "a", [5, 5, 5, 5], 0.2) + scrape(10 * S, "a", [5, 5, 5, 5], 0.2)
    rows += scrape(20 * S, "a", [1, 2, 2, 2], 0.3)  # engine restarted: 2 requests since
    w = histogram_windows(table(rows), M, 10 * S).to_pylist()
    assert w[0]["count"] == 0 and w[0]["p50"] is None and w[0]["mean"] is None
    assert w[1]["count"] == 2 and w[1]["sum"] == pytest.approx(0.3)
    assert 0.0 <= w[1]["p50"] <= 0.1


def test_helpers():
    rows = scrape(0, "a", [1, 1, 1, 1], 0.05)
    rows.append({"ts_ns": 0, "url": "u", "metric": "vllm:num_requests_running", "labels": "{}", "value": 3.0})
    rows.append({"ts_ns": 5, "url": "u", "metric": "vllm:num_requests_running", "labels": "{}", "value": 4.0})
    t = table(rows)
    assert find_metric(t, E2E_LATENCY) == M
    assert find_metric(t, ["nope"]) is None
    assert gauge_series(t, "vllm:num_requests_running").to_pylist() == [{"ts_ns": 0, "value": 3.0},
                                                                        {"ts_ns": 5, "value": 4.0}]
    assert histogram_windows(t, "missing", S).num_rows == 0
    assert bucket_quantile(0.5, [1.0, math.inf], [0, 0]) is None
    with pytest.raises(ValueError):
        histogram_windows(t, M, 0)
