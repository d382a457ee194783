"""`record --ring -- CMD`: a spawned target's CUDA OOM text and its bad exit each save a snapshot
(no root: /proc sampler only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from autoglm_trace.analysis.reader import Recording

TARGET = (
    "import sys, time\n"
    "time.sleep(1.5)\n"
    "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr, flush=True)\n"
    "time.sleep(2.5)\n"
    "sys.exit(3)\n"
)


def test_cuda_oom_text_and_bad_exit_of_a_spawned_target(cli: list[str], tmp_path: Path):
    out = tmp_path / "flight"
    r = subprocess.run([*cli, "record", "--ring", "30s", "-o", str(out), "--tail", "0.5", "--no-bpf", "--no-gpu",
                        "--", sys.executable, "-c", TARGET], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert [p.name.rsplit("-", 1)[-1] for p in snaps] == ["exit", "exit"], (snaps, r.stderr)
    first, last = (Recording(p) for p in snaps)
    assert "CUDA out of memory" in first.manifest["trigger"]["detail"]
    assert "exit code 3" in last.manifest["trigger"]["detail"]
    assert last.manifest["flight"]["cut_short"] is True  # the session ended with the target
    assert last.manifest["target"]["exit_code"] == 3
    # Both hold the target's /proc samples from its start (the ring is longer than its life).
    for rec in (first, last):
        assert rec.complete
        pids = set(rec.table("proc_samples").column("pid").to_pylist())
        assert rec.target["pid"] in pids
    assert last.table("proc_samples").num_rows > first.table("proc_samples").num_rows
    assert "saved" in r.stderr and "stopped (target exited): 2 snapshot(s) saved" in r.stderr
