"""diff_recordings(): quantile confidence intervals and the regression's likely cause."""

from __future__ import annotations

import json

import numpy as np

from autoglm_trace.analysis.diff import diff_recordings, quantile_ci
from autoglm_trace.analysis.reader import Recording
from tests.fakes.synthetic import Scenario, write_recording


def test_quantile_ci_covers_the_true_quantile():
    rng = np.random.default_rng(0)
    for q in (0.5, 0.9, 0.99):
        true = -np.log(1 - q)  # exponential(1) quantile
        hits = 0
        for _ in range(200):
            est, lo, hi = quantile_ci(rng.exponential(1.0, 2000), q)
            assert lo <= est <= hi
            hits += lo <= true <= hi
        assert hits >= 180, (q, hits)  # nominal 95 %; order-statistic intervals are slightly wide


def test_regression_is_found_and_attributed(tmp_path):
    write_recording(tmp_path / "base", Scenario(kind="clean", seed=1))
    write_recording(tmp_path / "new", Scenario(kind="cpu", seed=2, incident_start_s=5, incident_len_s=50))
    d = diff_recordings(Recording(tmp_path / "base"), Recording(tmp_path / "new"))
    json.dumps(d)
    assert d["regressed"] is True
    assert d["latency"]["p50"]["significant"] and d["latency"]["p50"]["ratio"] > 2
    assert d["likely_cause"]["kind"] == "cpu_contention"
    top = d["signals"][0]
    assert top["worse"] and top["cause_kind"] == "cpu_contention"
    assert top["normalised"] == "per_request"


def test_same_workload_is_not_a_regression(tmp_path):
    write_recording(tmp_path / "a", Scenario(kind="clean", seed=3))
    write_recording(tmp_path / "b", Scenario(kind="clean", seed=4))
    d = diff_recordings(Recording(tmp_path / "a"), Recording(tmp_path / "b"))
    assert d["regressed"] is False
    assert not any(s["worse"] for s in d["signals"] if s["scope"] == "target" and s["unit"] == "ms/request")


def test_diff_reports_signals_missing_on_one_side(tmp_path):
    write_recording(tmp_path / "a", Scenario(kind="clean", seed=3))
    write_recording(tmp_path / "b", Scenario(kind="clean", seed=4, gpu=False))
    d = diff_recordings(Recording(tmp_path / "a"), Recording(tmp_path / "b"))
    missing = {n["signal"] for n in d["not_checked"]}
    assert "gpu_util" in missing
    assert all(not s["signal"].startswith("gpu_") for s in d["signals"])


def test_a_request_in_both_the_span_api_and_the_latency_log_counts_once(tmp_path):
    """The recorder stores the span API's requests and the server's latency log in one ``spans`` table;
    diff counts each request once, as the diagnosis does (one derivation: analysis/requests.py)."""
    import pyarrow as pa

    from autoglm_trace.analysis.requests import request_spans

    for name, seed in (("a", 3), ("b", 4)):
        write_recording(tmp_path / name, Scenario(kind="clean", seed=seed))
        rec = Recording(tmp_path / name)
        api = rec.table("spans")
        log = api.set_column(api.schema.get_field_index("source"), "source", pa.array(["log"] * api.num_rows))
        both = pa.concat_tables([api, log])
        path = rec.table_path("spans")
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, both.schema) as w:
            w.write_table(both)
    ra, rb = Recording(tmp_path / "a"), Recording(tmp_path / "b")
    assert ra.table("spans").num_rows == 2 * request_spans(ra)[0].num_rows
    d = diff_recordings(ra, rb)
    assert d["base"]["requests"] == request_spans(ra)[0].num_rows
    assert d["latency"]["base_count"] == d["base"]["requests"]
    assert d["new"]["requests"] == request_spans(rb)[0].num_rows
