"""PrometheusExporter's bookkeeping: listen addresses, bounded labels, counters that never go back,
gauges that forget exited processes, and the HTTP endpoint."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autoglm_trace.errors import UsageError
from autoglm_trace.sinks import rows_to_batch
from autoglm_trace.tracer.exporter import OTHER, PrometheusExporter, parse_listen


def _samples(e: PrometheusExporter) -> dict[tuple, float]:
    text = generate_latest(e.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _proc(e: PrometheusExporter, ts: int, rows: dict[int, tuple[int, int]]) -> None:
    e.emit_batch("proc_samples", rows_to_batch("proc_samples", [
        {"ts_ns": ts, "pid": p, "ctx_voluntary": v, "ctx_involuntary": 0, "minflt": 0, "majflt": 0, "rss_bytes": r}
        for p, (v, r) in rows.items()]))


def _vol(s: dict, pid: str) -> float | None:
    for (name, labels), v in s.items():
        d = dict(labels)
        if name == "autoglm_trace_context_switches_total" and d["pid"] == pid and d["kind"] == "voluntary":
            return v
    return None


@pytest.mark.parametrize("spec,expected", [
    ("9464", ("127.0.0.1", 9464)),
    (":9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9000", ("::1", 9000)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(spec, expected):
    assert parse_listen(spec) == expected


@pytest.mark.parametrize("spec", ["", "abc", "1.2.3.4", "1.2.3.4:99999", "::1:80"])
def test_parse_listen_rejects(spec):
    with pytest.raises(UsageError):
        parse_listen(spec)


def test_pids_beyond_the_limit_fold_into_other_and_counters_stay_monotonic():
    e = PrometheusExporter(max_pids=2)
    _proc(e, 1, {10: (5, 100), 11: (7, 200), 12: (1, 300), 13: (2, 400)})
    s = _samples(e)
    assert _vol(s, "10") == 5 and _vol(s, "11") == 7 and _vol(s, OTHER) == 3
    pids = {dict(lab)["pid"] for (name, lab) in s if name == "autoglm_trace_process_rss_bytes"}
    assert pids == {"10", "11", OTHER}
    # pid 12 exits, 13 keeps counting, 14 appears: "other" only grows; RSS forgets pid 12.
    _proc(e, 2, {10: (6, 100), 11: (7, 200), 13: (4, 400), 14: (1, 50)})
    s = _samples(e)
    assert _vol(s, OTHER) == 1 + 4 + 1
    rss_other = s[("autoglm_trace_process_rss_bytes", (("comm", OTHER), ("pid", OTHER)))]
    assert rss_other == 450
    assert s[("autoglm_trace_processes", ())] == 4


def test_a_reused_pid_keeps_the_earlier_total():
    e = PrometheusExporter()
    _proc(e, 1, {10: (500, 1)})
    _proc(e, 2, {10: (3, 1)})  # counter went backwards: a new process under the same pid
    assert _vol(_samples(e), "10") == 503


def test_endpoint_serves_and_closes():
    e = PrometheusExporter().start("127.0.0.1", 0)
    _proc(e, 1, {10: (5, 100)})
    with urllib.request.urlopen(e.url, timeout=5) as r:
        assert b'autoglm_trace_context_switches_total{comm="",kind="voluntary",pid="10"} 5.0' in r.read()
    # A second exporter on the same port fails with a one-line usage error.
    with pytest.raises(UsageError, match="cannot listen"):
        PrometheusExporter().start("127.0.0.1", e.port)
    e.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", e.port)) != 0


def _sched(e: PrometheusExporter, ts: int, pid: int, n: int) -> None:
    h = [0] * 32
    h[4] = n
    e.emit_batch("sched", rows_to_batch("sched", [{"ts_ns": ts, "bucket_ns": 1, "pid": pid, "tid": pid,
                                                    "comm": "sh", "runq_hist": h, "runq_wait_ns": n * 10_000}]))


def _runq(s: dict) -> dict[str, float]:
    return {dict(lab)["pid"]: v for (name, lab), v in s.items() if name == "autoglm_trace_runq_latency_seconds_count"}


def test_short_lived_pids_fold_into_other_without_taking_a_slot():
    e = PrometheusExporter(max_pids=1)
    _proc(e, 1, {10: (1, 100)})
    for helper in (500, 501, 502):  # shell helpers: kernel rows, never alive at a /proc sample
        _sched(e, 1, helper, 2)
    _sched(e, 1, 10, 5)
    s = _samples(e)
    assert _runq(s) == {"10": 5, OTHER: 6}  # the one slot went to the live process
    # Totals only grow across scrapes, whatever was folded.
    _sched(e, 2, 10, 1)
    _sched(e, 2, 503, 4)
    _proc(e, 2, {10: (2, 100)})
    assert _runq(_samples(e)) == {"10": 6, OTHER: 10}


def test_a_labelled_pid_that_exited_frees_its_slot_after_the_ttl():
    from autoglm_trace.tracer.exporter import LABEL_TTL_S

    e = PrometheusExporter(max_pids=1)
    sec = 1_000_000_000
    _proc(e, 1, {10: (5, 100)})
    assert _vol(_samples(e), "10") == 5
    _proc(e, 2 * sec, {11: (1, 100)})  # pid 10 exited; 11 must wait in "other"
    s = _samples(e)
    assert _vol(s, "10") == 5 and _vol(s, OTHER) == 1 and _vol(s, "11") is None
    _proc(e, int((LABEL_TTL_S + 5) * sec), {11: (2, 100), 12: (7, 100)})
    s = _samples(e)
    assert _vol(s, "10") is None  # its series ended
    assert _vol(s, OTHER) == 2  # 11 stays where it was first exposed
    assert _vol(s, "12") == 7  # the freed slot went to a live process


def test_comm_follows_an_exec_until_first_exposed():
    e = PrometheusExporter()
    e.emit_batch("processes", rows_to_batch("processes", [{"ts_ns": 1, "pid": 10, "comm": "bash"}]))
    e.emit_batch("processes", rows_to_batch("processes", [{"ts_ns": 2, "pid": 10, "comm": "python3"}]))
    _proc(e, 2, {10: (1, 1)})
    assert ("autoglm_trace_process_rss_bytes", (("comm", "python3"), ("pid", "10"))) in _samples(e)
    e.emit_batch("processes", rows_to_batch("processes", [{"ts_ns": 3, "pid": 10, "comm": "later"}]))
    assert ("autoglm_trace_process_rss_bytes", (("comm", "python3"), ("pid", "10"))) in _samples(e)
