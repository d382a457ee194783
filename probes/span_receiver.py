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

The target is not trusted: every decoded span is checked before it is kept (``check_span``) and one
that fails is dropped and counted, per reason, in ``probe_stats`` (``reason = 'rejected_<why>'``) and
in the manifest (``stats.spans.rejected`` / ``rejected_by``): a start before the recorder could have
seen it (``start_ns = 0`` would make an incident an hour before the recording) or after now, an end
before the start, a first token outside the span, a pid/tid outside the kernel's range, a dropped
counter that could not have been reached (``2^32 - 1`` is not loss), attrs that are not a JSON object.
"""

from __future__ import annotations

import contextlib
import json
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
MAX_LATE_NS = 1_000_000_000  # slack for a span ending while we read the clock
PID_MAX = 1 << 22  # PID_MAX_LIMIT (include/linux/threads.h)
# A client cannot have dropped more spans than it could make: at most this many per second of recording.
MAX_DROPS_PER_S = 2_000_000
MAX_DROPS_BASE = 100_000


def check_span(d: dict[str, Any], earliest_ns: int, now_ns: int, max_dropped: int) -> str | None:
    """Why the decoded span ``d`` is refused (a short reason), or None when it is kept."""
    start, end, ttft = d["start_ns"], d["end_ns"], d["ttft_ns"]
    if start < earliest_ns or start > now_ns + MAX_LATE_NS:
        return "start_outside_recording"
    if end < start:
        return "end_before_start"
    if end > now_ns + MAX_LATE_NS:
        return "end_in_future"
    if ttft is not None and ttft > end - start:
        return "ttft_outside_span"
    if not (0 < d["pid"] <= PID_MAX and 0 < d["tid"] <= PID_MAX):
        return "bad_pid"
    if d["dropped"] > max_dropped:
        return "implausible_dropped"
    attrs = d["attrs"]
    if attrs is not None:
        try:
            ok = isinstance(json.loads(attrs), dict)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            return "attrs_not_json_object"
    return None


def thread_name_rows(d: dict[str, Any], now_ns: int) -> list[dict[str, Any]] | None:
    """``thread_names`` rows from a thread-names record (span_client.FLAG_THREADS); None: refused."""
    if not 0 < d["pid"] <= PID_MAX:
        return None
    try:
        names = json.loads(d["attrs"] or "{}")
    except (ValueError, RecursionError):
        return None
    if not isinstance(names, dict):
        return None
    rows = []
    for k, v in names.items():
        try:
            tid = int(k)
        except ValueError:
            return None
        if not (0 < tid <= PID_MAX and isinstance(v, str)):
            return None
        rows.append({"ts_ns": now_ns, "pid": d["pid"], "tid": tid, "name": v[:64], "source": "api"})
    return rows


class SpanReceiver(Collector):
    name = "spans"
    tables = ("spans", "thread_names", "probe_stats")

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
        self._names: list[dict[str, Any]] = []
        self._malformed = 0
        self._received = 0
        self._client_dropped: dict[int, int] = {}  # pid -> highest cumulative drop count seen
        self._reported_dropped = 0
        self._reported_malformed = 0
        self.rejected: dict[str, int] = {}
        self._reported_rejected: dict[str, int] = {}
        self._started_ns = span_client._monotonic_ns()
        self.spans_total = 0

    # Collector protocol ----------------------------------------------------------------------
    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self._started_ns = span_client._monotonic_ns()
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
        with self._lock:
            rejected = dict(self.rejected)
        return {"events": self.spans_total, "lost": sum(self._client_dropped.values()) + self._malformed,
                "rejected": sum(rejected.values()), "rejected_by": rejected}

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
        now = span_client._monotonic_ns()
        earliest = self._started_ns - span_client.MAX_EARLY_NS
        max_dropped = MAX_DROPS_BASE + MAX_DROPS_PER_S * max(0, now - self._started_ns) // 1_000_000_000
        rows, kept, refused = [], [], []
        names = []
        for d in recs:
            if d.get("threads"):
                got = thread_name_rows(d, now)
                if got is None:
                    refused.append("bad_thread_names")
                else:
                    names.extend(got)
                continue
            why = check_span(d, earliest, now, max_dropped)
            if why is not None:
                refused.append(why)
                continue
            kept.append(d)
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
            self._names.extend(names)
            self._pending.extend(rows)
            self._received += len(rows)
            for why in refused:
                self.rejected[why] = self.rejected.get(why, 0) + 1
            for d in kept:
                pid = d["pid"]
                if d["dropped"] > self._client_dropped.get(pid, 0):
                    self._client_dropped[pid] = d["dropped"]

    def _drain(self, now_ns: int | None) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
            names, self._names = self._names, []
            dropped = sum(self._client_dropped.values())
            malformed = self._malformed
            rejected = dict(self.rejected)
        if self.ctx is None:
            return
        if rows:
            self.spans_total += len(rows)
            self.ctx.emit("spans", rows)
        if names:
            self.ctx.emit("thread_names", names)
        ts = now_ns if now_ns is not None else span_client._monotonic_ns()
        stats = []
        if rows or dropped > self._reported_dropped:
            stats.append({"ts_ns": ts, "probe": "spans", "events": len(rows),
                          "lost": dropped - self._reported_dropped, "reason": "client_send_failed"})
        if malformed > self._reported_malformed:
            stats.append({"ts_ns": ts, "probe": "spans", "events": 0,
                          "lost": malformed - self._reported_malformed, "reason": "malformed"})
        for why, n in sorted(rejected.items()):
            if n > self._reported_rejected.get(why, 0):
                stats.append({"ts_ns": ts, "probe": "spans", "events": 0,
                              "lost": n - self._reported_rejected.get(why, 0), "reason": f"rejected_{why}"})
        self._reported_dropped, self._reported_malformed = dropped, malformed
        self._reported_rejected = rejected
        if stats:
            self.ctx.emit("probe_stats", stats)

    def _cleanup_dir(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
