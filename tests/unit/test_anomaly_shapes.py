"""Anomaly shapes: a hog that starts mid-run and stays is ONE sustained-shift incident measured against
the time before it; a periodic stall is ONE periodic incident with its period; noise is neither."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_trace.analysis import shapes
from autoglm_trace.analysis.diagnosis import diagnose
from autoglm_trace.analysis.reader import Recording
from tests.fakes.synthetic import CULPRITS, Scenario, write_recording

S = 1_000_000_000


def _diag(tmp_path, sc: Scenario) -> dict:
    write_recording(tmp_path / "rec", sc)
    return diagnose(Recording(tmp_path / "rec"))


@pytest.mark.parametrize("kind,cause", [("cpu", "cpu_contention"), ("io", "io_wait")])
@pytest.mark.parametrize("seed", [0, 1])
def test_hog_to_the_end_is_one_shift(tmp_path, kind, cause, seed):
    d = _diag(tmp_path, Scenario(kind=kind, incident_start_s=25, incident_len_s=60, slowdown=2.0, seed=seed))
    assert len(d["incidents"]) == 1, [i["headline"] for i in d["incidents"]]
    inc = d["incidents"][0]
    assert inc["shape"] == "shift" and inc["shape_info"]["to_end"]
    assert 23 <= inc["shape_info"]["from_s"] <= 27
    info = inc["shape_info"]
    assert info["ratio"] == pytest.approx(2.0, rel=0.2)  # size-normalised; raw p50s move with the mix
    assert info["p50_after_ms"] > 1.4 * info["p50_before_ms"]
    assert "sustained shift from +2" in inc["headline"] and "to the end" in inc["headline"]
    top = inc["causes"][0]
    assert top["kind"] == cause, inc["headline"]
    assert top["culprits"][0]["pid"] == CULPRITS[kind][0]


def test_mild_shift_is_found_and_the_baseline_is_before_it(tmp_path):
    d = _diag(tmp_path, Scenario(kind="cpu", incident_start_s=30, incident_len_s=60, slowdown=1.5))
    (inc,) = d["incidents"]
    assert inc["shape"] == "shift"
    ev = inc["causes"][0]["evidence"]["runq_wait"]
    # the baseline is the run-queue wait before the hog, not a mix with the hog's windows
    assert ev["ratio"] > 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_periodic_stall_is_one_finding_with_its_period_and_culprit(tmp_path, seed):
    sc = Scenario(kind="cpu", incident_start_s=3, incident_len_s=56, extra={"period_s": 2.0, "stall_s": 0.3},
                  seed=seed)
    d = _diag(tmp_path, sc)
    per = [i for i in d["incidents"] if i["shape"] == "periodic"]
    assert len(per) == 1, [i["headline"] for i in d["incidents"]]
    assert len(d["incidents"]) == 1, [i["headline"] for i in d["incidents"]]
    info = per[0]["shape_info"]
    assert info["period_s"] == pytest.approx(2.0, abs=0.1)
    assert info["jitter_s"] < 0.2
    assert 150 <= info["stall_ms"] <= 450
    assert "periodic stalls every 2.0 s" in per[0]["headline"]
    top = per[0]["causes"][0]
    assert top["kind"] == "cpu_contention", per[0]["headline"]
    assert top["culprits"][0]["pid"] == CULPRITS["cpu"][0]


def test_a_six_second_hog_stays_a_spike(tmp_path):
    d = _diag(tmp_path, Scenario(kind="cpu"))
    assert [i["shape"] for i in d["incidents"]] == ["spike"]


def test_shapes_reject_noise():
    rng = np.random.default_rng(3)
    fp_shift = fp_periodic = 0
    for _ in range(30):
        t = np.sort(rng.uniform(0, 60, 400))
        lat = 0.15 * rng.lognormal(0, 0.25, len(t))
        lat *= np.where(rng.uniform(size=len(t)) < 0.05, 1.8, 1.0)  # random slow requests
        x = np.log(lat / np.median(lat))
        s, e = (t * S).astype(np.int64), ((t + lat) * S).astype(np.int64)
        fp_shift += shapes.find_shift(s, e, x) is not None
        fp_periodic += shapes.find_periodic(s, e, x, int(0.15 * S)) is not None
    assert fp_shift == 0 and fp_periodic <= 1


def test_shift_that_comes_back_is_bounded():
    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(0, 100, 800))
    lat = 0.1 * rng.lognormal(0, 0.1, len(t)) * np.where((t > 30) & (t < 70), 2.0, 1.0)
    x = np.log(lat / 0.1)
    sh = shapes.find_shift((t * S).astype(np.int64), ((t + lat) * S).astype(np.int64), x)
    assert sh is not None and not sh.to_end
    assert 29 <= sh.start_ns / S <= 31 and 69 <= sh.end_ns / S <= 71.5
    assert sh.ratio == pytest.approx(2.0, rel=0.1)


# ------------------------------------------------------------------------------------------------
# resource-only recordings (no spans, no latency log, no scrape): shapes on the stall signals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,cause", [("cpu", "cpu_contention"), ("io", "io_wait")])
@pytest.mark.parametrize("seed", [0, 1])
def test_resource_only_hog_to_the_end_is_one_shift(tmp_path, kind, cause, seed):
    d = _diag(tmp_path, Scenario(kind=kind, incident_start_s=25, incident_len_s=60, slowdown=2.0, seed=seed,
                                 spans=False))
    assert d["requests"] is None
    assert len(d["incidents"]) == 1, [i["headline"] for i in d["incidents"]]
    inc = d["incidents"][0]
    assert (inc["shape"], inc["kind"], inc["latency_source"]) == ("shift", "resource", "resource")
    info = inc["shape_info"]
    assert info["to_end"] and 23 <= info["from_s"] <= 27 and info["ratio"] >= 2
    assert "sustained shift from +2" in inc["headline"] and "no request latency" in inc["headline"]
    top = inc["causes"][0]
    assert top["kind"] == cause, inc["headline"]
    assert top["culprits"][0]["pid"] == CULPRITS[kind][0]


@pytest.mark.parametrize("period,stall", [(2.0, 0.3), (4.0, 0.6)])
def test_resource_only_periodic_stall_is_one_finding(tmp_path, period, stall):
    sc = Scenario(kind="cpu", incident_start_s=3, incident_len_s=56, extra={"period_s": period, "stall_s": stall},
                  spans=False)
    d = _diag(tmp_path, sc)
    assert [i["shape"] for i in d["incidents"]] == ["periodic"], [i["headline"] for i in d["incidents"]]
    inc = d["incidents"][0]
    assert inc["shape_info"]["period_s"] == pytest.approx(period, abs=0.15)
    assert f"every {period:.1f} s" in inc["headline"]
    top = inc["causes"][0]
    assert top["kind"] == "cpu_contention" and top["culprits"][0]["pid"] == CULPRITS["cpu"][0], inc["headline"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resource_only_clean_and_short_hog(tmp_path, seed):
    assert _diag(tmp_path / "c", Scenario(kind="clean", spans=False, seed=seed))["incidents"] == []
    d = _diag(tmp_path / "s", Scenario(kind="cpu", spans=False, seed=seed))
    assert [i["shape"] for i in d["incidents"]] == ["spike"]


def test_resource_shift_rejects_noisy_stall_signals():
    from autoglm_trace.analysis.anomalies import resource_shift
    from autoglm_trace.analysis.timeline import Signal, Timeline

    rng = np.random.default_rng(7)
    false = 0
    for _ in range(200):
        n = int(rng.integers(20, 120))
        tl = Timeline(0, n * S, S, n)
        # heavy-tailed run-queue wait with bursts: no regime change
        v = rng.lognormal(np.log(2e7), 1.0, n) * np.where(rng.random(n) < 0.1, 8, 1)
        tl.add(Signal("runq_wait", v, "ns/window", "sched", "target", "run-queue wait", floor=1e6, stall=True))
        false += resource_shift(tl) is not None
    assert false <= 4, false


def test_mild_shift_located_by_a_stall_signal(tmp_path):
    """1.2x slower from +30 s: too mild for the change-point search on the requests alone, but the
    run-queue wait says when it began, and the requests are tested at that point."""
    d = _diag(tmp_path, Scenario(kind="cpu", incident_start_s=30, incident_len_s=60, slowdown=1.2))
    (inc,) = d["incidents"]
    assert inc["shape"] == "shift" and inc["shape_info"]["located_by"] == "runq_wait"
    assert 28 <= inc["shape_info"]["from_s"] <= 31
    assert inc["causes"][0]["culprits"][0]["pid"] == CULPRITS["cpu"][0]
    assert _diag(tmp_path / "c", Scenario(kind="clean"))["incidents"] == []


def test_a_slow_warm_up_does_not_hide_a_shift():
    """The first requests of a server are slow (warm-up); a shift later is still one level change,
    and short noisy series with random slow requests and a warm-up give no false shift."""
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 28, 80))
    lat = 0.1 * rng.lognormal(0, 0.3, len(t)) * np.where(t > 10, 1.5, 1.0)
    lat[:4] *= 2.0
    x = np.log(lat / np.median(lat))
    sh = shapes.find_shift((t * S).astype(np.int64), ((t + lat) * S).astype(np.int64), x)
    assert sh is not None and sh.to_end and 9 <= sh.start_ns / S <= 11.5
    false = 0
    for _ in range(300):
        n = int(rng.integers(40, 200))
        t = np.sort(rng.uniform(0, 30, n))
        lat = 0.1 * rng.lognormal(0, rng.uniform(0.15, 0.45), n)
        lat *= np.where(rng.uniform(size=n) < 0.08, rng.uniform(1.5, 3.5, n), 1.0)
        lat[:3] *= 1.5
        x = np.log(lat / np.median(lat))
        false += shapes.find_shift((t * S).astype(np.int64), ((t + lat) * S).astype(np.int64), x) is not None
    assert false <= 3, false
