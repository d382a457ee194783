"""``autoglm-trace record`` with the simulated GPU (AUTOGLM_TRACE_NVML=simulated): the GPU tables
hold what the simulated driver served, per-process rows mark the real target, and a CUDA
out-of-memory (GPU full, then the target exits with an error) is recognisable from the recording.

Ground truth: the simulation is a pure function of time since its start (``t0_ns``, kept in the
manifest), so the test rebuilds it and recomputes what was served around each sample's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.probes import nvml_sim
from autoglm_trace.probes.nvml import reason_names

GiB = 1 << 30
PY = sys.executable
# The served values come from the NVML call, a little after the sample's timestamp: allow this much.
SLACK_S = 0.25


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER")}
    env.pop("AUTOGLM_TRACE_NVML_SCENARIO", None)
    env.pop("AUTOGLM_TRACE_NVML_SIM_PIDS", None)
    env["AUTOGLM_TRACE_NVML"] = "simulated"
    env.update(extra)
    return env


def _record(cli, out, target_code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli, "record", "--no-bpf", "-q", "-o", str(out), "--", PY, "-c", target_code],
        env=env, capture_output=True, text=True, timeout=60,
    )


def _rebuild(rec: Recording, scenario) -> tuple[nvml_sim.SimulatedNvml, int]:
    sim_info = rec.manifest["collectors"]["gpu"]["simulation"]
    t0 = int(sim_info["t0_ns"])
    sim = nvml_sim.SimulatedNvml(scenario, clock=lambda: t0)
    root = rec.manifest["target"]["pid"]
    sim.sim_set_target(lambda: [root])
    return sim, t0


def test_record_with_simulated_gpu(tmp_path, cli):
    out = tmp_path / "rec"
    r = _record(cli, out, "import time; time.sleep(7.5)", _env())
    assert r.returncode == 0, r.stderr
    rec = Recording(out)
    gpu = rec.manifest["collectors"]["gpu"]
    assert gpu["status"] == "ok" and gpu["backend"] == "simulated"
    assert [d["uuid"] for d in gpu["devices"]] == [
        "GPU-5133d000-0000-4000-8000-000000000000", "GPU-5133d000-0000-4000-8000-000000000001"]
    sim, t0 = _rebuild(rec, None)

    dev = rec.table("gpu_devices").to_pylist()
    g0 = [row for row in dev if row["gpu"] == 0]
    g1 = [row for row in dev if row["gpu"] == 1]
    assert len(g0) >= 50 and len(g1) == len(g0)
    checked = 0
    for row in g0:
        t = (row["ts_ns"] - t0) / 1e9
        window = [sim.device_state(0, t + d) for d in np.arange(0.0, SLACK_S, 0.005)]
        for c in ("mem_total_bytes", "mem_reserved_bytes", "mem_clock_mhz", "power_limit_mw"):
            assert row[c] == window[0][c], c
        for c in ("mem_used_bytes", "mem_free_bytes", "util_gpu_pct", "temp_c", "energy_mj", "power_mw"):
            vals = [w[c] for w in window]
            assert min(vals) <= row[c] <= max(vals), (c, t, row[c], min(vals), max(vals))
        if 3.0 + SLACK_S <= t < 5.0 - SLACK_S:
            assert "SwPowerCap" in reason_names(row["clocks_event_reasons"]), t
            assert row["sm_clock_mhz"] == 1410
            checked += 1
        elif t < 3.0 - SLACK_S or 5.0 <= t < 8.0 - SLACK_S:
            assert reason_names(row["clocks_event_reasons"]) == [], t
    assert checked >= 10, "the throttle window was sampled"
    # PCIe / ECC come from the side thread about once a second, into some rows only.
    slow0 = [row for row in g0 if row["pcie_tx_kbps"] is not None]
    assert 3 <= len(slow0) <= len(g0) // 5
    assert all(row["ecc_corrected"] is not None for row in slow0)
    # GPU1 (v1 memory): used includes the (zero) reserved memory; no PCIe.
    assert all(row["mem_total_bytes"] == 24 * GiB and row["pcie_tx_kbps"] is None for row in g1)

    ev = rec.table("gpu_events").to_pylist()
    xid = [e for e in ev if e["event"] == "xid"]
    assert [(e["gpu"], e["data"]) for e in xid] == [(0, 31)]
    assert 6.0 <= (xid[0]["ts_ns"] - t0) / 1e9 <= 6.0 + 1.0

    procs = rec.table("gpu_processes").to_pylist()
    root = rec.manifest["target"]["pid"]
    assert {(p["pid"], p["in_target"]) for p in procs if p["gpu"] == 0} == {(root, True), (424242, False)}
    # The simulated model process holds weights + KV cache: 30 GiB + 256 MiB/s after 1 s.
    for p in procs:
        if p["pid"] == root:
            t = (p["ts_ns"] - t0) / 1e9
            lo = sim.device_state(0, t)["processes"][0][1]
            hi = sim.device_state(0, t + SLACK_S)["processes"][0][1]
            assert lo <= p["used_bytes"] <= hi
    # The manifest says what GPU1 does not support, once.
    assert sum("nvmlDeviceGetPcieThroughput" in n for n in rec.manifest["notes"]) == 1


OOM_TARGET = textwrap.dedent(
    """
    import sys, time
    time.sleep(8)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
    """
)


def test_cuda_oom_is_recognisable(tmp_path, cli):
    scen = {"devices": [{"memory_total": 36 * GiB, "memory_reserved": GiB // 2, "weights_bytes": 10 * GiB,
                         "kv_growth_bytes_per_s": 4 * GiB, "kv_start_s": 0.0, "kv_cap_bytes": None,
                         "foreign": [], "throttle": [], "xid": []}]}
    path = tmp_path / "oom.json"
    path.write_text(json.dumps(scen))
    out = tmp_path / "rec"
    r = _record(cli, out, OOM_TARGET, _env(AUTOGLM_TRACE_NVML_SCENARIO=str(path)))
    assert r.returncode == 7, r.stderr  # documented: the recorder succeeded; the target failed
    rec = Recording(out)
    assert rec.manifest["target"]["exit_code"] == 1
    sim, t0 = _rebuild(rec, scen)
    dev = rec.table("gpu_devices").to_pylist()
    full = [d for d in dev if d["mem_free_bytes"] == 0]
    assert full, "the GPU filled up"
    # Full from (36 - 0.5 - 10) / 4 = 6.375 s after the simulation started, then stays full.
    first_full_t = (min(d["ts_ns"] for d in full) - t0) / 1e9
    assert 6.375 - SLACK_S <= first_full_t <= 6.375 + 0.2
    assert all(d["mem_used_bytes"] + d["mem_reserved_bytes"] == d["mem_total_bytes"] for d in full)
    # The target holds the memory, and a time-to-full alert (which needs 5 s of growth) came
    # before it filled.
    root = rec.manifest["target"]["pid"]
    holders = {p["pid"]: p["in_target"] for p in rec.table("gpu_processes").to_pylist()}
    assert holders == {root: True}
    alerts = [a for a in rec.table("alerts").to_pylist() if a["kind"] == "gpu_memory_growth"]
    assert alerts and alerts[0]["ts_ns"] < min(d["ts_ns"] for d in full)
    # The recorder's OOM analysis names it a CUDA out-of-memory at the device limit.
    o = subprocess.run([*cli, "oom", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert o.returncode == 0, o.stderr
    text = o.stdout
    assert '"cuda"' in text and '"gpu_at_limit": true' in text, text[:2000]
