"""Span client: free without a recorder, a compact datagram with one, drops counted, never raises."""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import time

import pytest

from autoglm_trace.probes import span_client as sc


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
    assert data[:4] == b"AGS1"
    assert len(data) == sc.HEADER.size + len("generate") + len('{"model":"m"}')
    d = sc.decode(data)
    assert d == {"start_ns": 10, "end_ns": 25, "ttft_ns": 7, "pid": 4, "tid": 5, "prompt_tokens": 100,
                 "output_tokens": None, "ok": False, "dropped": 3, "name": "generate",
                 "attrs": '{"model":"m"}'}
    with pytest.raises(ValueError):
        sc.decode(b"AGS1short")
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
    d = sc.decode(s.recv(65536))
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
    d = sc.decode(s.recv(65536))
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
    got = [sc.decode(s.recv(65536)) for _ in range(3)]
    assert [g["name"] for g in got] == ["inner", "outer", "test_nested_spans_and_decorators.<locals>.coro"]
    assert got[0]["ttft_ns"] is not None and got[1]["ttft_ns"] is None
    assert got[1]["start_ns"] <= got[0]["start_ns"] and got[0]["end_ns"] <= got[1]["end_ns"]


def test_drops_are_counted_when_the_receiver_does_not_read(receiver_sock):
    s, _ = receiver_sock
    n = 500
    for i in range(n):
        with sc.span(f"s{i}"):
            pass
    st = sc.stats()
    assert st["sent"] + st["dropped"] == n
    assert st["dropped"] > 0  # the kernel queue holds net.unix.max_dgram_qlen datagrams
    # the drop count travels in the datagrams: the last one queued carries a non-decreasing counter
    s.setblocking(False)
    counts = []
    while True:
        try:
            counts.append(sc.decode(s.recv(65536))["dropped"])
        except BlockingIOError:
            break
    assert len(counts) == st["sent"]
    assert counts == sorted(counts)
    # one more span after draining carries the full count
    with sc.span("after"):
        pass
    s.setblocking(True)
    assert sc.decode(s.recv(65536))["dropped"] == st["dropped"]


def test_receiver_gone_never_raises():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "missing.sock")
    sc.configure(path)
    try:
        for _ in range(3):
            with sc.span("x"):
                pass
        assert sc.stats() == {"sent": 0, "dropped": 3}
    finally:
        sc.configure("")
        os.rmdir(d)


def test_header_layout_is_stable():
    # Documented in docs/format-spans.md; a change here is a wire-format change.
    assert sc.HEADER.format == "<4sqqqiiiiBIH"
    assert sc.HEADER.size == struct.calcsize("<4sqqqiiiiBIH") == 51


def test_forked_child_sends_with_its_own_pid(receiver_sock):
    s, _ = receiver_sock
    pid = os.fork()
    if pid == 0:  # child: fresh counters, its own socket, its own pid in the datagram
        code = 1
        try:
            with sc.span("child"):
                pass
            code = 0 if sc.stats() == {"sent": 1, "dropped": 0} else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d = sc.decode(s.recv(65536))
    assert d["name"] == "child" and d["pid"] == pid
