"""Request latencies from a server's own log: ``analyze REC --latency FILE`` imports one after the
fact, ``record --latency-log FILE`` tails one live (``LatencyLogTail``). Both land in ``spans`` with
source ``log``.

Accepted input, one request per line, times in wall-clock (UNIX) seconds:

* JSON Lines: ``{"start": 1732500000.12, "end": 1732500000.87}`` or ``{"time": ..., "latency": 0.75}``
* CSV with a header row naming the same columns: ``start,end,name`` or ``time,latency``

Columns: ``start`` / ``end`` (or ``start_time`` / ``end_time``); ``time`` (aliases ``ts``,
``timestamp``) is when the request *finished* -- a log line is written on completion -- unless
``start`` is given; ``latency`` in seconds (aliases ``latency_s``, ``duration``, ``duration_s``) or
``latency_ms``. Optional: ``name``, ``ok`` (true/false) or ``status`` (HTTP code: >= 400 is a failure),
``prompt_tokens``, ``output_tokens``, ``ttft`` (seconds from start) or ``ttft_ms``; other columns go
into ``attrs``. A malformed line is reported as ``line N: what is wrong`` and skipped, never the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import clock
from autoglm_trace.collector import Collector, SessionContext
from autoglm_trace.safefile import open_regular_as, read_regular

START_KEYS = ("start", "start_time", "start_s")
END_KEYS = ("end", "end_time", "end_s")
TIME_KEYS = ("time", "ts", "timestamp")
LATENCY_KEYS = ("latency", "latency_s", "duration", "duration_s")
KNOWN = set(START_KEYS + END_KEYS + TIME_KEYS + LATENCY_KEYS) | {
    "latency_ms", "name", "ok", "status", "prompt_tokens", "output_tokens", "ttft", "ttft_s", "ttft_ms",
}
MAX_LOG_BYTES = 512 << 20  # analyze --latency reads a whole file at most this large
MAX_READ_PER_POLL = 16 << 20
# Messages say which line and what is wrong, never the line's text: the log may be one only the
# recorder (root) can read, and the errors land in a manifest the user owns.
# Wall-clock seconds after 2001-09-09 and before 2286: anything else is not UNIX seconds.
MIN_WALL_S, MAX_WALL_S = 1e9, 1e10


class LineError(ValueError):
    pass


def _num(rec: dict[str, Any], key: str) -> float:
    v = rec[key]
    if isinstance(v, bool):
        raise LineError(f"{key!r} is a boolean, not a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise LineError(f"{key!r} is not a number") from None
    if not math.isfinite(f):
        raise LineError(f"{key!r} is not finite")
    return f


def _first(rec: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return k
    return None


def _ns(v: float, scale: int = 1_000_000_000) -> int:
    # Through the shortest decimal repr: 1732500000.25 s is exactly ...250000000 ns, which
    # float multiplication (ulp ~240 ns at this magnitude) would not give.
    return int((Decimal(repr(v)) * scale).to_integral_value())


def _wall_ns(rec: dict[str, Any], key: str) -> int:
    v = _num(rec, key)
    if v > MAX_WALL_S * 100:
        raise LineError(f"{key!r} looks like milliseconds or nanoseconds; wall-clock seconds expected")
    if not (MIN_WALL_S <= v <= MAX_WALL_S):
        raise LineError(f"{key!r} is not a UNIX time in seconds")
    return _ns(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "ok", "t", "y"):
        return True
    if s in ("0", "false", "no", "fail", "failed", "error", "f", "n"):
        return False
    raise LineError("'ok' is not a boolean")


def record_to_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One parsed line -> a row with wall-clock ns (``start_wall_ns``, ``end_wall_ns``) and the
    optional span fields. Raises LineError saying what is wrong."""
    ks, ke, kt, kl = _first(rec, START_KEYS), _first(rec, END_KEYS), _first(rec, TIME_KEYS), _first(rec, LATENCY_KEYS)
    latency: int | None = None
    if kl is not None:
        lat = _num(rec, kl)
        latency = _ns(lat)
    elif rec.get("latency_ms") not in (None, ""):
        lat = _num(rec, "latency_ms")
        latency = _ns(lat, 1_000_000)
    if latency is not None and latency < 0:
        raise LineError("negative latency")
    if ks is not None and ke is not None:
        start, end = _wall_ns(rec, ks), _wall_ns(rec, ke)
    elif ks is not None and latency is not None:
        start = _wall_ns(rec, ks)
        end = start + latency
    elif (ke or kt) is not None and latency is not None:
        end = _wall_ns(rec, ke or kt)  # type: ignore[arg-type]
        start = end - latency
    else:
        raise LineError("needs start and end, or a time and a latency")
    if end < start:
        raise LineError("end is before start")
    row: dict[str, Any] = {
        "start_wall_ns": start,
        "end_wall_ns": end,
        "name": str(rec.get("name") or "request"),
        "ok": True,
        "prompt_tokens": None,
        "output_tokens": None,
        "ttft_ns": None,
    }
    if rec.get("ok") not in (None, ""):
        row["ok"] = _bool(rec["ok"])
    elif rec.get("status") not in (None, ""):
        row["ok"] = _num(rec, "status") < 400
    for k in ("prompt_tokens", "output_tokens"):
        if rec.get(k) not in (None, ""):
            v = _num(rec, k)
            if v < 0 or v != int(v):
                raise LineError(f"{k!r} is not a count")
            row[k] = int(v)
    kttft = _first(rec, ("ttft", "ttft_s"))
    if kttft is not None:
        row["ttft_ns"] = _ns(_num(rec, kttft))
    elif rec.get("ttft_ms") not in (None, ""):
        row["ttft_ns"] = _ns(_num(rec, "ttft_ms"), 1_000_000)
    extra = {k: v for k, v in rec.items() if k not in KNOWN and v not in (None, "")}
    row["attrs"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def _is_jsonl(first_line: str) -> bool:
    return first_line.lstrip().startswith("{")


def parse_lines(lines: list[str], first_lineno: int = 1, header: list[str] | None = None,
                fmt: str | None = None) -> tuple[list[dict[str, Any]], list[str], list[str] | None, str | None]:
    """Parse lines (without newlines). Returns rows, errors, the CSV header and the format so that a
    tail can carry on where it stopped."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for i, raw in enumerate(lines):
        n = first_lineno + i
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if fmt is None:
            fmt = "jsonl" if _is_jsonl(line) else "csv"
            if fmt == "csv":
                header = [h.strip() for h in next(csv.reader([line]))]
                if not any(h in KNOWN for h in header):
                    errors.append(f"line {n}: not a CSV header naming start/end or time/latency columns")
                    header, fmt = None, None
                continue
        try:
            if fmt == "jsonl":
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise LineError(f"not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise LineError("not a JSON object")
            else:
                assert header is not None
                fields = next(csv.reader(io.StringIO(line)))
                if len(fields) != len(header):
                    raise LineError(f"{len(fields)} fields, the header has {len(header)}")
                rec = dict(zip(header, (f.strip() for f in fields), strict=True))
            rows.append(record_to_row(rec))
        except LineError as e:
            errors.append(f"line {n}: {e}")
    return rows, errors, header, fmt


def parse_latency_file(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a JSONL or CSV latency log. Returns (rows with wall-clock ns, errors as 'line N: ...').
    Raises OSError when the file cannot be read at all."""
    text = read_regular(path, MAX_LOG_BYTES, follow=True).decode("utf-8", errors="replace")
    rows, errors, _h, fmt = parse_lines(text.splitlines())
    if fmt is None and not rows and not errors:
        errors.append("line 1: the file holds no requests")
    return rows, errors


def to_spans(rows: list[dict[str, Any]], wall_offset_ns: int, source: str = "log") -> list[dict[str, Any]]:
    """Rows from the parser -> ``spans`` rows on the monotonic clock (``monotonic = wall - offset``,
    the offset being the manifest's ``clock.monotonic_to_wall_ns``, ``Recording.wall_offset_ns``)."""
    return [{
        "ts_ns": r["start_wall_ns"] - wall_offset_ns,
        "end_ns": r["end_wall_ns"] - wall_offset_ns,
        "name": r["name"],
        "source": source,
        "pid": None,
        "tid": None,
        "ttft_ns": r["ttft_ns"],
        "prompt_tokens": r["prompt_tokens"],
        "output_tokens": r["output_tokens"],
        "ok": r["ok"],
        "attrs": r["attrs"],
    } for r in rows]


def latency_spans(path: str | os.PathLike[str], wall_offset_ns: int) -> tuple[pa.Table, list[str]]:
    """For ``analyze REC --latency FILE``: the file's requests as a ``spans`` table (source ``log``)
    on the recording's clock (pass ``Recording.wall_offset_ns``), and the 'line N: ...' errors."""
    from autoglm_trace import schema

    rows, errors = parse_latency_file(path)
    return pa.Table.from_pylist(to_spans(rows, wall_offset_ns), schema=schema.schema_for("spans")), errors


class LatencyLogTail(Collector):
    """Follow a latency log while recording (like ``tail -F``): new complete lines become spans.
    Lines already in the file when recording starts are skipped unless ``from_start``. A file that
    does not exist yet is waited for; truncation or replacement (log rotation) starts over."""

    name = "latency_log"
    tables = ("spans", "probe_stats")
    MAX_NOTES = 5

    def __init__(self, path: str | os.PathLike[str], from_start: bool = False, poll_s: float = 0.25) -> None:
        super().__init__()
        self.path = Path(path)
        self.from_start = from_start
        self.poll_s = poll_s
        self._f: io.BufferedReader | None = None
        self._ino: tuple[int, int] | None = None
        self._refused: tuple[int, ...] | None = None
        self._buf = b""
        self._lineno = 0
        self._header: list[str] | None = None
        self._fmt: str | None = None
        self._offset_ns = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.spans_total = 0
        self.errors_total = 0

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        off = ctx.options.get("monotonic_to_wall_ns")
        self._offset_ns = int(off) if off is not None else clock.monotonic_to_wall_offset_ns()
        self._open(initial=True)
        self._thread = threading.Thread(target=self._run, name="autoglm-latency-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._poll(final=True)
        if self._f is not None:
            self._f.close()
            self._f = None

    def status(self) -> dict[str, Any]:
        return {"events": self.spans_total, "lost": self.errors_total}

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def _run_as(self) -> tuple[int, int] | None:
        o = self.ctx.options if self.ctx is not None else {}
        uid, gid = o.get("target_uid"), o.get("target_gid")
        return (int(uid), int(gid)) if uid is not None and gid is not None else None

    def _open(self, initial: bool = False) -> None:
        try:
            st0 = os.stat(self.path)
        except OSError:  # waiting for the log to appear: no opener child per poll
            return
        key = (st0.st_dev, st0.st_ino, st0.st_mode, st0.st_uid, st0.st_gid)
        if key == self._refused:  # the same file refused before: retried once it changes
            return
        run_as = self._run_as()
        try:
            # With the sudo user's permissions: a link to a root-only file gives nothing away.
            f = os.fdopen(open_regular_as(self.path, run_as), "rb")  # kept open while tailing
        except OSError as e:
            self._refused = key
            if self.ctx is not None:
                who = f" as uid {run_as[0]}" if run_as else ""
                self.ctx.note(f"latency log {self.path}: cannot open{who}: {e.strerror or e}")
            return
        st = os.fstat(f.fileno())
        if initial and not self.from_start:
            # Skip what was there, but keep the CSV header so later lines can be read.
            head = f.readline()
            self._lineno = 1 if head else 0
            if head and not _is_jsonl(head.decode("utf-8", "replace")):
                self._header = [h.strip() for h in next(csv.reader([head.decode("utf-8", "replace").strip()]))]
                self._fmt = "csv"
            rest = f.read()
            self._lineno += rest.count(b"\n")
            self._buf = rest[rest.rfind(b"\n") + 1:] if b"\n" in rest else rest
            if self._fmt is None and head and _is_jsonl(head.decode("utf-8", "replace")):
                self._fmt = "jsonl"
        else:
            self._buf, self._lineno, self._header, self._fmt = b"", 0, None, None
        self._f, self._ino = f, (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != self._ino:
            return True
        assert self._f is not None
        return st.st_size < self._f.tell()

    def _poll(self, final: bool = False) -> None:
        if self._f is None:
            self._open()
            if self._f is None:
                return
        data = self._f.read(MAX_READ_PER_POLL)  # bounded: a log that grew by gigabytes is read in steps
        if data:
            self._buf += data
            self._consume(final=False)
        if final:
            self._consume(final=True)
        elif self._rotated():
            self._consume(final=True)
            self._f.close()
            self._f = None
            self._open()

    def _consume(self, final: bool) -> None:
        assert self.ctx is not None
        if b"\n" in self._buf:
            complete, self._buf = self._buf.rsplit(b"\n", 1)
            lines = complete.decode("utf-8", "replace").split("\n")
        else:
            lines = []
        if final and self._buf:
            lines.append(self._buf.decode("utf-8", "replace"))
            self._buf = b""
        if not lines:
            return
        rows, errors, self._header, self._fmt = parse_lines(lines, self._lineno + 1, self._header, self._fmt)
        self._lineno += len(lines)
        if rows:
            self.ctx.emit("spans", to_spans(rows, self._offset_ns))
            self.spans_total += len(rows)
        if errors:
            for e in errors:
                if self.errors_total < self.MAX_NOTES:
                    self.ctx.note(f"latency log {self.path}: {e} (skipped)")
                self.errors_total += 1
        if rows or errors:
            self.ctx.emit("probe_stats", [{"ts_ns": time.monotonic_ns(), "probe": "latency_log",
                                           "events": len(rows), "lost": len(errors),
                                           "reason": "malformed_line" if errors else None}])

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._poll()
            except Exception as e:  # a tail must never take the recorder down
                if self.ctx is not None:
                    self.ctx.note(f"latency log {self.path}: {type(e).__name__}: {e}")
