"""oom_postmortem(): host / memcg / CUDA OOMs, the victim, the limit and leak vs load verdicts."""

from __future__ import annotations

import json

import numpy as np

from autoglm_trace.analysis.oom import growth_verdict, oom_postmortem
from autoglm_trace.analysis.reader import Recording
from tests.fakes.synthetic import MEMCG_LIMIT, WORKER_PID, Scenario, write_recording

KEYS = {"pid", "comm", "time", "ts_ns", "kind", "in_target", "rss_bytes", "gpu_bytes", "limit_bytes",
        "growth_bytes_per_s", "verdict"}


def test_leak_to_memcg_oom(tmp_path):
    truth = write_recording(tmp_path / "r", Scenario(kind="leak_oom", duration_s=120))
    d = oom_postmortem(Recording(tmp_path / "r"))
    json.dumps(d)
    assert len(d["kills"]) == 1
    k = d["kills"][0]
    assert set(k) >= KEYS
    assert (k["pid"], k["kind"], k["in_target"], k["ts_ns"]) == (WORKER_PID, "memcg", True, truth["kill_ns"])
    assert k["limit_bytes"] == MEMCG_LIMIT and k["memcg"] == "/llm"
    assert k["verdict"] == "leak"
    # the synthetic leak is 3 GiB over 108 s (~28 MiB/s) plus load noise
    assert 15 * 2**20 < k["growth_bytes_per_s"] < 45 * 2**20


def test_kv_cache_growth_is_not_called_a_leak(tmp_path):
    write_recording(tmp_path / "r", Scenario(kind="kv_oom", duration_s=120))
    k = oom_postmortem(Recording(tmp_path / "r"))["kills"][0]
    assert k["verdict"] == "kv_cache_growth", k["verdict_reason"]
    assert k["verdict_evidence"]["load_correlation"] > 0.5


def test_cuda_oom_from_stderr(tmp_path):
    truth = write_recording(tmp_path / "r", Scenario(kind="cuda_oom", duration_s=120))
    d = oom_postmortem(Recording(tmp_path / "r"))
    (k,) = d["kills"]
    assert k["kind"] == "cuda" and k["pid"] == 1000 and k["ts_ns"] == truth["kill_ns"]
    assert k["gpu_at_limit"] is True
    assert k["limit_bytes"] == 80 * 2**30
    assert k["gpu_bytes"] > 70 * 2**30
    assert any("CUDA out of memory" in s for s in k["stderr"])


def test_clean_and_missing_tables(tmp_path):
    write_recording(tmp_path / "clean", Scenario(kind="clean"))
    assert oom_postmortem(Recording(tmp_path / "clean"))["kills"] == []
    write_recording(tmp_path / "nobpf", Scenario(kind="leak_oom", duration_s=120, bpf=False))
    d = oom_postmortem(Recording(tmp_path / "nobpf"))
    assert d["kills"] == []
    assert any(n["signal"] == "oom_kills" for n in d["not_checked"])


def test_growth_verdict_rules():
    t = (np.arange(400) * 250_000_000).astype(np.int64)  # 100 s at 4 Hz
    secs = t / 1e9
    busy = (secs % 20) < 12
    # requests: one long request per busy period
    starts = (np.arange(5) * 20e9).astype(np.int64)
    ends = starts + int(12e9)
    kv = 1e9 + np.where(busy, 5e8, 0)
    assert growth_verdict(t, kv, starts, ends)["verdict"] == "kv_cache_growth"
    leak = kv + secs * 2e7
    assert growth_verdict(t, leak, starts, ends)["verdict"] == "leak"
    # without request timings (or without a pause in them) a rising floor is only steady growth
    assert growth_verdict(t, leak, np.empty(0), np.empty(0))["verdict"] == "steady_growth"
    assert growth_verdict(t, leak, np.array([0]), np.array([t[-1] + 1]))["verdict"] == "steady_growth"
    # the warm-up before the first request is not an idle floor
    busy_late = (secs >= 10) & (((secs - 10) % 20) < 12)
    warm = np.where(secs < 10, 1e8, 1e9 + np.where(busy_late, 5e8, 0))
    starts_late = (10e9 + np.arange(5) * 20e9).astype(np.int64)
    v = growth_verdict(t, warm, starts_late, starts_late + int(12e9))
    assert v["verdict"] == "kv_cache_growth", v
    sudden = np.where(secs > 97, 3e9, 1e9)
    assert growth_verdict(t, sudden, starts, ends)["verdict"] == "sudden_allocation"
    assert growth_verdict(t[:3], kv[:3], starts, ends)["verdict"] == "unknown"


def test_victim_outside_target_gets_no_invented_verdict(tmp_path):
    write_recording(tmp_path / "r", Scenario(kind="leak_oom", duration_s=120, extra={"victim_outside": True}))
    (k,) = oom_postmortem(Recording(tmp_path / "r"))["kills"]
    assert (k["pid"], k["kind"], k["in_target"]) == (8888, "host", False)
    assert k["verdict"] == "unknown" and "outside the target" in k["verdict_reason"]
    assert k["limit_bytes"] == 24 * 2**30  # host kill: MemTotal
