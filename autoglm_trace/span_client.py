"""Request spans from inside a server, like NVTX ranges -- standard library only.

    from autoglm_trace import span, traced, mark_first_token

    with span("generate", prompt_tokens=p) as s:
        ...
        mark_first_token()          # or s.first_token()
        ...
        s.set(output_tokens=n)

    @traced("tokenize")
    def tokenize(text): ...

When ``autoglm-trace record -- CMD`` runs the server it puts ``AUTOGLM_TRACE_SPAN_SOCKET`` (a Unix
datagram socket) into the environment. Without it every call returns a shared no-op object: one
global read and one call, no allocation, no clock read. With it, each finished span is encoded into a
compact binary record and buffered; a daemon thread sends the buffer every 10 ms (a full 32 KiB at
once) with non-blocking ``send()``s, many records per datagram. When the receiver is slow (its queue
is full: EAGAIN), gone, or the buffer is full, spans are dropped and counted, and the count travels in
later records so the recording says how many were lost. Nothing here ever blocks or raises into the
server.

Wire format (little endian), see docs/format-spans.md; a datagram holds one or more records:
    header  struct "<4sqqqiiiiBIHH" (53 bytes)
            magic b"AGS2", start_ns, end_ns, ttft_ns (-1: none), pid, tid,
            prompt_tokens (-1: none), output_tokens (-1: none), flags (bit 0: ok; bit 1: a
            thread-names record, attrs {"<tid>": "<thread name>"}, not a span),
            dropped (cumulative spans this process failed to send), name_len, attrs_len
    then    name (UTF-8, name_len bytes), then attrs as a JSON object (UTF-8, attrs_len bytes)
Times are CLOCK_MONOTONIC ns (``time.monotonic_ns()``), the recording's clock.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

ENV_VAR = "AUTOGLM_TRACE_SPAN_SOCKET"
MAGIC = b"AGS2"
HEADER = struct.Struct("<4sqqqiiiiBIHH")
MAX_NAME = 200
# The receiver keeps a span that started at most this long before the recording (a request in flight
# when it began); the reader applies the same bound to a spans table.
MAX_EARLY_NS = 600 * 1_000_000_000
MAX_ATTRS = 3000  # bytes of JSON; larger attrs are replaced by {"_truncated": true}
FLAG_OK = 1
# A thread-names record, not a span: attrs is {"<tid>": "<Python thread name>"} for the process's
# threads, sent when they change (checked every THREAD_NAMES_EVERY_S by the flusher thread).
FLAG_THREADS = 2
THREAD_NAMES_EVERY_S = 1.0
MAX_DATAGRAM = 32768  # a flush packs records into datagrams up to this size
FLUSH_INTERVAL_S = 0.01  # a buffered span reaches the recorder within about this
MAX_BUFFERED = 8192  # records waiting in this process at most; beyond, new spans are dropped

F = TypeVar("F", bound=Callable[..., Any])

_monotonic_ns = time.monotonic_ns
_get_native_id = threading.get_native_id

# Process-wide state. ``_sock`` is None when no recorder listens: the hot path tests only that.
_sock: socket.socket | None = None
_path: str | None = None
_sent = 0
_dropped = 0
_lock = threading.Lock()
# Held by a flush from taking the buffer until its sends are counted: flushes from the flusher thread
# and from a span thread that filled the buffer go out in order, and ``stats()`` (which takes it too)
# counts every datagram a receiver already holds. The span hot path never takes it.
_send_lock = threading.Lock()
_local = threading.local()
_buf: list[bytes] = []
_buf_bytes = 0
_flusher: threading.Thread | None = None


def _connect(path: str | None) -> None:
    """(Re)open the datagram socket for ``path`` (None: become a no-op)."""
    global _sock, _path
    old, _sock, _path = _sock, None, path
    if old is not None:
        with contextlib.suppress(OSError):
            old.close()
    if not path:
        return
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        s.setblocking(False)
    except OSError:
        return
    # connect() may fail if the receiver is not there yet; send() retries via sendto then.
    with contextlib.suppress(OSError):
        s.connect(path)
    _sock = s


def configure(path: str | None = None) -> None:
    """Re-read the environment (or use ``path``). Called at import and in a forked child; call it
    yourself after changing ``AUTOGLM_TRACE_SPAN_SOCKET`` at run time."""
    global _sent, _dropped, _buf, _buf_bytes, _flusher
    flush()
    with _lock:
        _sent = _dropped = 0
        _buf, _buf_bytes = [], 0
        _flusher = None  # a running flusher sees it is no longer the one and ends
    _connect(path if path is not None else os.environ.get(ENV_VAR))


def _after_fork() -> None:
    # A forked worker must not share the parent's socket object or its counters, nor inherit the
    # counter lock in a held state (another thread may have held it at fork time).
    global _sent, _dropped, _local, _lock, _send_lock, _buf, _buf_bytes, _flusher
    _sent = _dropped = 0
    _lock = threading.Lock()
    _send_lock = threading.Lock()
    _local = threading.local()
    _buf, _buf_bytes, _flusher = [], 0, None  # the parent's spans are the parent's to send
    _connect(_path if _path else os.environ.get(ENV_VAR))


def enabled() -> bool:
    return _sock is not None


def stats() -> dict[str, int]:
    """Spans sent and dropped by this process since the socket was configured. A flush in progress
    is waited for, so a span the receiver already got is counted as sent."""
    with _send_lock:
        return {"sent": _sent, "dropped": _dropped}


def encode(
    name: str,
    start_ns: int,
    end_ns: int,
    *,
    ttft_ns: int | None = None,
    pid: int = 0,
    tid: int = 0,
    prompt_tokens: int | None = None,
    output_tokens: int | None = None,
    ok: bool = True,
    dropped: int = 0,
    attrs: dict[str, Any] | None = None,
    flags: int = 0,
) -> bytes:
    nb = str(name).encode("utf-8", "replace")[:MAX_NAME]
    ab = b""
    if attrs:
        try:
            ab = json.dumps(attrs, separators=(",", ":"), default=str).encode()
        except (TypeError, ValueError):
            ab = b'{"_unencodable":true}'
        if len(ab) > MAX_ATTRS:
            ab = b'{"_truncated":true}'
    return (
        HEADER.pack(
            MAGIC,
            start_ns,
            end_ns,
            -1 if ttft_ns is None else ttft_ns,
            pid,
            tid,
            -1 if prompt_tokens is None else _clamp_i32(prompt_tokens),
            -1 if output_tokens is None else _clamp_i32(output_tokens),
            (FLAG_OK if ok else 0) | flags,
            dropped & 0xFFFFFFFF,
            len(nb),
            len(ab),
        )
        + nb
        + ab
    )


def decode_all(data: bytes) -> list[dict[str, Any]]:
    """Every record of a datagram (a flush packs several); raises ValueError on a malformed one."""
    out, off = [], 0
    while off < len(data):
        rec, off = _decode_at(data, off)
        out.append(rec)
    return out


def decode(data: bytes) -> dict[str, Any]:
    """The one record in ``data`` (as ``encode`` returns it)."""
    rec, off = _decode_at(data, 0)
    if off != len(data):
        raise ValueError(f"{len(data) - off} bytes after the record")
    return rec


def _decode_at(data: bytes, off: int) -> tuple[dict[str, Any], int]:
    if len(data) - off < HEADER.size:
        raise ValueError(f"{len(data) - off} bytes left, shorter than the {HEADER.size}-byte header")
    magic, start, end, ttft, pid, tid, pt, ot, flags, dropped, nlen, alen = HEADER.unpack_from(data, off)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    p = off + HEADER.size
    if p + nlen + alen > len(data):
        raise ValueError("record runs past the datagram")
    name = data[p : p + nlen].decode("utf-8", "replace")
    attrs = data[p + nlen : p + nlen + alen].decode("utf-8", "replace") if alen else None
    return {
        "start_ns": start,
        "end_ns": end,
        "ttft_ns": None if ttft < 0 else ttft,
        "pid": pid,
        "tid": tid,
        "prompt_tokens": None if pt < 0 else pt,
        "output_tokens": None if ot < 0 else ot,
        "ok": bool(flags & FLAG_OK),
        "threads": bool(flags & FLAG_THREADS),
        "dropped": dropped,
        "name": name,
        "attrs": attrs,
    }, p + nlen + alen


def _clamp_i32(v: Any) -> int:
    try:
        return max(-1, min(int(v), 0x7FFFFFFF))
    except (TypeError, ValueError):
        return -1


def _enqueue(record: bytes) -> None:
    """Buffer one encoded span; a full datagram's worth is sent at once, the rest by the flusher
    thread within FLUSH_INTERVAL_S. One syscall per many spans, and a burst rides out a recorder
    that is briefly off-CPU instead of overflowing its small datagram queue."""
    global _dropped, _buf_bytes, _flusher
    with _lock:
        if len(_buf) >= MAX_BUFFERED:
            _dropped += 1
            return
        _buf.append(record)
        _buf_bytes += len(record)
        full = _buf_bytes >= MAX_DATAGRAM
        start = _flusher is None
        if start:
            _flusher = threading.Thread(target=_flush_loop, name="autoglm-span-flush", daemon=True)
    if start:
        _flusher.start()  # type: ignore[union-attr]
    if full:
        flush()


def _flush_loop() -> None:
    me = threading.current_thread()
    names_due = time.monotonic() + THREAD_NAMES_EVERY_S
    while _flusher is me and _sock is not None:
        time.sleep(FLUSH_INTERVAL_S)
        now = time.monotonic()
        if now >= names_due:
            names_due = now + THREAD_NAMES_EVERY_S
            _report_thread_names()
        if _buf:
            flush()


_names_sent: dict[int, str] = {}


def thread_names_records(names: dict[int, str], now_ns: int, pid: int) -> list[bytes]:
    """Thread-names records for ``names`` ({tid: name}), split so each fits MAX_ATTRS."""
    out, chunk, size = [], {}, 2
    for tid, name in sorted(names.items()):
        item = len(json.dumps({str(tid): name[:64]})) + 1
        if chunk and size + item > MAX_ATTRS:
            out.append(chunk)
            chunk, size = {}, 2
        chunk[str(tid)] = name[:64]
        size += item
    if chunk:
        out.append(chunk)
    return [encode("threads", now_ns, now_ns, pid=pid, tid=_get_native_id(), dropped=_dropped, attrs=c,
                   flags=FLAG_THREADS) for c in out]


def _report_thread_names() -> None:
    """Send the Python names of this process's threads when they changed (the kernel's comm of a
    Python thread is the process's name: only Python knows "tok-worker")."""
    try:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
        if names == _names_sent:
            return
        new = {k: v for k, v in names.items() if _names_sent.get(k) != v}
        _names_sent.clear()
        _names_sent.update(names)
        for r in thread_names_records(new, _monotonic_ns(), os.getpid()):
            _enqueue(r)
    except Exception:  # never into the server
        pass


