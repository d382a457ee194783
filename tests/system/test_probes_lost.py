"""Loss accounting: a one-page perf buffer flooded with process events loses some, and says so."""

from __future__ import annotations

import subprocess

import pytest
from kernel_harness import KernelRun

from autoglm_trace.target import TargetTree

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

FORKS = 1500


def test_tiny_perf_buffer_reports_lost_events(tmp_path):
    # Each iteration forks and execs /bin/true: fork, exec and exit events for the target tree,
    # thousands per second against a buffer drained every 100 ms that holds a few dozen.
    child = subprocess.Popen(
        ["/bin/sh", "-c", f"read x; i=0; while [ $i -lt {FORKS} ]; do /bin/true; i=$((i+1)); done"],
        stdin=subprocess.PIPE, text=True,
    )
    run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid), {"perf_pages": 1, "families": ["proc"]})
    try:
        run.start()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
        rec = run.stop()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        run.probes.stop()

    stats = [r for r in rec.table("probe_stats").to_pylist() if r["probe"] == "kernel.proc"]
    lost = sum(r["lost"] for r in stats)
    handled = sum(r["events"] for r in stats)
    assert lost > 0
    assert all("perf_buffer=" in r["reason"] for r in stats if r["lost"])
    assert run.probes.status()["lost"] == lost
    # What arrived plus what was lost accounts for every event the kernel handled.
    events = rec.table("proc_events").to_pylist()
    assert len(events) + lost == handled, (len(events), lost, handled)
    assert handled >= 3 * FORKS
