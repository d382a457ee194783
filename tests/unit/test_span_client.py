"""Span client: free without a recorder, a compact datagram with one, drops counted, never raises."""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import time

import pytest

from autoglm_trace import span_client as sc


@pytest.fixture
def receiver_sock():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "s.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    sc.configure(path)
    yield s, path
    sc.configure("")
    s.close()
    os.unlink(path)
    os.rmdir(d)


def test_noop_without_socket():
    sc.configure("")
    assert not sc.enabled()
    a = sc.span("x", prompt_tokens=3, model="m")
    b = sc.span("y")
    assert a is b  # one shared no-op object: no allocation per call
    with a as s:
        s.first_token()
        s.set(output_tokens=5)
        sc.mark_first_token()
    assert sc.stats() == {"sent": 0, "dropped": 0}

    @sc.traced
    def f(x):
        return x * 2

    assert f(21) == 42


def test_env_var_is_read(monkeypatch, receiver_sock):
    s, path = receiver_sock
    monkeypatch.setenv(sc.ENV_VAR, path)
    sc.configure()
    assert sc.enabled()
    monkeypatch.delenv(sc.ENV_VAR)
    sc.configure()
    assert not sc.enabled()


def test_encode_decode_roundtrip():
    data = sc.encode("generate", 10, 25, ttft_ns=7, pid=4, tid=5, prompt_tokens=100, output_tokens=None,
                     ok=False, dropped=3, attrs={"model": "m"})
    assert data[:4] == b"AGS2"
    assert len(data) == sc.HEADER.size + len("generate") + len('{"model":"m"}')
    d = sc.decode(data)
    assert d == {"start_ns": 10, "end_ns": 25, "ttft_ns": 7, "pid": 4, "tid": 5, "prompt_tokens": 100,
                 "output_tokens": None, "ok": False, "dropped": 3, "name": "generate",
                 "attrs": '{"model":"m"}', "threads": False}
    with pytest.raises(ValueError):
        sc.decode(b"AGS2short")
    with pytest.raises(ValueError):
        sc.decode(data + b"x")  # trailing bytes
    # several records per datagram: self-delimiting
    two = data + sc.encode("b", 1, 2)
    assert [d["name"] for d in sc.decode_all(two)] == ["generate", "b"]
    assert sc.decode_all(two)[1]["attrs"] is None
    with pytest.raises(ValueError):
        sc.decode_all(two[:-1])
    with pytest.raises(ValueError):
        sc.decode(b"XXXX" + data[4:])
    # attrs too large are replaced, never sent whole
    big = sc.decode(sc.encode("x", 0, 1, attrs={"k": "v" * 10000}))
    assert json.loads(big["attrs"]) == {"_truncated": True}


def test_span_sends_one_datagram(receiver_sock):
    s, _ = receiver_sock
    t0 = time.monotonic_ns()
    with sc.span("generate", prompt_tokens=12, model="tiny") as sp:
        time.sleep(0.01)
        sc.mark_first_token()
        sp.set(output_tokens=4)
        time.sleep(0.005)
    t1 = time.monotonic_ns()
    d = sc.decode_all(s.recv(65536))[0]
    assert d["name"] == "generate"
    assert t0 <= d["start_ns"] < d["end_ns"] <= t1
    assert 10_000_000 <= d["ttft_ns"] < d["end_ns"] - d["start_ns"]
    assert d["prompt_tokens"] == 12 and d["output_tokens"] == 4 and d["ok"]
    assert d["pid"] == os.getpid()
    assert d["tid"] == __import__("threading").get_native_id()
    assert json.loads(d["attrs"]) == {"model": "tiny"}


def test_exception_marks_span_failed_and_propagates(receiver_sock):
    s, _ = receiver_sock
    with pytest.raises(KeyError), sc.span("boom"):
        raise KeyError("x")
    d = sc.decode_all(s.recv(65536))[0]
    assert not d["ok"] and json.loads(d["attrs"]) == {"error": "KeyError"}