def flush() -> None:
    """Send what is buffered now (non-blocking; what cannot be sent is counted as dropped)."""
    global _buf, _buf_bytes
    with _send_lock:
        with _lock:
            records, _buf, _buf_bytes = _buf, [], 0
        if records:
            _send(records)


def _send(records: list[bytes]) -> None:
    """Send ``records`` packed into datagrams; count each datagram's spans as sent or dropped."""
    global _sent, _dropped
    s = _sock
    i = 0
    while i < len(records):
        size, j = 0, i
        while j < len(records) and (j == i or size + len(records[j]) <= MAX_DATAGRAM):
            size += len(records[j])
            j += 1
        ok = False
        if s is not None:
            payload = b"".join(records[i:j])
            try:
                try:
                    s.send(payload)
                except OSError as e:
                    # Not connected yet (receiver started after us), or it went away and came back.
                    if isinstance(e, BlockingIOError) or _path is None:
                        raise
                    s.sendto(payload, _path)
                ok = True
            except Exception:  # EAGAIN (queue full), ECONNREFUSED, ENOENT ...: count, never raise
                ok = False
        with _lock:
            if ok:
                _sent += j - i
            else:
                _dropped += j - i
        i = j


class Span:
    """One timed region. Use as a context manager (``with span(...)``) or a decorator."""

    __slots__ = ("name", "start_ns", "ttft_ns", "prompt_tokens", "output_tokens", "ok", "attrs", "_prev")

    def __init__(self, name: str, prompt_tokens: int | None, output_tokens: int | None, attrs: dict) -> None:
        self.name = name
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.attrs = attrs
        self.ok = True
        self.ttft_ns: int | None = None
        self.start_ns = 0
        self._prev: Span | None = None

    def __enter__(self) -> Span:
        self._prev = getattr(_local, "cur", None)
        _local.cur = self
        self.start_ns = _monotonic_ns()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        end = _monotonic_ns()
        try:
            _local.cur = self._prev
            self._prev = None
            ok = self.ok and exc_type is None
            attrs = self.attrs
            if exc_type is not None:
                attrs = dict(attrs, error=exc_type.__name__)
            _enqueue(
                encode(
                    self.name,
                    self.start_ns,
                    end,
                    ttft_ns=self.ttft_ns,
                    pid=os.getpid(),
                    tid=_get_native_id(),
                    prompt_tokens=self.prompt_tokens,
                    output_tokens=self.output_tokens,
                    ok=ok,
                    dropped=_dropped,
                    attrs=attrs,
                )
            )
        except Exception:
            pass
        return False

    def first_token(self) -> None:
        """Mark time-to-first-token now (the first mark wins)."""
        if self.ttft_ns is None:
            self.ttft_ns = _monotonic_ns() - self.start_ns

    def set(self, **values: Any) -> None:
        """Update token counts, ``ok`` or attributes before the span ends."""
        for k, v in values.items():
            if k in ("prompt_tokens", "output_tokens", "ok"):
                setattr(self, k, v)
            else:
                self.attrs = dict(self.attrs, **{k: v})

    def fail(self) -> None:
        self.ok = False

    def __call__(self, fn: F) -> F:
        return traced(self.name, prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, **self.attrs)(fn)


