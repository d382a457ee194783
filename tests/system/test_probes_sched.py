"""Context switches against /proc/PID/status, and the CPU hog named as the top preemptor."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from kernel_harness import GatedChild, KernelRun, status_counts

from autoglm_trace.target import TargetTree


def schedstat(pid: int) -> tuple[int, int, int]:
    """sum_exec_runtime, run_delay and pcount of the process's main thread (fs/proc/base.c
    proc_pid_schedstat): on-CPU time, run-queue wait and arrivals as the scheduler counts them."""
    with open(f"/proc/{pid}/schedstat") as f:
        a, b, c = f.read().split()[:3]
    return int(a), int(b), int(c)


def oncpu_ns(pid: int) -> int:
    return schedstat(pid)[0]

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

SLEEPS = 100
# Busy ~8 ms (wall, longer than a scheduler slice), then sleep 1 ms, SLEEPS times, on the hog's CPU.
WORK = f"""
for i in range({SLEEPS}):
    t = time.perf_counter()
    while time.perf_counter() - t < 0.008:
        pass
    time.sleep(0.001)
"""


def test_switch_counts_match_proc_and_hog_is_top_preemptor(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    child = GatedChild(WORK)
    run = None
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        # A heavier hog dominates the CPU even on a host busy with other work.
        os.setpriority(os.PRIO_PROCESS, hog.pid, -10)
        os.sched_setaffinity(child.pid, {cpu})
        run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid), {"families": ["sched", "proc"]})
        run.start()
        vol0, inv0 = status_counts(child.pid)
        run0, delay0, arrivals0 = schedstat(child.pid)
        child.release()
        child.wait_done()
        hog.kill()
        hog.wait()
        rec = run.stop()
        run = None
        vol1, inv1 = status_counts(child.pid)
        run1, delay1, arrivals1 = schedstat(child.pid)
    finally:
        if run is not None:
            run.stop()
        if hog.poll() is None:
            hog.kill()
            hog.wait()
        child.kill()

    sched = rec.table("sched").to_pylist()
    mine = [r for r in sched if r["pid"] == child.pid]
    assert mine, "no sched rows for the child"
    vol = sum(r["switches_voluntary"] for r in mine)
    inv = sum(r["switches_involuntary"] for r in mine)
    dvol, dinv = vol1 - vol0, inv1 - inv0
    assert dvol >= SLEEPS and dinv > 20, (dvol, dinv)  # the workload did what it should
    assert abs(vol - dvol) <= max(2, 0.02 * dvol), (vol, dvol)
    assert abs(inv - dinv) <= max(2, 0.02 * dinv), (inv, dinv)

    # On-CPU time against the scheduler's own sum_exec_runtime (/proc/PID/schedstat).
    oncpu = sum(r["oncpu_ns"] for r in mine)
    assert abs(oncpu - (run1 - run0)) <= 0.05 * (run1 - run0), (oncpu, run1 - run0)
    # Run-queue wait and arrivals against the scheduler's own run_delay / pcount (sched_info).
    runq = sum(r["runq_count"] for r in mine)
    wait = sum(r["runq_wait_ns"] for r in mine)
    assert abs(runq - (arrivals1 - arrivals0)) <= max(2, 0.02 * (arrivals1 - arrivals0)), (runq, arrivals1 - arrivals0)
    assert abs(wait - (delay1 - delay0)) <= 0.05 * (delay1 - delay0), (wait, delay1 - delay0)
    assert sum(r["offcpu_preempted_ns"] for r in mine) > 0
    # It slept SLEEPS times 1 ms (at least): the sleeps, without the waits that followed them.
    sleep = sum(r["offcpu_sleep_ns"] for r in mine)
    assert SLEEPS * 1_000_000 <= sleep <= SLEEPS * 3_000_000, sleep
    for r in mine:
        assert sum(r["runq_hist"]) == r["runq_count"]
        # Each wait of u us is in slot i: 2**(i-1) <= u < 2**i (slot 0: u == 0; common.h log2_slot_us), so
        # the slots bound the row's total wait.
        lo = sum(n * (1 << (i - 1) if i else 0) for i, n in enumerate(r["runq_hist"][:-1]))
        hi = sum(n * (1 << i) for i, n in enumerate(r["runq_hist"][:-1]))
        if not r["runq_hist"][-1]:
            assert lo <= r["runq_wait_ns"] / 1000 < hi + 1, (r["runq_wait_ns"], r["runq_hist"])
        assert r["bucket_ns"] == 100_000_000 and r["ts_ns"] % r["bucket_ns"] == 0

    pre = [r for r in rec.table("preemptions").to_pylist() if r["pid"] == child.pid]
    by_count, by_wait = Counter(), Counter()
    for r in pre:
        by_count[r["preemptor_pid"]] += r["count"]
        by_wait[r["preemptor_pid"]] += r["wait_ns"]
    assert sum(by_count.values()) == inv
    assert sum(by_wait.values()) == sum(r["runq_wait_ns"] for r in mine)
    # The top preemptor is the task the child spent the most time waiting behind (the hog),
    # which also took the CPU from it (involuntary switches in its favour).
    top, _n = by_wait.most_common(1)[0]
    assert top == hog.pid, (by_wait.most_common(3), by_count.most_common(3))
    assert by_count[hog.pid] > 0
    assert any(r["preemptor_pid"] == hog.pid and r["preemptor_comm"].startswith("python") for r in pre)

    stats = rec.table("probe_stats").to_pylist()
    assert {r["probe"] for r in stats} == {"kernel.sched", "kernel.proc"}
    assert sum(r["lost"] for r in stats) == 0, [r for r in stats if r["lost"]]
