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