class _NoopSpan:
    """What ``span()`` returns when no recorder listens: shared, stateless, free."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = ""

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return False

    def first_token(self) -> None:
        pass

    def set(self, **values: Any) -> None:
        pass

    def fail(self) -> None:
        pass

    def __call__(self, fn: F) -> F:
        # ``@span("x")`` with no recorder at import time: leave the function alone (``@traced``
        # decides per call instead).
        return fn

    ok = True
    ttft_ns = None


_NOOP = _NoopSpan()


def span(name: str, *, prompt_tokens: int | None = None, output_tokens: int | None = None, **attrs: Any) -> Any:
    """A span around a request or a phase of one. Extra keyword arguments become attributes.
    Without a recorder this returns one shared no-op object (no allocation, no clock read)."""
    if _sock is None:
        return _NOOP
    return Span(name, prompt_tokens, output_tokens, attrs)


def mark_first_token() -> None:
    """Mark time-to-first-token in this thread's innermost open span (no-op without a recorder)."""
    if _sock is None:
        return
    cur = getattr(_local, "cur", None)
    if cur is not None:
        cur.first_token()


def current_span() -> Any:
    """This thread's innermost open span (the no-op span when none or no recorder)."""
    if _sock is None:
        return _NOOP
    return getattr(_local, "cur", None) or _NOOP


def traced(name: Any = None, **span_kwargs: Any) -> Any:
    """Decorator: ``@traced``, ``@traced("name")`` or ``@traced(name="x", model="m")``. Each call of
    the function (awaited, for coroutine functions) is one span. Whether a recorder listens is decided
    per call, so functions decorated at import still trace after ``configure()``."""

    def wrap(fn: F) -> F:
        label = name if isinstance(name, str) else getattr(fn, "__qualname__", "span")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                if _sock is None:
                    return await fn(*args, **kwargs)
                with span(label, **span_kwargs):
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _sock is None:
                return fn(*args, **kwargs)
            with span(label, **span_kwargs):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    if callable(name) and not isinstance(name, str):  # bare @traced
        fn, name = name, None
        return wrap(fn)
    return wrap


configure()
atexit.register(flush)  # spans that ended just before exit still go out
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
