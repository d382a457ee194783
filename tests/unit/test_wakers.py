"""Who woke whom, on a small hand-made recording (no root): lock holders vs hand-offs vs GIL waits,
the holder named with its Python thread name and where it stands, the time split adding up, the
waker arrows in the Perfetto export, and the label function."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoglm_trace import schema
from autoglm_trace.analysis import tree, wakers
from autoglm_trace.analysis.perfetto import export_perfetto
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timesplit import time_split
from autoglm_trace.tracer.writer import RecordingWriter
from tests.fakes.wakeups import wakeup_row

NS = 1_000_000_000
T0 = 1_000 * NS
B = NS // 10
SERVER, HANDLER, WORKER, HOLDER, GILHOG, CHILD = 500, 501, 502, 503, 504, 600
TROUBLE = (20 * NS, 30 * NS)  # the holder holds the lock the worker needs


def _write(path) -> Recording:
    w = RecordingWriter(path, {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
                               "start_ns": T0, "end_ns": T0 + 40 * NS, "complete": True,
                               "clock": {"monotonic_to_wall_ns": 0},
                               "target": {"mode": "command", "pid": SERVER, "comm": "python3",
                                          "command": ["/usr/bin/python3", "server.py"]},
                               "collectors": {"kernel": {"status": "ok", "families": ["sched", "wakeups", "proc"],
                                                         "tables": ["sched", "preemptions", "wakeups"]}}})
    w.emit("processes", [{"ts_ns": T0, "pid": SERVER, "ppid": 1, "comm": "python3",
                          "cmdline": "/usr/bin/python3 server.py"},
                         {"ts_ns": T0, "pid": CHILD, "ppid": SERVER, "comm": "prep-worker", "cmdline": "python3 -c"}])
    w.emit("thread_names", [{"ts_ns": T0, "pid": SERVER, "tid": HOLDER, "name": "kv-snapshot", "source": "api"},
                            {"ts_ns": T0, "pid": SERVER, "tid": WORKER, "name": "decode-0", "source": "api"}])
    spans = [{"ts_ns": T0 + i * NS // 2, "end_ns": T0 + i * NS // 2 + NS // 4, "name": "generate", "source": "api",
              "pid": SERVER, "tid": HANDLER, "ok": True} for i in range(80)]
    w.emit("spans", spans)
    sched, wake = [], []
    for k in range(400):
        ts = T0 + k * B
        trouble = TROUBLE[0] <= k * B < TROUBLE[1]
        for tid, on, rq in ((HANDLER, 5e6, 1e6), (WORKER, 40e6 if not trouble else 20e6, 2e6),
                            (HOLDER, 1e6, 0), (GILHOG, 0, 0)):
            sched.append({"ts_ns": ts, "bucket_ns": B, "pid": SERVER, "tid": tid, "comm": "python3",
                          "oncpu_ns": int(on), "runq_wait_ns": int(rq), "offcpu_dstate_ns": 0})
        # The handler waits for the worker's answer, the worker for work from the handler: hand-offs.
        wake.append(_w(ts, HANDLER, WORKER, 1, 40e6))
        wake.append(_w(ts, WORKER, HANDLER, 1, 30e6))
        # The holder sleeps on a timer (under the lock when in trouble): nobody of the target wakes it.
        wake.append(_w(ts, HOLDER, 0, 2, 50e6, ctx="hrtimer"))
        if trouble:
            wake.append(_w(ts, WORKER, HOLDER, 2, 60e6))
    w.emit("sched", sched)
    w.emit("wakeups", wake)
    w.close()
    return Recording(path)


def _w(ts, tid, waker, n, sleep, ctx="task"):
    return wakeup_row(ts, B, SERVER, tid, waker, n, sleep, ctx)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("wk") / "rec")


def test_classes_hand_offs_apart_from_held_locks(rec):
    t = wakers.classify(rec)
    cls = {(r["tid"], r["waker_tid"]): r["class"] for r in t.to_pylist()}
    assert cls[(HANDLER, WORKER)] == "handoff" and cls[(WORKER, HANDLER)] == "handoff"
    assert cls[(WORKER, HOLDER)] == "lock"
    assert cls[(HOLDER, 0)] == "other"


def test_the_holder_is_named_with_its_thread_name_and_place(rec):
    a, b = T0 + TROUBLE[0], T0 + TROUBLE[1]
    got = wakers.holder_culprits(rec, a, b, 0, "lock", tree.victims(rec), requests=20)
    first = got["culprits"][0]
    assert first["tid"] == HOLDER and first["thread_name"] == "kv-snapshot", got
    assert first["where"] == "target_thread" and first["label"] == f'tid {HOLDER} "kv-snapshot" of the target {SERVER}'
    assert first["share"] > 0.9 and first["wait_per_request_ms"] == pytest.approx(6000 / 20, rel=0.01)
    assert all(c["tid"] != c.get("waited_tid") for c in got["culprits"])
    assert got["remainder"]["share"] == pytest.approx(1 - sum(c["share"] for c in got["culprits"]), abs=1e-3)


def test_time_split_follows_hand_offs_and_adds_up(rec):
    split = time_split(rec, T0 + TROUBLE[0], T0 + TROUBLE[1], [
        {"kind": "lock_contention", "culprits": [{"label": "tid 503 kv-snapshot", "share": 1.0}]}])
    assert split["scope"] == "threads of the slow requests" and split["threads"] == 1
    parts = {p["part"]: p for p in split["parts"]}
    assert sum(p["fraction"] for p in split["parts"]) == pytest.approx(1, abs=0.01)
    # The handler's wait for the worker is the worker's time: its lock wait on the holder shows.
    assert parts["lock_wait"]["fraction"] > 0.2 and parts["lock_wait"]["by"][0]["label"].startswith("tid 503")


def test_labels_say_where_a_culprit_stands(rec):
    tr = tree.load(rec)
    assert tree.label(tr, {"pid": CHILD, "comm": "prep-worker"}) == f"pid {CHILD} prep-worker (child of the target {SERVER})"
    assert tree.label(tr, {"pid": 4242, "comm": "stress-ng"}) == "pid 4242 stress-ng (outside the target)"
    c = tree.describe(tr, {"pid": SERVER, "tid": SERVER, "comm": "python3"})
    assert c["where"] == "target_thread" and c["label"].startswith(f'tid {SERVER} "python3"')
    assert tree.describe(tr, {"pid": 17, "comm": "kworker/0:1"}).get("kernel_thread")


def test_perfetto_draws_waker_arrows(rec, tmp_path):
    st = export_perfetto(rec, tmp_path / "t.json")
    ev = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    starts = {e["id"]: e for e in ev if e.get("ph") == "s"}
    ends = {e["id"]: e for e in ev if e.get("ph") == "f"}
    assert st["wake_flows"] == len(starts) == len(ends) > 0
    pairs = {(starts[i]["tid"], ends[i]["tid"]) for i in starts}
    assert (HOLDER, WORKER) in pairs and (WORKER, HANDLER) in pairs
    assert all(np.isfinite(float(ends[i]["ts"])) and float(ends[i]["ts"]) >= float(starts[i]["ts"]) for i in starts)


def test_holder_extra_wait_is_measured_against_the_given_baseline(rec):
    """One second of the trouble, as a blip beside a longer incident would be: against the incident's
    own baseline windows (the trouble left out) all its lock wait is extra; against "everything
    outside it" the rest of the trouble counts as baseline and a part of it is not."""
    a, b = T0 + TROUBLE[0] + 4 * NS, T0 + TROUBLE[0] + 5 * NS
    clean = [(T0, T0 + TROUBLE[0] - 2 * NS), (T0 + TROUBLE[1] + 2 * NS, T0 + 40 * NS)]
    own = wakers.holder_culprits(rec, a, b, 0, "lock", tree.victims(rec), baseline=clean)
    outside = wakers.holder_culprits(rec, a, b, 0, "lock", tree.victims(rec))
    assert own["culprits"][0]["tid"] == HOLDER
    assert own["extra_wait_ms"] == pytest.approx(own["total_wait_ms"], rel=0.01), own
    assert outside["extra_wait_ms"] < 0.85 * own["extra_wait_ms"], outside