def test_nested_spans_and_decorators(receiver_sock):
    s, _ = receiver_sock

    @sc.traced("outer")
    def outer():
        with sc.span("inner"):
            sc.mark_first_token()  # marks the innermost span only
        return 1

    @sc.traced
    async def coro():
        return 2

    assert outer() == 1
    import asyncio

    assert asyncio.run(coro()) == 2
    sc.flush()
    got = []
    while len(got) < 3:  # the flusher may have sent part of them already
        got += sc.decode_all(s.recv(65536))
    assert [g["name"] for g in got] == ["inner", "outer", "test_nested_spans_and_decorators.<locals>.coro"]
    assert got[0]["ttft_ns"] is not None and got[1]["ttft_ns"] is None
    assert got[1]["start_ns"] <= got[0]["start_ns"] and got[0]["end_ns"] <= got[1]["end_ns"]


def test_spans_are_batched_and_flushed_in_the_background(receiver_sock):
    s, _ = receiver_sock
    for i in range(50):
        with sc.span(f"s{i}"):
            pass
    s.settimeout(1)
    got, datagrams = [], 0
    while len(got) < 50:
        got += sc.decode_all(s.recv(65536))  # the flusher sends within ~10 ms
        datagrams += 1
    assert datagrams < 50  # buffered: many spans per datagram, not one syscall per span
    assert [g["name"] for g in got] == [f"s{i}" for i in range(50)]
    assert sc.stats() == {"sent": 50, "dropped": 0}


def test_drops_are_counted_when_the_receiver_does_not_read(receiver_sock):
    s, _ = receiver_sock
    n = 40_000  # ~2 MB of records: far more than a datagram queue nobody reads can hold
    for i in range(n):
        with sc.span(f"s{i}"):
            pass
    sc.flush()
    st = sc.stats()
    assert st["sent"] + st["dropped"] == n
    assert st["dropped"] > 0 and st["sent"] > 0
    # what was queued arrives whole, in order, with a non-decreasing drop counter
    s.setblocking(False)
    got = []
    while True:
        try:
            got += sc.decode_all(s.recv(65536))
        except BlockingIOError:
            break
    assert len(got) == st["sent"]
    counts = [g["dropped"] for g in got]
    assert counts == sorted(counts)
    # the next span carries the full count
    with sc.span("after"):
        pass
    sc.flush()
    s.setblocking(True)
    assert sc.decode_all(s.recv(65536))[-1]["dropped"] == st["dropped"]


def test_receiver_gone_never_raises():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "missing.sock")
    sc.configure(path)
    try:
        for _ in range(3):
            with sc.span("x"):
                pass
        sc.flush()
        assert sc.stats() == {"sent": 0, "dropped": 3}
    finally:
        sc.configure("")
        os.rmdir(d)


def test_header_layout_is_stable():
    # Documented in docs/format-spans.md; a change here is a wire-format change.
    assert sc.HEADER.format == "<4sqqqiiiiBIHH"
    assert sc.HEADER.size == struct.calcsize("<4sqqqiiiiBIHH") == 53


def test_forked_child_sends_with_its_own_pid(receiver_sock):
    s, _ = receiver_sock
    pid = os.fork()
    if pid == 0:  # child: fresh counters, its own socket, its own pid in the datagram
        code = 1
        try:
            with sc.span("child"):
                pass
            sc.flush()
            code = 0 if sc.stats() == {"sent": 1, "dropped": 0} else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d = sc.decode_all(s.recv(65536))[0]
    assert d["name"] == "child" and d["pid"] == pid


def test_thread_names_records_split_and_are_read_back_as_rows():
    from autoglm_trace.probes.span_receiver import thread_name_rows

    names = {1000 + i: f"tok-worker-{i:03d}-" + "x" * 40 for i in range(120)}
    recs = sc.thread_names_records(names, 77, pid=42)
    assert len(recs) > 1  # split to fit MAX_ATTRS each
    rows = []
    for r in recs:
        d = sc.decode(r)
        assert d["threads"] and len(r) - sc.HEADER.size <= sc.MAX_ATTRS + 20
        rows += thread_name_rows(d, 99)
    assert {(x["tid"], x["name"]) for x in rows} == {(k, v[:64]) for k, v in names.items()}
    assert all(x["pid"] == 42 and x["ts_ns"] == 99 for x in rows)
    bad = sc.decode(sc.encode("threads", 1, 1, pid=42, attrs={"not-a-tid": "x"}, flags=sc.FLAG_THREADS))
    assert thread_name_rows(bad, 99) is None
