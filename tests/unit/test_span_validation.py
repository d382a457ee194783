"""Span datagrams from the target are checked at the receiver: a malformed span is dropped and counted
per reason (``probe_stats`` rows ``rejected_<why>``, manifest ``stats.spans.rejected_by``), never kept:
``start_ns = 0`` used to make an incident 81 minutes before the recording, ``dropped = 2^32 - 1`` was
shown as lost events, spans ending before they start were kept and ``start_ns = -2^63`` crashed
``analyze``. The reader applies the same bounds to a spans table written by anything else."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pyarrow as pa

from autoglm_trace import schema, span_client
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.probes.span_receiver import SpanReceiver
from tests.integration.test_spans import ListSink
from tests.unit.test_hostile_reader import run_cli

S = 1_000_000_000


def _receive(datagrams: list[bytes]) -> tuple[ListSink, SpanReceiver]:
    sink = ListSink()
    rx = SpanReceiver()
    rx.start(sink.ctx())
    try:
        path = rx.target_env()[span_client.ENV_VAR]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, path)
        time.sleep(0.3)
        rx.sample(time.monotonic_ns())
    finally:
        rx.stop()
    return sink, rx


def test_malformed_spans_are_dropped_and_counted() -> None:
    now = time.monotonic_ns()
    ok = dict(pid=4000, tid=4001)
    good = span_client.encode("good", now - S, now - S // 2, ttft_ns=S // 10, **ok)
    bad = {
        "start_outside_recording": [span_client.encode("zero", 0, now - S, **ok),
                                    span_client.encode("min", -(1 << 63), now - S, **ok),
                                    span_client.encode("future", now + 3600 * S, now + 3601 * S, **ok)],
        "end_before_start": [span_client.encode("backwards", now - S, now - 2 * S, **ok)],
        "end_in_future": [span_client.encode("long", now - S, (1 << 63) - 1, **ok)],
        "ttft_outside_span": [span_client.encode("ttft", now - S, now - S // 2, ttft_ns=10 * S, **ok)],
        "bad_pid": [span_client.encode("pid0", now - S, now - S // 2, pid=0, tid=1),
                    span_client.encode("pidneg", now - S, now - S // 2, pid=-5, tid=1)],
        "implausible_dropped": [span_client.encode("drops", now - S, now - S // 2, dropped=(1 << 32) - 1, **ok)],
        "attrs_not_json_object": [span_client.HEADER.pack(span_client.MAGIC, now - S, now - S // 2, -1, 4000, 4001,
                                                          -1, -1, 1, 0, 1, 3) + b"x[1]"],
    }
    # One datagram may mix good and bad records: the good ones are kept.
    mixed = good + b"".join(d for ds in bad.values() for d in ds)
    sink, rx = _receive([mixed])
    spans = sink.rows.get("spans", [])
    assert [r["name"] for r in spans] == ["good"]
    want = {k: len(v) for k, v in bad.items()}
    assert rx.status()["rejected_by"] == want and rx.status()["rejected"] == sum(want.values())
    stats = {r["reason"]: r["lost"] for r in sink.rows["probe_stats"] if r["reason"].startswith("rejected_")}
    assert stats == {f"rejected_{k}": n for k, n in want.items()}
    # An absurd drop count is not reported as client loss.
    assert not any(r["reason"] == "client_send_failed" and r["lost"] for r in sink.rows["probe_stats"])


def test_real_client_spans_still_pass() -> None:
    now = time.monotonic_ns()
    data = [span_client.encode(f"r{i}", now - 2 * S + i, now - S + i, ttft_ns=1000, pid=4000, tid=4000 + i,
                               prompt_tokens=10, output_tokens=20, dropped=i, attrs={"k": i}) for i in range(20)]
    sink, rx = _receive([b"".join(data)])
    assert len(sink.rows["spans"]) == 20 and rx.status()["rejected"] == 0


def test_reader_leaves_out_impossible_span_rows(tmp_path: Path) -> None:
    from tests.fakes.synthetic import Scenario, write_recording

    rec = tmp_path / "rec"
    write_recording(rec, Scenario(kind="cpu", duration_s=12, seed=3))
    p = rec / "spans.arrow"
    rows = pa.ipc.open_stream(p.read_bytes()).read_all().to_pylist()
    n = len(rows)
    rows[3]["ts_ns"] = -(1 << 63)
    rows[4]["end_ns"] = (1 << 63) - 1
    rows[5]["ts_ns"] = 0
    rows[6]["end_ns"] = rows[6]["ts_ns"] - S
    p.unlink()
    sc = schema.TABLES["spans"]
    with pa.ipc.new_stream(str(p), sc) as w:
        w.write_table(pa.Table.from_pylist(rows, schema=sc))
    r = Recording(rec)
    assert r.table("spans").num_rows == n - 4 and r.implausible == {"spans": 4}
    for argv in (["analyze", str(rec), "--json"], ["summary", str(rec), "--json"],
                 ["export", str(rec), "--perfetto", str(tmp_path / "t.json")]):
        code, err, out = run_cli(argv)
        assert code == 0, (argv, err)
    d = json.loads(run_cli(["analyze", str(rec), "--json"])[2])
    start = r.start_ns
    for inc in d.get("incidents", []):
        assert inc.get("start_ns", start) >= start - span_client.MAX_EARLY_NS
