"""Signal extraction and spike detection checked against brute-force ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.analysis.spikes import latency_incidents, score_spans
from autoglm_trace.analysis.timeline import Timeline, counter_deltas, in_flight


def test_counter_deltas_per_key_and_resets():
    ts = np.array([3, 1, 2, 1, 2, 3], np.int64)
    key = np.array([1, 1, 1, 2, 2, 2])
    val = np.array([15.0, 10, 12, 100, 5, 7])  # key 2 resets (pid reuse) at ts 2
    dts, d = counter_deltas(ts, key, val)
    got = sorted(zip(dts.tolist(), d.tolist(), strict=True))
    # The one reset rule (autoglm_trace/signals.py, Prometheus' increase()): after a drop the increase is
    # the new value (the new process counted from zero), never negative.
    assert got == [(2, 2.0), (2, 5.0), (3, 2.0), (3, 3.0)]


def test_in_flight_matches_brute_force():
    rng = np.random.default_rng(1)
    tl = Timeline(start_ns=0, end_ns=20_000, width_ns=1000, n=20)
    s = rng.integers(-500, 20_000, 300)
    e = s + rng.integers(0, 4000, 300)
    got = in_flight(tl, s, e)
    grid = np.arange(0, 20_000)  # 1-ns resolution brute force
    open_ = ((grid[None, :] >= s[:, None]) & (grid[None, :] < e[:, None])).sum(axis=0)
    want = open_.reshape(20, 1000).mean(axis=1)
    assert np.allclose(got, want)


def _spans(start_s, lat_s, tokens):
    n = len(start_s)
    return pa.table({
        "ts_ns": (np.asarray(start_s) * 1e9).astype(np.int64),
        "end_ns": ((np.asarray(start_s) + np.asarray(lat_s)) * 1e9).astype(np.int64),
        "name": ["generate"] * n, "source": ["api"] * n, "pid": [1] * n, "tid": [1] * n, "ttft_ns": [None] * n,
        "prompt_tokens": [10] * n, "output_tokens": list(tokens), "ok": [True] * n, "attrs": [None] * n,
    }, schema=schema.schema_for("spans"))


def test_long_requests_are_not_spikes_but_slow_short_ones_are():
    rng = np.random.default_rng(2)
    n = 600
    start = np.sort(rng.uniform(0, 300, n))
    tok = rng.integers(10, 1000, n)
    lat = (0.05 + 0.01 * tok) * rng.lognormal(0, 0.05, n)
    # two slow short requests close together, one far away
    slow = [100, 101, 400]
    tok[slow] = 20
    lat[slow] = (0.05 + 0.01 * 20) * 4  # 1 s: shorter than many normal long requests
    sc = score_spans(_spans(start, lat, tok))
    assert set(np.flatnonzero(sc.slow)) == set(slow)
    assert abs(sc.model[0]["b_ms_per_token"] - 10) < 0.5
    incs = latency_incidents(sc)
    assert [i.n_requests for i in incs] == [2, 1]
    assert incs[0].latency_frac > 0.7  # 4x slower: 75 % of the latency is extra


def test_without_tokens_the_median_is_the_baseline():
    rng = np.random.default_rng(3)
    lat = rng.lognormal(np.log(0.2), 0.05, 200)
    lat[50] = 1.0
    sc = score_spans(_spans(np.arange(200) * 1.0, lat, [None] * 200))
    assert np.flatnonzero(sc.slow).tolist() == [50]
    assert sc.model[0]["model"] == "median"


def test_dedupe_spans_drops_log_copies_of_api_spans():
    from autoglm_trace.analysis.requests import dedupe_spans

    api = _spans([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [10, 10, 10])
    log = _spans([1.01, 2.5, 3.0], [0.5, 0.5, 0.9], [10, 10, 10])
    log = log.set_column(log.schema.get_field_index("source"), "source", pa.array(["log"] * 3))
    out = dedupe_spans(pa.concat_tables([api, log]))
    # the first log row is the api's first request; the other two are different requests
    assert out.num_rows == 5
    assert sorted(out.column("source").to_pylist()) == ["api"] * 3 + ["log"] * 2


def test_col_fills_nan_into_integer_columns_with_nulls():
    import numpy as np
    import pyarrow as pa

    from autoglm_trace.analysis.timeline import col

    t = pa.table({"x": pa.array([1, None, 3], pa.int64())})
    out = col(t, "x", np.float64, np.nan)
    assert out[0] == 1 and np.isnan(out[1]) and out[2] == 3
    assert col(t, "x").tolist() == [1, 0, 3]
