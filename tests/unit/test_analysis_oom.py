"""oom_postmortem(): host / memcg / CUDA OOMs, the victim, the limit and leak vs load verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoglm_trace.analysis.oom import EngineLoad, growth_verdict, oom_postmortem
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


@pytest.mark.parametrize("engine,old", [("vllm", False), ("vllm", True), ("sglang", False)])
def test_engine_kv_usage_decides_leak_vs_load_without_spans(tmp_path, engine, old):
    """Only ``record --scrape`` tells the load: memory that follows the engine's KV-cache usage is
    load; memory that grows beyond it (or while it stays flat) is a leak."""
    ex = {"engine": engine, "old_names": old}
    write_recording(tmp_path / "kv", Scenario(kind="kv_oom", duration_s=120, spans=False, extra=ex))
    k = oom_postmortem(Recording(tmp_path / "kv"))["kills"][0]
    assert k["verdict"] == "kv_cache_growth", k["verdict_reason"]
    kv_name = {"vllm": "vllm:gpu_cache_usage_perc" if old else "vllm:kv_cache_usage_perc",
               "sglang": "sglang:token_usage"}[engine]
    assert k["verdict_evidence"]["kv_metric"] == kv_name and kv_name in k["verdict_reason"]
    assert k["verdict_evidence"]["kv_correlation"] > 0.5
    write_recording(tmp_path / "leak", Scenario(kind="leak_oom", duration_s=120, spans=False, extra=ex))
    k = oom_postmortem(Recording(tmp_path / "leak"))["kills"][0]
    assert k["verdict"] == "leak", k["verdict_reason"]
    assert "beyond what the engine's KV-cache usage" in k["verdict_reason"]
    write_recording(tmp_path / "flat", Scenario(kind="leak_oom", duration_s=120, spans=False,
                                                extra={**ex, "kv": "flat"}))
    k = oom_postmortem(Recording(tmp_path / "flat"))["kills"][0]
    assert k["verdict"] == "leak" and "stayed flat at 40%" in k["verdict_reason"], k["verdict_reason"]
    # without the scrape, the same recording only shows steady growth
    write_recording(tmp_path / "none", Scenario(kind="leak_oom", duration_s=120, spans=False))
    k = oom_postmortem(Recording(tmp_path / "none"))["kills"][0]
    assert k["verdict"] == "steady_growth", k["verdict_reason"]


def test_growth_verdict_with_engine_kv_usage():
    t = (np.arange(400) * 250_000_000).astype(np.int64)
    secs = t / 1e9
    none = np.empty(0, np.int64)
    # KV usage that rises steadily (no request ever finishes): memory following it is load, where
    # the rolling floor alone could only say steady_growth
    kv = 0.1 + 0.8 * secs / secs[-1]
    mem = 1e9 + 2e9 * kv
    assert growth_verdict(t, mem, none, none)["verdict"] == "steady_growth"
    eng = EngineLoad(t[::4], kv[::4], "vllm:kv_cache_usage_perc")
    assert growth_verdict(t, mem, none, none, eng)["verdict"] == "kv_cache_growth"
    # KV usage going up and down while memory only climbs: a leak
    wave = 0.5 + 0.3 * np.sin(secs / 5)
    eng = EngineLoad(t[::4], wave[::4], "vllm:kv_cache_usage_perc")
    leak = 1e9 + 2e7 * secs + 2e8 * wave
    v = growth_verdict(t, leak, none, none, eng)
    assert v["verdict"] == "leak" and v["trend_beyond_kv_bytes"] > 1.5e9, v
    # memory that neither grows nor follows KV usage: no verdict invented from it
    flat = 1e9 + np.random.default_rng(1).normal(0, 1e6, len(t))
    assert growth_verdict(t, flat, none, none, eng)["verdict"] == "unknown"
    # the engine's running requests are the load when there are no spans: idle floors from them
    busy = (secs % 20) < 12
    eng = EngineLoad(running_ts=t[::4], running=np.where(busy, 3.0, 0.0)[::4])
    assert growth_verdict(t, 1e9 + np.where(busy, 5e8, 0), none, none, eng)["verdict"] == "kv_cache_growth"
    assert growth_verdict(t, 1e9 + np.where(busy, 5e8, 0) + secs * 2e7, none, none, eng)["verdict"] == "leak"


def test_oom_latency_option_is_analyzes(tmp_path, capsys):
    """``oom --latency FILE`` takes the log ``analyze --latency`` takes (one option definition) and
    uses its requests as the load; a bad log is one line, exit 2."""
    from autoglm_trace.tracer.cli import main as cli
    from autoglm_trace.tracer.commands import _latency, analyze, oom

    assert oom.add_latency_option is analyze.add_latency_option is _latency.add_latency_option
    write_recording(tmp_path / "r", Scenario(kind="kv_oom", duration_s=120, spans=False))
    assert oom_postmortem(Recording(tmp_path / "r"))["kills"][0]["verdict"] == "unknown"  # no load known
    # the same requests, as a server's latency log
    write_recording(tmp_path / "with", Scenario(kind="kv_oom", duration_s=120))
    rec = Recording(tmp_path / "with")
    log = tmp_path / "requests.jsonl"
    with log.open("w") as f:
        for s in rec.table("spans").to_pylist():
            f.write(json.dumps({"start": (s["ts_ns"] + rec.wall_offset_ns) / 1e9,
                                "end": (s["end_ns"] + rec.wall_offset_ns) / 1e9}) + "\n")
    assert cli(["oom", str(tmp_path / "r"), "--latency", str(log), "--json"]) == 0
    k = json.loads(capsys.readouterr().out)["kills"][0]
    assert k["verdict"] == "kv_cache_growth", k["verdict_reason"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    for cmd in ("oom", "analyze"):
        rc = cli([cmd, str(tmp_path / "r"), "--latency", str(bad)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and f"error: {cmd}: --latency" in err, err
