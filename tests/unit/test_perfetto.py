"""The Chrome trace-event (Perfetto) export, checked against the recording it came from."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

import numpy as np
import pytest
import reportdata as RD

from autoglm_trace.analysis.perfetto import (
    HOST_PID,
    LANE_TID,
    PSEUDO_PID,
    REQUESTS_PID,
    _overlapping_threads,
    assign_lanes,
    export_perfetto,
)
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.tracer import cli
from autoglm_trace.tracer.writer import RecordingWriter

REQUIRED = {"X": {"name", "ts", "dur", "pid", "tid"}, "C": {"name", "ts", "pid", "args"},
            "i": {"name", "ts", "s"}, "M": {"name", "pid", "args"}}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Recording:
    return Recording(RD.write_recording(tmp_path_factory.mktemp("rec") / "full"))


@pytest.fixture(scope="module")
def exported(full, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "trace.json"
    stats = export_perfetto(full, out)
    return stats, json.loads(out.read_text())


def _us(ts_ns: int, origin: int) -> float:
    return (ts_ns - origin) / 1000


def test_loads_with_expected_event_kinds(exported):
    stats, doc = exported
    ev = doc["traceEvents"]
    assert len(ev) == stats["events"]
    phases = {e["ph"] for e in ev}
    assert phases == {"M", "X", "C", "i"}
    for e in ev:
        assert REQUIRED[e["ph"]] <= e.keys(), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
    assert doc["otherData"]["time_origin_ns"] == RD.T0
    assert doc["otherData"]["time_origin_wall"].startswith("2025-11-24T17:23:20")
    assert "reclaim" in doc["otherData"]["not_recorded"]


def test_span_durations_equal_end_minus_start(full, exported):
    stats, doc = exported
    spans = full.table("spans").to_pydict()
    want = sorted((_us(s, RD.T0), (e - s) / 1000) for s, e in zip(spans["ts_ns"], spans["end_ns"]))
    got = sorted((e["ts"], e["dur"]) for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat") == "request")
    assert len(got) == len(want) == stats["spans"]
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-3)  # exact to the nanosecond


def test_overlapping_spans_go_to_lanes_without_overlap(exported):
    stats, doc = exported
    # Every request arrives each 50 ms and lasts >= 80 ms on thread 1002: they overlap, so lanes.
    assert stats["spans_in_lanes"] == stats["spans"] and stats["lanes"] >= 2
    by_track = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            by_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
            if e.get("cat") == "request":
                assert e["pid"] == REQUESTS_PID and e["tid"] >= LANE_TID
                assert e["args"]["origin_tid"] == 1002
    for iv in by_track.values():
        iv.sort()
        for (_, a_end), (b_start, _) in zip(iv, iv[1:]):
            assert b_start >= a_end - 1e-6
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"
             and e["name"] == "thread_name"}
    assert names[(REQUESTS_PID, LANE_TID)] == "lane 0"


def test_spans_on_their_own_thread_when_they_do_not_overlap(tmp_path):
    w = RecordingWriter(tmp_path / "r", RD.manifest())
    start = RD.T0 + np.arange(100, dtype=np.int64) * 100_000_000
    w.emit_columns("spans", {"ts_ns": start, "end_ns": start + 30_000_000, "name": ["req"] * 100,
                             "source": ["api"] * 100, "pid": np.full(100, 7), "tid": np.full(100, 8),
                             "ttft_ns": np.full(100, 10_000_000)})
    # Three other requests from a log, between the API's (not copies of them: analysis/requests.py).
    w.emit_columns("spans", {"ts_ns": start[:3] + 60_000_000, "end_ns": start[:3] + 60_000_005, "name": ["log"] * 3,
                             "source": ["log"] * 3})
    w.close()
    stats = export_perfetto(Recording(tmp_path / "r"), tmp_path / "t.json")
    ev = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    req = [e for e in ev if e["ph"] == "X" and e["name"] == "req"]
    assert len(req) == 100 and all(e["pid"] == 7 and e["tid"] == 8 for e in req)
    ttft = [e for e in ev if e["ph"] == "X" and e["name"] == "time to first token"]
    assert len(ttft) == 100 and all(e["dur"] == 10_000 for e in ttft)
    assert stats["spans_on_threads"] == 100 and stats["spans_in_lanes"] == 3  # no thread: lanes
    assert any(e["ph"] == "M" and e["name"] == "process_name" and e["pid"] == 7 for e in ev)


def test_thread_states_match_sched(exported):
    _, doc = exported
    # Counter track per thread; during the hog the run queue takes 40 ms of each 100 ms bucket.
    c = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["name"] == "state uvicorn-loop 1002"]
    assert len(c) == 601  # 600 buckets and the drop to 0 after the last one
    assert c[-1]["ts"] == pytest.approx(60_000_000) and set(c[-1]["args"].values()) == {0}
    at = {round(e["ts"]): e["args"] for e in c}
    assert at[32_000_000]["run-queue %"] == pytest.approx(40.0)
    assert at[32_000_000]["on-CPU %"] == pytest.approx(20.0)
    assert at[10_000_000]["run-queue %"] == pytest.approx(0.2)
    # The worker's last bucket ends at the OOM kill: its counter drops to 0 there.
    worker = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["name"].startswith("state <script>")]
    last = max(worker, key=lambda e: e["ts"])
    assert last["ts"] == pytest.approx(RD.OOM_AT / 1000) and set(last["args"].values()) == {0}
    # Counter timestamps of every track never go backwards (the importer needs monotonic tracks).
    tracks = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "C":
            tracks[(e["pid"], e["name"])].append(e["ts"])
    assert all(np.all(np.diff(ts) > 0) for ts in tracks.values())


def test_counters_and_instants(full, exported):
    _, doc = exported
    ev = doc["traceEvents"]
    rss = [e for e in ev if e["ph"] == "C" and e["name"] == "RSS" and e["pid"] == RD.WORKER]
    ps = full.table("proc_samples").to_pydict()
    want = [(_us(t, RD.T0), r / 2**20) for t, p, r in zip(ps["ts_ns"], ps["pid"], ps["rss_bytes"]) if p == RD.WORKER]
    np.testing.assert_allclose([(e["ts"], e["args"]["MiB"]) for e in rss], want)
    gpu_mem = [e for e in ev if e["ph"] == "C" and e["pid"] == PSEUDO_PID + 16 and e["name"] == "memory"]
    assert gpu_mem[0]["args"]["used GiB"] == pytest.approx(20.0)
    io = [e for e in ev if e["ph"] == "C" and e["pid"] == HOST_PID and e["name"].startswith("block I/O")]
    assert io, "host-wide block I/O counters"
    inst = {e["cat"]: e for e in ev if e["ph"] == "i"}
    assert set(inst) == {"oom", "exit", "gpu", "alert"}
    assert all(e["s"] == "g" for e in inst.values())
    assert inst["oom"]["ts"] == pytest.approx(RD.OOM_AT / 1000)
    assert inst["oom"]["args"]["in_target"] is True and inst["oom"]["args"]["memcg"] == "/autoglm"
    assert inst["gpu"]["name"] == "GPU0 xid 79"
    assert "signal 9" in inst["exit"]["name"]


def test_metadata_names_processes_and_threads(exported):
    _, doc = exported
    m = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in m if e["name"] == "process_name"}
    threads = {e["tid"]: e["args"]["name"] for e in m if e["name"] == "thread_name"}
    assert procs[RD.ROOT].startswith("python3: python3 server.py")
    assert procs[RD.WORKER].startswith(RD.EVIL)  # JSON-escaped text: json.loads gives it back verbatim
    assert procs[REQUESTS_PID] == "requests" and procs[HOST_PID] == "host" and procs[PSEUDO_PID + 16] == "GPU 0"
    assert threads[1002] == "uvicorn-loop 1002"


def test_gzip_output_and_command(full, tmp_path, capsys):
    out = tmp_path / "t.json.gz"
    assert cli.main(["export", str(full.path), "--perfetto", str(out)]) == 0
    doc = json.loads(gzip.decompress(out.read_bytes()))
    assert len(doc["traceEvents"]) > 10_000
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["export", str(full.path)]) == 2  # --perfetto is required
    assert cli.main(["export", str(tmp_path / "missing"), "--perfetto", str(out)]) == 3
    assert "Traceback" not in capsys.readouterr().err


def test_proc_only_recording_exports(tmp_path):
    rec = Recording(RD.write_recording(tmp_path / "p", full=False))
    stats = export_perfetto(rec, tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert stats["spans"] == 0 and stats["thread_state_events"] == 0
    assert {"sched", "spans", "gpu_devices"} <= set(stats["tables_absent"])
    assert {e["ph"] for e in doc["traceEvents"]} == {"M", "C"}


def _depth(start, end) -> int:
    ev = sorted([(s, 1) for s in start] + [(e, -1) for e in end])  # end before start at a tie
    d = best = 0
    for _, k in ev:
        d += k
        best = max(best, d)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_assign_lanes_is_valid_and_minimal(seed):
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 10_000, 500)
    end = start + rng.integers(1, 300, 500)
    lanes = assign_lanes(start, end)
    for lane in np.unique(lanes):
        m = lanes == lane
        o = np.argsort(start[m])
        assert np.all(start[m][o][1:] >= end[m][o][:-1])
    assert lanes.max() + 1 == _depth(start.tolist(), end.tolist())


def test_overlapping_threads_matches_brute_force():
    rng = np.random.default_rng(3)
    n = 300
    pid, tid = rng.integers(1, 4, n), rng.integers(1, 6, n)
    start = rng.integers(0, 100_000, n)
    end = start + rng.integers(1, 400, n)
    got = _overlapping_threads(pid, tid, start, end)
    bad = set()
    for i in range(n):
        for j in range(i + 1, n):
            if (pid[i], tid[i]) == (pid[j], tid[j]) and start[i] < end[j] and start[j] < end[i]:
                bad.add((pid[i], tid[i]))
    want = np.array([(p, t) in bad for p, t in zip(pid, tid)])
    assert np.array_equal(got, want)


def test_thread_state_drops_to_zero_in_gaps_in_time_order(tmp_path):
    w = RecordingWriter(tmp_path / "g", RD.manifest())
    b = [0, 1, 5]
    w.emit_columns("sched", {"ts_ns": [RD.T0 + k * RD.BUCKET for k in b], "bucket_ns": [RD.BUCKET] * 3,
                             "pid": [5] * 3, "tid": [6] * 3, "comm": ["t"] * 3, "oncpu_ns": [50_000_000] * 3,
                             "runq_wait_ns": [0] * 3, "offcpu_dstate_ns": [0] * 3})
    w.close()
    export_perfetto(Recording(tmp_path / "g"), tmp_path / "g.json")
    ev = [e for e in json.loads((tmp_path / "g.json").read_text())["traceEvents"] if e["ph"] == "C"]
    got = [(round(e["ts"] / 100_000), e["args"]["on-CPU %"]) for e in ev]
    assert got == [(0, 50), (1, 50), (2, 0), (5, 50), (6, 0)]


def test_reclaim_stalls_are_slices_on_named_lanes(tmp_path):
    w = RecordingWriter(tmp_path / "rc", RD.manifest())
    w.emit("reclaim", [
        {"ts_ns": RD.T0, "pid": 5, "tid": 5, "comm": "a", "in_target": True, "kind": "direct", "duration_ns": 2_000_000,
         "nr_reclaimed": 32},
        {"ts_ns": RD.T0 + 1_000_000, "pid": 6, "tid": 6, "comm": "b", "in_target": False, "kind": "memcg",
         "duration_ns": 3_000_000, "nr_reclaimed": 8},
        {"ts_ns": RD.T0 + 9_000_000, "pid": 0, "comm": "kswapd0", "kind": "kswapd_wake", "duration_ns": 0},
    ])
    w.close()
    export_perfetto(Recording(tmp_path / "rc"), tmp_path / "rc.json")
    ev = json.loads((tmp_path / "rc.json").read_text())["traceEvents"]
    x = sorted((e["ts"], e["dur"], e["tid"], e["name"]) for e in ev if e["ph"] == "X")
    assert [(a, d) for a, d, _, _ in x] == [(0, 2000), (1000, 3000)]
    assert x[0][2] != x[1][2]  # overlapping stalls on two lanes
    assert "[target]" in x[0][3] and "[target]" not in x[1][3]
    named = {e["tid"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == HOST_PID}
    assert {x[0][2], x[1][2]} <= named


def test_gpu_memory_per_process(tmp_path):
    w = RecordingWriter(tmp_path / "gp", RD.manifest())
    w.emit("gpu_processes", [
        {"ts_ns": RD.T0 + k * RD.BUCKET, "gpu": g, "pid": 77, "in_target": True, "used_bytes": (k + 1) * 2**30}
        for k in range(3) for g in (0, 1)])
    w.close()
    export_perfetto(Recording(tmp_path / "gp"), tmp_path / "gp.json")
    ev = json.loads((tmp_path / "gp.json").read_text())["traceEvents"]
    got = [(e["name"], round(e["ts"]), e["args"]["MiB"]) for e in ev if e["ph"] == "C" and e["pid"] == 77]
    assert got == [("GPU0 memory", 0, 1024), ("GPU0 memory", 100_000, 2048), ("GPU0 memory", 200_000, 3072),
                   ("GPU1 memory", 0, 1024), ("GPU1 memory", 100_000, 2048), ("GPU1 memory", 200_000, 3072)]
