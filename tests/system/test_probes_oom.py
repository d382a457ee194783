"""An OOM kill inside a v1 memory cgroup: one oom_kills row with the victim, its exit by SIGKILL,
and a recorder that carries on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kernel_harness import KernelRun

from autoglm_trace.target import TargetTree

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT = 100 << 20


@pytest.fixture
def memcg():
    if not (MEMCG_ROOT / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    path = MEMCG_ROOT / f"autoglm-trace-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(LIMIT))
        yield path
    finally:
        # Move anything left back to the root so the directory can go.
        for _ in range(50):
            try:
                pids = (path / "cgroup.procs").read_text().split()
            except OSError:
                break
            for p in pids:
                try:
                    os.kill(int(p), 9)
                except ProcessLookupError:
                    pass
            if not pids:
                break
            time.sleep(0.1)
        path.rmdir()


def test_oom_victim_recorded_and_recorder_survives(tmp_path, memcg):
    code = (
        "import sys\nsys.stdin.readline()\nchunks = []\n"
        "for i in range(400):\n    chunks.append(b'\\x01' * (1 << 20))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid))
    try:
        (memcg / "cgroup.procs").write_text(str(child.pid))
        run.start()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        rc = child.wait(timeout=60)
        t_dead = time.monotonic_ns()
        time.sleep(0.5)  # the recorder keeps sampling after the kill
        rec = run.stop()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        run.probes.stop()
    assert rc == -9

    ooms = [r for r in rec.table("oom_kills").to_pylist() if r["pid"] == child.pid]
    assert len(ooms) == 1, rec.table("oom_kills").to_pylist()
    o = ooms[0]
    assert o["in_target"] is True
    assert o["comm"].startswith("python")
    rss = o["anon_rss_bytes"] + o["file_rss_bytes"] + o["shmem_rss_bytes"]
    assert 0.6 * LIMIT <= rss <= 1.1 * LIMIT, rss
    assert o["total_vm_bytes"] >= o["anon_rss_bytes"]
    assert o["uid"] == 0
    assert o["memcg"] == "/" + memcg.name
    assert o["memcg_limit_bytes"] == LIMIT
    assert o["memcg_usage_bytes"] is not None and o["memcg_usage_bytes"] <= LIMIT

    exits = [r for r in rec.table("proc_events").to_pylist() if r["pid"] == child.pid and r["event"] == "exit"]
    assert len(exits) == 1
    assert exits[0]["signal"] == 9 and exits[0]["exit_code"] is None

    # Hitting the memcg limit made the child reclaim in its own context before the kill.
    reclaim = [r for r in rec.table("reclaim").to_pylist() if r["pid"] == child.pid]
    assert reclaim, "no reclaim stalls recorded for the child"
    assert {r["kind"] for r in reclaim} <= {"direct", "memcg", "memcg_softlimit"}
    assert any(r["kind"] == "memcg" for r in reclaim)
    assert all(r["in_target"] and r["duration_ns"] > 0 and r["ts_ns"] < t_dead for r in reclaim)

    stats = rec.table("probe_stats").to_pylist()
    assert max(r["ts_ns"] for r in stats) > t_dead  # sampling went on after the kill
    oom_stats = [r for r in stats if r["probe"] == "kernel.oom"]
    assert sum(r["events"] for r in oom_stats) >= 1
    assert sum(r["lost"] for r in oom_stats) == 0
