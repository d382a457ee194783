"""The recorder's end of the span API: a Unix datagram socket the target sends finished spans to.

The socket lives in a private directory (mode 0700, from ``tempfile.mkdtemp``); when the recorder is
root and the target runs as the sudo user, directory and socket are given to that user
(``options["target_uid"]`` / ``options["target_gid"]``) so the target can connect and nobody else
can. ``target_env()`` announces the path in ``AUTOGLM_TRACE_SPAN_SOCKET``.

A thread blocks in ``recv`` and decodes datagrams into a list; ``sample()`` (the recorder's sampling
thread) moves them into the ``spans`` table. Loss is reported in ``probe_stats``:
``client_send_failed`` (the client's own cumulative drop counter, carried in every record: spans it
could not send because our queue was full -- Unix datagram sockets queue at most
``net.unix.max_dgram_qlen`` datagrams, 10 by default, which is why clients pack many spans into one
datagram -- or because its own buffer was full) and ``malformed`` (undecodable datagrams).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from typing import Any

from autoglm_trace import span_client
from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext

_RCVBUF = 4 << 20
_MAX_DGRAM = 65536


class SpanReceiver(Collector):
    name = "spans"
    tables = ("spans", "probe_stats")

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.options = dict(options or {})
        self.path: str | None = None
        self._dir: str | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._malformed = 0
        self._received = 0
        self._client_dropped: dict[int, int] = {}  # pid -> highest cumulative drop count seen
        self._reported_dropped = 0
        self._reported_malformed = 0
        self.spans_total = 0

    # Collector protocol ----------------------------------------------------------------------
    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        opts = {**ctx.options, **self.options}
        try:
            self._dir = tempfile.mkdtemp(prefix="autoglm-trace-spans-")
            self.path = os.path.join(self._dir, "spans.sock")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            s.bind(self.path)
        except OSError as e:
            self._cleanup_dir()
            raise CollectorUnavailable(f"cannot create the span socket: {e.strerror or e}") from None
        # A large receive buffer absorbs bursts (root may exceed net.core.rmem_max with FORCE).
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, _RCVBUF)
                break
            except OSError:
                continue
        uid, gid = opts.get("target_uid"), opts.get("target_gid")
        if uid is not None or gid is not None:
            u = -1 if uid is None else int(uid)
            g = -1 if gid is None else int(gid)
            try:
                os.chown(self._dir, u, g)
                os.chown(self.path, u, g)
            except OSError as e:
                ctx.note(f"spans: cannot give the span socket to uid {uid}: {e.strerror}; "
                         "a target running as that user cannot send spans")
        os.chmod(self.path, 0o600)
        s.settimeout(0.2)
        self._sock = s
        self._thread = threading.Thread(target=self._run, name="autoglm-span-receiver", daemon=True)
        self._thread.start()

    def target_env(self) -> dict[str, str]:
        return {span_client.ENV_VAR: self.path} if self.path else {}

    def sample(self, now_ns: int) -> None:
        self._drain(now_ns)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            # Whatever is still queued in the kernel arrived before stop: keep it.
            self._sock.setblocking(False)
            with contextlib.suppress(OSError):
                while True:
                    self._handle(self._sock.recv(_MAX_DGRAM))
            self._sock.close()
            self._sock = None
        self._drain(None)
        self._cleanup_dir()

    def status(self) -> dict[str, Any]:
        return {"events": self.spans_total, "lost": sum(self._client_dropped.values()) + self._malformed}

    def info(self) -> dict[str, Any]:
        return {"socket": self.path, "env": span_client.ENV_VAR}

    # Internals -------------------------------------------------------------------------------
    def _run(self) -> None:
        s = self._sock
        assert s is not None
        while not self._stop.is_set():
            try:
                data = s.recv(_MAX_DGRAM)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        try:
            recs = span_client.decode_all(data)
        except ValueError:
            with self._lock:
                self._malformed += 1
            return
        rows = []
        for d in recs:
            rows.append({
                "ts_ns": d["start_ns"],
                "end_ns": d["end_ns"],
                "name": d["name"],
                "source": "api",
                "pid": d["pid"],
                "tid": d["tid"],
                "ttft_ns": d["ttft_ns"],
                "prompt_tokens": d["prompt_tokens"],
                "output_tokens": d["output_tokens"],
                "ok": d["ok"],
                "attrs": d["attrs"],
            })
        with self._lock:
            self._pending.extend(rows)
            self._received += len(rows)
            for d in recs:
                pid = d["pid"]
                if d["dropped"] > self._client_dropped.get(pid, 0):
                    self._client_dropped[pid] = d["dropped"]

    def _drain(self, now_ns: int | None) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
            dropped = sum(self._client_dropped.values())
            malformed = self._malformed
        if self.ctx is None:
            return
        if rows:
            self.spans_total += len(rows)
            self.ctx.emit("spans", rows)
        ts = now_ns if now_ns is not None else span_client._monotonic_ns()
        stats = []
        if rows or dropped > self._reported_dropped:
            stats.append({"ts_ns": ts, "probe": "spans", "events": len(rows),
                          "lost": dropped - self._reported_dropped, "reason": "client_send_failed"})
        if malformed > self._reported_malformed:
            stats.append({"ts_ns": ts, "probe": "spans", "events": 0,
                          "lost": malformed - self._reported_malformed, "reason": "malformed"})
        self._reported_dropped, self._reported_malformed = dropped, malformed
        if stats:
            self.ctx.emit("probe_stats", stats)

    def _cleanup_dir(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
