"""How much of the slow requests' extra latency each cause accounts for (no root, hand-made recordings):
shares from the requests' own time split against the baseline's, the lock / GIL signals of the request
threads only, long request waits as hand-offs, direct reclaim as its own part, a baseline that never
holds its incident, and a GIL holder that also takes the waiters' CPU ranked by both."""

from __future__ import annotations

import pytest

from autoglm_trace import schema
from autoglm_trace.analysis import causes, timesplit, wakers
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.spikes import Incident
from autoglm_trace.analysis.timeline import Timeline, build_timeline
from autoglm_trace.tracer.writer import RecordingWriter
from tests.fakes.wakeups import wakeup_row

NS = 1_000_000_000
T0 = 1_000 * NS
B = NS // 10
SERVER, HANDLER, WORKER, HOLDER, IDLE = 500, 501, 502, 503, 505
TROUBLE = (10 * NS, 20 * NS)  # the holder holds the lock the worker needs
SLOW = 25 * NS  # one request waits 3 s for the worker, which stalls in reclaim and D state meanwhile
END = 30 * NS


def _w(ts, tid, waker, n, sleep, ctx="task"):
    return wakeup_row(ts, B, SERVER, tid, waker, n, sleep, ctx)


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Recording:
    path = tmp_path_factory.mktemp("shares") / "rec"
    w = RecordingWriter(path, {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
                               "start_ns": T0, "end_ns": T0 + END + 2 * NS, "complete": True,
                               "clock": {"monotonic_to_wall_ns": 0},
                               "target": {"mode": "command", "pid": SERVER, "comm": "python3",
                                          "command": ["/usr/bin/python3", "server.py"]},
                               "collectors": {"kernel": {"status": "ok",
                                                         "families": ["sched", "wakeups", "proc", "memory"],
                                                         "tables": ["sched", "preemptions", "wakeups", "reclaim"]}}})
    w.emit("processes", [{"ts_ns": T0, "pid": SERVER, "ppid": 1, "comm": "python3",
                          "cmdline": "/usr/bin/python3 server.py"}])
    spans = [{"ts_ns": T0 + i * NS // 2, "end_ns": T0 + i * NS // 2 + NS // 4, "name": "generate", "source": "api",
              "pid": SERVER, "tid": HANDLER, "ok": True} for i in range(2 * END // NS) if i * NS // 2 != SLOW]
    spans.append({"ts_ns": T0 + SLOW, "end_ns": T0 + SLOW + 3 * NS, "name": "generate", "source": "api",
                  "pid": SERVER, "tid": HANDLER, "ok": True})
    w.emit("spans", spans)
    sched, wake, reclaim = [], [], []
    for k in range(END // B):
        ts = T0 + k * B
        trouble = TROUBLE[0] <= k * B < TROUBLE[1]
        slow = SLOW <= k * B < SLOW + 3 * NS
        for tid, on, rq, ds in ((HANDLER, 5e6, 1e6, 0), (WORKER, 20e6 if trouble else 40e6, 2e6, 30e6 if slow else 0),
                                (HOLDER, 1e6, 0, 0), (IDLE, 0, 0, 0)):
            sched.append({"ts_ns": ts, "bucket_ns": B, "pid": SERVER, "tid": tid, "comm": "python3",
                          "oncpu_ns": int(on), "runq_wait_ns": int(rq), "offcpu_dstate_ns": int(ds)})
        if slow:
            reclaim.append({"ts_ns": ts + 1000, "pid": SERVER, "tid": WORKER, "comm": "python3", "in_target": True,
                            "kind": "memcg", "duration_ns": int(25e6), "nr_reclaimed": 32})
        elif k % 5 == 0:
            # The handler waits for the worker's answer, the worker for work from the handler: hand-offs.
            wake.append(_w(ts, HANDLER, WORKER, 1, 400e6))
            wake.append(_w(ts, WORKER, HANDLER, 1, 300e6))
        wake.append(_w(ts, HOLDER, 0, 2, 50e6, ctx="hrtimer"))
        if trouble:
            wake.append(_w(ts, WORKER, HOLDER, 2, 60e6))
    # The slow request: its answer came after 3 s (one wakeup ending a 3 s sleep).
    wake.append(_w(T0 + SLOW + 3 * NS - B, HANDLER, WORKER, 1, 3e9))
    # An idle pool thread woken by the main thread at shutdown after 0.8 s: no one's lock wait.
    wake.append(_w(T0 + END - B, IDLE, SERVER, 1, 800e6))
    w.emit("sched", sched)
    w.emit("wakeups", wake)
    w.emit("reclaim", reclaim)
    w.close()
    return Recording(path)


def test_a_request_waiting_seconds_for_its_worker_is_served_not_parked(rec):
    t = wakers.classify(rec)
    long = [r for r in t.to_pylist() if r["tid"] == HANDLER and r["sleep_ns"] >= 3e9]
    assert long and all(r["class"] == "handoff" for r in long)


def test_the_slow_requests_time_follows_the_worker_over_the_whole_wait(rec):
    split = timesplit.time_split(rec, T0 + SLOW, T0 + SLOW + 3 * NS)
    parts = {p["part"]: p["fraction"] for p in split["parts"]}
    # The worker was stalled in reclaim (25 of its 40 ms on CPU per bucket) and in D state (30 ms):
    # the 3 s the request waited is theirs, not "other sleep".
    assert parts.get("sleep", 0) < 0.05, parts
    assert parts["reclaim"] > 0.25 and parts["dstate"] > 0.3, parts
    assert sum(parts.values()) == pytest.approx(1, abs=0.01)


def test_lock_signal_is_the_request_threads_waits_only(rec):
    tl = build_timeline(rec)
    lock = tl.signals["lock_wait"].values
    inside = lock[tl.window_mask(T0 + TROUBLE[0], T0 + TROUBLE[1] - 1)]
    assert inside.mean() > 0.1 * NS  # the handler's wait for the worker is the worker's wait on the holder
    # The idle thread's 0.8 s ended by the main thread at shutdown is nobody's request's lock wait.
    assert lock[tl.window_mask(T0 + END - 2 * NS, T0 + END)].sum() == 0


def test_extra_shares_follow_the_part_that_grew_and_add_up(rec):
    inc = timesplit.fractions(rec, [(T0 + TROUBLE[0], T0 + TROUBLE[1] - 1)])
    base = timesplit.fractions(rec, [(T0, T0 + TROUBLE[0] - 1)])
    assert inc["scoped"] and base["scoped"]
    shares = timesplit.extra_shares(inc, base, 0.4)
    assert sum(shares.values()) == pytest.approx(1, abs=1e-6)
    assert shares["lock_wait"] == max(shares.values()) and shares["lock_wait"] > 0.5
    assert shares["runq_wait"] < 0.2
    # Without a scope of request threads on both sides there is no per-request reading.
    assert timesplit.extra_shares(inc, dict(base, scoped=False), 0.4) is None
    assert timesplit.extra_shares(inc, base, 0.0) is None


def test_the_baseline_never_holds_its_incidents_windows():
    tl = Timeline(0, 20 * NS, NS, 20)
    incs = [Incident(s * NS, (s + 1) * NS, "latency") for s in (1, 4, 7, 10, 13, 16)]
    m = causes.baseline_mask(tl, incs)
    for inc in incs:
        assert not m[tl.window_mask(inc.start_ns, inc.end_ns)].any()
    assert m.sum() >= 3


def _cause(kind, score, share, tid, cshare, conf=1.0):
    return {"kind": kind, "score": score, "confidence": conf, "share": share, "summary": kind,
            "culprits": [{"pid": SERVER, "tid": tid, "share": cshare}]}


def test_a_gil_holder_that_also_takes_the_cpu_is_ranked_by_both():
    cs = [_cause("cpu_contention", 0.66, 0.51, 7, 0.99), _cause("gil_contention", 0.54, 0.34, 7, 0.84)]
    causes.fold_gil_holder_cpu(cs)
    assert [c["kind"] for c in cs] == ["gil_contention", "cpu_contention"]
    gil = cs[0]
    assert gil["share"] == pytest.approx(0.34 + 0.51 * 0.99, abs=1e-3)
    assert gil["holder_cpu"]["runq_share"] == pytest.approx(0.505, abs=1e-3)
    assert gil["score"] == pytest.approx(0.3 + 0.7 * gil["share"], abs=1e-3)
    assert cs[1]["same_culprit_as"] == "gil_contention"


@pytest.mark.parametrize("other", [
    [_cause("cpu_contention", 0.66, 0.51, 7, 0.99), _cause("gil_contention", 0.54, 0.34, 8, 0.84)],  # two threads
    [_cause("cpu_contention", 0.66, 0.51, 7, 0.99), _cause("lock_contention", 0.54, 0.34, 7, 0.84)],  # a lock
    [_cause("cpu_contention", 0.66, 0.51, None, 0.99), _cause("gil_contention", 0.54, 0.34, None, 0.84)],
])
def test_nothing_is_folded_for_another_thread_or_a_lock_holder(other):
    before = [dict(c) for c in other]
    causes.fold_gil_holder_cpu(other)
    assert [c["kind"] for c in other] == [c["kind"] for c in before]
    assert [c["score"] for c in other] == [c["score"] for c in before]
    assert not any("holder_cpu" in c for c in other)


def test_wakeup_classes_stay_for_the_lock_holder(rec):
    t = wakers.classify(rec)
    cls = {(r["tid"], r["waker_tid"]): r["class"] for r in t.to_pylist()}
    assert cls[(WORKER, HOLDER)] == "lock"
    assert cls[(HOLDER, 0)] == "other"
