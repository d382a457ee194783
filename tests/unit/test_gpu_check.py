"""bench/gpu_check.sh up to the point where it needs a GPU: without one it says so and exits 77;
its checks (NVML memory vs torch's reserved memory, the CUDA OOM report, the doc section) run on a
synthetic CUDA-OOM recording with a workload log made to match it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoglm_trace.analysis.reader import Recording
from tests.fakes.synthetic import WORKER_PID, Scenario, write_recording

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

MiB = 1 << 20


def _gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(_gpu_present(), reason="an NVIDIA GPU is present: the check would run for real")
@pytest.mark.parametrize("env", [{}, {"AUTOGLM_TRACE_NVML": "simulated"}])
def test_without_a_gpu_it_says_so_and_exits_77(env: dict[str, str]) -> None:
    e = {**os.environ, **env, "PY": sys.executable}
    p = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--doc", "/nonexistent/never-written.md"],
                       capture_output=True, text=True, timeout=120, env=e)
    assert p.returncode == gpu_check.NO_GPU, (p.returncode, p.stderr)
    assert "Nothing was measured" in p.stderr
    assert ("no NVIDIA GPU" in p.stderr) or ("simulated" in p.stderr)
    assert "Traceback" not in p.stderr


def _workload_log(rec_path: Path, log: Path, context_mib: float) -> None:
    """Steps every 0.5 s whose reserved memory is the next NVML sample minus the CUDA context."""
    rec = Recording(rec_path)
    gp = rec.table("gpu_processes")
    pids = gp.column("pid").to_numpy()
    ts = gp.column("ts_ns").to_numpy()[pids == WORKER_PID] + rec.wall_offset_ns
    used = gp.column("used_bytes").to_numpy()[pids == WORKER_PID]
    with log.open("w") as f:
        for i in range(0, len(ts), 5):
            f.write(json.dumps({"wall_ns": int(ts[i] - 50_000_000), "pid": WORKER_PID, "event": "grow",
                                "reserved": int(used[i] - context_mib * MiB), "allocated": 0,
                                "chunk": 1024 * MiB}) + "\n")
        f.write(json.dumps({"wall_ns": int(ts[-1]), "pid": WORKER_PID, "event": "oom",
                            "reserved": int(used[-1] - context_mib * MiB), "chunk": 1024 * MiB}) + "\n")


def test_checks_on_a_recorded_cuda_oom(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_recording(rec, Scenario(kind="cuda_oom", duration_s=60))
    log = tmp_path / "workload.jsonl"
    _workload_log(rec, log, context_mib=420)
    doc = tmp_path / "benchmarks-gpu.md"
    doc.write_text("# GPU\n\nintro\n")
    assert gpu_check.main(["--analyze", str(rec), str(log), "--no-nvml-bench", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# GPU\n\nintro") and "<!-- gpu_check:begin -->" in text and "| CUDA OOM reported by `oom` | pass" in text
    m = gpu_check.check_memory(rec, log)
    assert m["ok"] and abs(m["median_nvml_minus_reserved_mib"] - 420) < 1
    # a second run replaces the section instead of appending another
    assert gpu_check.main(["--analyze", str(rec), str(log), "--no-nvml-bench", "--doc", str(doc)]) == 0
    assert doc.read_text().count("<!-- gpu_check:begin -->") == 1


def test_memory_that_does_not_track_fails(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    write_recording(rec, Scenario(kind="cuda_oom", duration_s=60))
    log = tmp_path / "workload.jsonl"
    _workload_log(rec, log, context_mib=420)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    rng = np.random.default_rng(0)
    for e in lines:
        e["reserved"] = int(rng.uniform(0, 60) * 2**30)  # unrelated to what NVML saw
    log.write_text("".join(json.dumps(e) + "\n" for e in lines))
    doc = tmp_path / "d.md"
    assert gpu_check.main(["--analyze", str(rec), str(log), "--no-nvml-bench", "--doc", str(doc)]) == 1
    assert "FAIL" in doc.read_text()
