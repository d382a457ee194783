"""GrowthEstimator: robust slope, ETA to the limit, rate limiting, bounded windows."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_trace.probes.growth import GrowthEstimator, format_bytes, theil_sen_slope

GiB = 1 << 30
NS = 1_000_000_000


def feed(est: GrowthEstimator, subject: str, samples, limit):
    """samples: iterable of (t_s, value); returns the alerts produced."""
    out = []
    for t, v in samples:
        a = est.observe(subject, int(t * NS), v, limit)
        if a is not None:
            out.append(a)
    return out


def linear(rate: float, start: float = 0.0, t0: float = 0.0, t1: float = 30.0, dt: float = 0.1):
    n = int(round((t1 - t0) / dt))
    return [(t0 + k * dt, start + rate * (t0 + k * dt)) for k in range(n + 1)]


def test_theil_sen_matches_least_squares_on_clean_line():
    t = np.linspace(0, 10, 50)
    v = 3.5 * t + 7
    assert theil_sen_slope(t, v) == pytest.approx(np.polyfit(t, v, 1)[0])


def test_theil_sen_ignores_a_single_spike_that_drags_least_squares():
    t = np.arange(40, dtype=float)
    v = 2.0 * t
    v[-1] += 500.0  # one allocator burst at the end
    ls = np.polyfit(t, v, 1)[0]
    assert abs(ls - 2.0) > 1.0  # least squares is dragged far off
    assert theil_sen_slope(t, v) == pytest.approx(2.0, rel=0.02)


def test_alert_eta_matches_the_arithmetic():
    est = GrowthEstimator(kind="gpu_memory_growth", threshold_s=300)
    limit = 80 * GiB
    alerts = feed(est, "GPU0", linear(GiB, start=30 * GiB, t1=10), limit)
    assert alerts, "1 GiB/s with 40-50 GiB headroom must alert under a 300 s threshold"
    a = alerts[0]
    # First alert needs min_span_s (5 s) of data: value then is 35 GiB, 45 s to go.
    t = a["ts_ns"] / NS
    assert t == pytest.approx(5.0, abs=0.11)
    expected_eta = (limit - (30 * GiB + GiB * t)) / GiB
    assert a["eta_s"] == pytest.approx(expected_eta, rel=1e-6)
    assert a["kind"] == "gpu_memory_growth"
    assert a["subject"] == "GPU0"
    assert a["limit"] == limit
    assert a["value"] == pytest.approx(30 * GiB + GiB * t)
    assert "GPU0 memory full in ~45 s" in a["message"]
    assert "+1.0 GiB/s" in a["message"]


@pytest.mark.parametrize(
    "samples,limit",
    [
        (linear(0.0, start=50 * GiB), 80 * GiB),  # flat
        (linear(-GiB / 10, start=50 * GiB), 80 * GiB),  # shrinking
        (linear(GiB, start=30 * GiB), None),  # no limit known
        (linear(1 << 20, start=30 * GiB), 80 * GiB),  # 1 MiB/s: ETA of hours, over the threshold
    ],
)
def test_no_alert_without_a_near_limit(samples, limit):
    assert feed(GrowthEstimator(), "pid 1", samples, limit) == []


def test_needs_enough_span_before_alerting():
    est = GrowthEstimator(min_span_s=5.0)
    # Steep growth but only 3 s of data: no fit yet.
    assert feed(est, "x", linear(GiB, t1=3.0), 10 * GiB) == []
    assert est.slope("x") is None


def test_rate_limited_to_one_per_repeat_interval():
    est = GrowthEstimator(repeat_s=5.0, threshold_s=1e9)
    # 1 GiB/s toward a far limit (ETA stays within a factor 2 the whole time): 5..30 s.
    alerts = feed(est, "GPU0", linear(GiB, t1=30.0), 10_000 * GiB)
    times = [a["ts_ns"] / NS for a in alerts]
    assert times[0] == pytest.approx(5.0, abs=0.11)
    assert len(alerts) == 6  # 5, 10, 15, 20, 25, 30
    assert all(b - a >= 5.0 - 1e-6 for a, b in zip(times, times[1:], strict=False))


def test_eta_halving_alerts_at_once():
    est = GrowthEstimator(repeat_s=60.0, threshold_s=300)
    limit = 100 * GiB
    # 1 GiB/s from 0 (ETA ~95 s at 5 s), then the growth turns steep: 20 GiB/s.
    slow = linear(GiB, t1=6.0)
    fast = [(6.0 + k * 0.1, 6 * GiB + 20 * GiB * k * 0.1) for k in range(1, 30)]
    alerts = feed(est, "GPU0", slow + fast, limit)
    assert len(alerts) >= 2, "a halved ETA must alert before repeat_s (60 s) has passed"
    assert alerts[1]["eta_s"] <= alerts[0]["eta_s"] / 2
    assert alerts[1]["ts_ns"] / NS < 6.0 + 60.0


def test_condition_clearing_resets_the_rate_limit():
    est = GrowthEstimator(repeat_s=1000.0, window_s=10.0)
    limit = 100 * GiB
    up = linear(GiB, t1=10.0)
    flat = [(10.0 + k * 0.1, 10 * GiB) for k in range(1, 200)]  # 20 s flat: slope -> 0
    up2 = [(30.0 + k * 0.1, 10 * GiB + GiB * k * 0.1) for k in range(1, 100)]
    alerts = feed(est, "s", up + flat + up2, limit)
    times = [a["ts_ns"] / NS for a in alerts]
    # One alert in the first rise, none while flat, and the second rise alerts again at once
    # (its ETA may halve again while the slope settles: that can add alerts, never remove one).
    assert times[0] < 10, times
    assert not [t for t in times if 10 <= t <= 30], times
    assert len(times) >= 2 and times[1] > 30, times


def test_window_and_memory_are_bounded():
    est = GrowthEstimator(window_s=30.0, max_points=500)
    feed(est, "s", linear(1.0, t1=120.0, dt=0.01), None)  # 12,000 samples
    pts = est._series["s"].points
    assert len(pts) <= 500
    assert pts[-1][0] - pts[0][0] <= 30.0


def test_time_going_backwards_restarts_the_series():
    est = GrowthEstimator()
    feed(est, "s", linear(GiB, t1=10.0), 100 * GiB)
    est.observe("s", 1 * NS, 1.0, 100 * GiB)
    assert len(est._series["s"].points) == 1


def test_at_limit_message_and_subjects_are_independent():
    est = GrowthEstimator(what="RSS")
    a = feed(est, "pid 7", [(t, 90.0 + t) for t in np.arange(0, 12, 0.5)], 100.0)
    assert a[-1]["eta_s"] == 0.0
    assert "at its limit" in a[-1]["message"]
    assert "pid 7 RSS" in a[-1]["message"]
    assert feed(est, "pid 8", [(t, 1.0) for t in np.arange(0, 12, 0.5)], 100.0) == []
    est.forget("pid 7")
    assert est.slope("pid 7") is None


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(1.2 * GiB) == "1.2 GiB"
    assert format_bytes(-2 * GiB) == "-2.0 GiB"
