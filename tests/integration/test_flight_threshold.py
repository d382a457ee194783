"""`record --ring --trigger-expr`: a threshold on a metric saves one snapshot when it is crossed.

GPU memory comes from the simulated NVML backend (probes/nvml_sim.py, the sanctioned fake): a KV
cache growing 8 GiB/s on a 40 GiB device. No root needed (/proc sampler + NVML sampler).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording

GiB = 1 << 30


def test_gpu_memory_threshold_saves_one_snapshot_at_the_crossing(cli: list[str], tmp_path: Path):
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"devices": [{
        "memory_total": 40 * GiB, "memory_reserved": 0, "weights_bytes": 16 * GiB,
        "kv_growth_bytes_per_s": 8 * GiB, "kv_start_s": 0.5, "kv_cap_bytes": None}]}))
    env = {**os.environ, "AUTOGLM_TRACE_NVML": "simulated", "AUTOGLM_TRACE_NVML_SCENARIO": str(scenario)}
    out = tmp_path / "flight"
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(out), "--no-bpf", "--trigger", "threshold",
                        "--trigger-expr", "gpu_mem_used_frac>0.9", "--tail", "0.5", "--duration", "7"],
                       capture_output=True, text=True, timeout=90, env=env)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    # Edge-triggered: the memory stays above 90 % once there, yet only one snapshot.
    assert len(snaps) == 1 and snaps[0].name.endswith("-threshold"), (snaps, r.stderr)
    rec = Recording(snaps[0])
    trig = rec.manifest["trigger"]
    assert trig["detail"].startswith("gpu_mem_used_frac>0.9 (now ")
    g = rec.table("gpu_devices")
    frac = pc.divide(pc.cast(g.column("mem_used_bytes"), "double"), pc.cast(g.column("mem_total_bytes"), "double"))
    ts = g.column("ts_ns").to_pylist()
    fr = frac.to_pylist()
    first_over = min(t for t, f in zip(ts, fr) if f > 0.9)
    # It fired after the first sample over the threshold and within the once-a-second evaluation.
    assert first_over <= trig["ts_ns"] <= first_over + 1_300_000_000, (first_over, trig["ts_ns"])
    # The snapshot holds the climb before the crossing (the ring) and samples after it (the tail).
    assert min(fr) < 0.6 and max(fr) > 0.9
    assert min(ts) < trig["ts_ns"] < max(ts)
    value = float(trig["detail"].split("(now ")[1].rstrip(")"))
    assert 0.9 < value <= 1.0
