"""Who woke the target's threads: a lock holder named as the waker of the threads waiting on it,
with the sleep it ended; a timer's wakeups told apart from a task's."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from kernel_harness import GatedChild, KernelRun

from autoglm_trace.target import TargetTree

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

HOLDS = 40
# The holder takes the lock and sleeps 20 ms under it, HOLDS times; two waiters block on it.
WORK = f"""
import threading
lock = threading.Lock()
tids = {{}}
stop = False
def holder():
    tids['holder'] = threading.get_native_id()
    for _ in range({HOLDS}):
        with lock:
            time.sleep(0.02)
        time.sleep(0.0005)
def waiter(name):
    tids[name] = threading.get_native_id()
    while not stop:
        with lock:
            pass
h = threading.Thread(target=holder)
ws = [threading.Thread(target=waiter, args=(f'w{{i}}',)) for i in range(2)]
h.start()
for w in ws:
    w.start()
h.join()
stop = True
for w in ws:
    w.join()
sys.stdout.write(json.dumps(tids) + '\\n'); sys.stdout.flush()
"""


def _traced(tmp_path, work: str):
    """Run ``work`` (it prints its threads' tids as JSON) under the sched + wakeups probes:
    (recording, tids, child)."""
    child = GatedChild("import json\n" + work)
    run = None
    try:
        run = KernelRun(tmp_path / "rec", TargetTree.for_pid(child.pid),
                        {"families": ["sched", "wakeups", "proc"]})
        run.start()
        child.release()
        assert child.proc.stdout is not None
        tids = json.loads(child.proc.stdout.readline())
        child.wait_done()
        rec = run.stop()
        run = None
    finally:
        if run is not None:
            run.stop()
        child.kill()
    return rec, tids, child


def test_lock_holder_is_the_waker_of_its_waiters(tmp_path):
    rec, tids, child = _traced(tmp_path, WORK)

    rows = [r for r in rec.table("wakeups").to_pylist() if r["pid"] == child.pid]
    assert rows, "no wakeups recorded"
    sleep_by = defaultdict(int)
    for r in rows:
        if r["tid"] in (tids["w0"], tids["w1"]):
            sleep_by[r["waker_tid"]] += r["sleep_ns"]
        assert r["waker_tid"] != r["tid"]  # nobody wakes itself
        assert r["sleep_max_ns"] <= r["sleep_ns"] and r["count"] > 0
        if r["waker_context"] != "task":
            assert r["waker_tid"] == 0 and r["waker_comm"].startswith("[")
    waiters_sleep = sum(sleep_by.values())
    # The waiters slept ~HOLDS x 20 ms on the lock (one of them each time), and the holder woke them.
    assert waiters_sleep > 0.5 * HOLDS * 0.02e9, sleep_by
    top = max(sleep_by, key=sleep_by.get)
    assert top == tids["holder"], (dict(sleep_by), tids)
    # Half the waits are relayed: the waiter that got the lock next woke the other one on release.
    assert sleep_by[top] > 0.4 * waiters_sleep, (dict(sleep_by), tids)
    assert sum(sleep_by[t] for t in tids.values()) > 0.95 * waiters_sleep, (dict(sleep_by), tids)
    holder_rows = [r for r in rows if r["waker_tid"] == tids["holder"]]
    assert all(r["waker_in_target"] and r["waker_pid"] == child.pid for r in holder_rows)
    # The holder slept under the lock (it was not on CPU while they waited).
    assert sum(r["waker_oncpu_ns"] for r in holder_rows) < 0.2 * sleep_by[top]
    # The holder's own 20 ms sleeps end by a timer: not charged to a task it interrupted.
    mine = [r for r in rows if r["tid"] == tids["holder"] and r["sleep_ns"] > 0]
    timer = sum(r["sleep_ns"] for r in mine if r["waker_context"] != "task")
    assert timer > 0.5 * sum(r["sleep_ns"] for r in mine), mine[:5]
    stats = {r["probe"] for r in rec.table("probe_stats").to_pylist()}
    assert "kernel.wakeups" in stats


ROUNDS, WRITERS = 20, 5
# One reader sleeps on a pipe; WRITERS threads write to it in turn, each once per round, a few ms
# apart: every bucket holds more wakers of the reader than its sched row keeps inline
# (sched.c INLINE_CHARGES), so the rest go through waker_agg and both must add up.
RELAY = f"""
import os, threading
r, w = os.pipe()
tids = {{}}
turns = [threading.Event() for _ in range({WRITERS})]
def reader():
    tids['reader'] = threading.get_native_id()
    for _ in range({ROUNDS} * {WRITERS}):
        os.read(r, 1)
def writer(i):
    tids[f'w{{i}}'] = threading.get_native_id()
    for _ in range({ROUNDS}):
        turns[i].wait()
        turns[i].clear()
        time.sleep(0.003)
        os.write(w, b'x')
        turns[(i + 1) % {WRITERS}].set()
rd = threading.Thread(target=reader)
ws = [threading.Thread(target=writer, args=(i,)) for i in range({WRITERS})]
rd.start()
for t in ws:
    t.start()
turns[0].set()
for t in ws:
    t.join()
rd.join()
sys.stdout.write(json.dumps(tids) + '\\n'); sys.stdout.flush()
"""


def test_many_wakers_of_one_thread_add_up_inline_and_in_the_map(tmp_path):
    rec, tids, _child = _traced(tmp_path, RELAY)

    rows = [r for r in rec.table("wakeups").to_pylist() if r["tid"] == tids["reader"]]
    keys = [(r["ts_ns"], r["tid"], r["waker_tid"], r["waker_context"], r["state"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per key: inline slots and waker_agg were not added"
    by_writer = defaultdict(int)
    for r in rows:
        by_writer[r["waker_tid"]] += r["count"]
    writers = [tids[f"w{i}"] for i in range(WRITERS)]
    # Each write found the reader asleep on the pipe (the writers are 3 ms apart): each writer woke it
    # once a round at least, whichever path its charge took (more when the reader then waited for
    # the GIL that writer held).
    for t in writers:
        assert by_writer[t] >= ROUNDS * 0.8, (dict(by_writer), tids)
    per_bucket = defaultdict(set)
    for r in rows:
        per_bucket[r["ts_ns"]].add(r["waker_tid"])
    assert max(len(v) for v in per_bucket.values()) > 2, "no bucket had more wakers than the inline slots"
