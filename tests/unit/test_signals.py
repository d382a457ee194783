"""The one derivation of signals (autoglm_trace/signals.py): each rule checked against numbers worked
out by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from autoglm_trace import schema
from autoglm_trace.signals import (
    LOG2_FINITE,
    THROTTLE_MASK,
    bucket_quantile,
    column,
    counter_increases,
    counter_rate,
    counter_step,
    human_bytes,
    human_seconds,
    log2_quantile,
    log2_rows,
    log2_sum,
    parse_duration,
    parse_size,
    throttle_labels,
    values,
    window_rate,
)

S = 1_000_000_000


def test_null_rule():
    t = pa.table({"f": pa.array([1.5, None]), "i": pa.array([3, None], pa.int64()),
                  "b": pa.array([True, None])})
    f = column(t, "f")
    assert f[0] == 1.5 and math.isnan(f[1])
    assert column(t, "i", np.int64).tolist() == [3, 0]
    i = column(t, "i")  # an integer column read as float: null is missing, not 0
    assert i[0] == 3.0 and math.isnan(i[1])
    assert column(t, "i", fill=7).tolist() == [3.0, 7.0]
    assert column(t, "b").tolist() == [True, False]
    assert values(t.column("b"), np.int64).tolist() == [1, 0]
    # Integer columns without nulls come back writable (callers clean values in place).
    x = column(pa.table({"c": pa.array([1, 2], pa.int64())}), "c")
    x[0] = -1.0


def test_reset_rule_is_prometheus_increase():
    # A drop is a reset: the increase is the new value (counted from zero), never negative.
    assert counter_step(10.0, 15.0) == 5.0 and counter_step(20.0, 5.0) == 5.0
    assert math.isnan(float(counter_step(np.nan, 5.0)))
    ts = np.array([0, 1, 2, 3], np.int64) * S
    v = np.array([100.0, 130.0, 10.0, 40.0])
    t, dt, inc, _ = counter_increases(ts, v)
    assert inc.tolist() == [30.0, 10.0, 30.0] and dt.tolist() == [S, S, S]
    # Over the window: 70 counted in 3 s.
    assert window_rate(ts, v) == pytest.approx(70 / 3)


def test_null_samples_are_skipped_not_zeroed():
    ts = np.array([0, 1, 2], np.int64) * S
    rts, rate, _ = counter_rate(ts, np.array([10.0, np.nan, 30.0]))
    assert rts.tolist() == [2 * S] and rate.tolist() == [10.0]  # 20 over the 2 s between readings


def test_pairs_never_span_keys():
    ts = np.array([0, 1, 0, 1], np.int64) * S
    key = np.array([1, 1, 2, 2])
    _, rate, k = counter_rate(ts, np.array([0.0, 5.0, 100.0, 101.0]), key)
    assert sorted(zip(k.tolist(), rate.tolist())) == [(1, 5.0), (2, 1.0)]
    assert window_rate(ts, np.array([0.0, 5.0, 100.0, 101.0]), key) == pytest.approx(6.0)
    assert window_rate(ts[:1], np.array([1.0])) is None


def test_log2_rows_pad_cut_and_null():
    col = pa.array([[1, 2], None, list(range(schema.LOG2_BUCKETS + 3))], pa.list_(pa.uint32()))
    m = log2_rows(col)
    assert m.shape == (3, schema.LOG2_BUCKETS)
    assert m[0, :3].tolist() == [1, 2, 0] and m[1].sum() == 0 and m[2, -1] == schema.LOG2_BUCKETS - 1
    chunked = pa.chunked_array([col.slice(0, 1), col.slice(1, 2)])
    assert np.array_equal(log2_sum(chunked), m.sum(axis=0))


def test_quantile_is_histogram_quantile():
    h = np.zeros(schema.LOG2_BUCKETS)
    h[12] = 2  # two waits in [2048, 4096) us
    h[10] = 98
    # rank 99: the first of the two in bucket 12, interpolated half-way.
    assert log2_quantile(h, 0.99) == pytest.approx(3072e-6)
    # The same numbers through the generic rule on Prometheus-style cumulative buckets.
    bounds = [2.0**i * 1e-6 for i in range(13)]
    assert bucket_quantile(0.99, bounds, np.cumsum(h[:13]).tolist()) == pytest.approx(3072e-6)
    # Past the finite buckets (2**25 us): the highest finite bound, as PromQL says over /metrics.
    far = np.zeros(schema.LOG2_BUCKETS)
    far[LOG2_FINITE + 2] = 5
    assert log2_quantile(far, 0.5) == pytest.approx(2.0 ** (LOG2_FINITE - 1) * 1e-6)
    assert log2_quantile(np.zeros(schema.LOG2_BUCKETS), 0.5) is None


def test_nvml_bits_and_units():
    assert throttle_labels(0x4 | 0x40 | 0x1) == ["SW power cap", "HW thermal"]  # idle is not throttling
    assert THROTTLE_MASK == 0x4 | 0x8 | 0x20 | 0x40 | 0x80
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "-" and human_bytes(float("nan"), "–") == "–"
    assert human_bytes(3 * 2**40) == "3.0 TiB" and human_bytes(-2 * 2**30) == "-2.0 GiB"
    assert human_seconds(850e-6) == "850 us" and human_seconds(0.0123) == "12.3 ms" and human_seconds(None) == "-"
    assert parse_duration("1.5h") == 5400 and parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 500_000_000
