"""The in-memory ring: the last N seconds of every table, bounded in bytes.

``RingSink`` is a Sink (autoglm_trace/sinks.py): the recorder's FanOut (tracer/fanout.py) hands it every batch any collector
emits. It keeps, per table, a deque of *chunks* -- consecutive batches whose timestamps span at most
``duration_ns / CHUNKS_PER_DURATION`` -- and evicts whole chunks:

* by age: a chunk whose newest row is older than ``duration_ns`` before the newest data of any table
  leaves (so the ring holds between DURATION and DURATION * (1 + 1/CHUNKS_PER_DURATION));
* by size: while the ring holds more than ``max_bytes`` (Arrow buffer bytes), the oldest chunk across
  all tables leaves (chunks also hold at most ``max_bytes / CHUNKS_PER_DURATION``), and the rows it held are counted as *dropped* (lost before their time) so the
  user can see the ring is too small for the rate -- never a silent loss.

Small batches (one per table per 100 ms tick) are concatenated when their chunk closes, so the number
of Python and Arrow objects held stays around ``CHUNKS_PER_DURATION`` per table whatever the rate,
and the byte count is what the Arrow memory pool really holds (buffer sizes, not logical sizes).

Used by the flight recorder (tracer/flight/: snapshots written as ordinary recordings) and by the
live view and exporter (through analysis/live.py's ``LiveRecording``). Thread-safe: collectors emit
from the sampling thread and their own threads while readers snapshot from others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace import schema

CHUNKS_PER_DURATION = 64
MAX_CHUNK_ROWS = 256_000
MAX_OPEN_BATCHES = 64  # batches gathered in the open chunk before it is concatenated in place
# A timestamp this far beyond the clock is a collector bug, not "the newest data": it must not
# age the whole ring out.
FUTURE_SLACK_NS = 60_000_000_000


# The memory pool rounds every allocation up to 64 bytes, so a one-row batch of 19 columns holds
# about 2 KiB, not the 200 bytes its buffers report. Charged per column (validity + data buffers)
# so that the many small batches of the open chunks are not under-counted; a concatenated chunk
# pays it once.
PER_COLUMN_OVERHEAD = 128


def _buffer_bytes(batch: pa.RecordBatch) -> int:
    """Bytes of the buffers the batch keeps alive (a slice keeps its parent's whole buffers), plus
    the allocator's rounding."""
    try:
        size = int(batch.get_total_buffer_size())
    except (AttributeError, pa.ArrowException):
        size = int(batch.nbytes)
    return size + PER_COLUMN_OVERHEAD * batch.num_columns


@dataclass
class _Chunk:
    min_ts: int
    max_ts: int
    batches: list[pa.RecordBatch]
    rows: int
    nbytes: int
    first_seq: int = 0  # the table's rows_in before this chunk's first row (rows arrive in order)
    closed: bool = False


@dataclass
class _TableRing:
    schema: pa.Schema
    chunks: deque[_Chunk] = field(default_factory=deque)
    rows: int = 0
    nbytes: int = 0
    rows_in: int = 0  # every row ever received
    evicted_rows: int = 0  # aged out (normal)
    evicted_bytes: int = 0
    dropped_rows: int = 0  # evicted by the byte limit before they aged out (data loss)
    dropped_bytes: int = 0
    generation: int = 0  # bumps on every change: readers cache on it


class RingSink:
    """Keep the last ``duration_ns`` of every table in memory, at most ``max_bytes``."""

    def __init__(self, duration_ns: int, max_bytes: int = 256 << 20,
                 chunk_ns: int | None = None) -> None:
        if duration_ns <= 0:
            raise ValueError("ring duration must be positive")
        if max_bytes <= 0:
            raise ValueError("ring size limit must be positive")
        self.duration_ns = int(duration_ns)
        self.max_bytes = int(max_bytes)
        self.chunk_ns = int(chunk_ns if chunk_ns is not None else max(1, self.duration_ns // CHUNKS_PER_DURATION))
        # Chunks are also bounded in bytes so the size limit evicts in small steps, never half
        # the ring at once.
        self.chunk_bytes = max(1, self.max_bytes // CHUNKS_PER_DURATION)
        self._tables: dict[str, _TableRing] = {}
        self._bytes = 0
        self._newest_ns: int | None = None
        self._lock = threading.RLock()
        self.closed = False

    # Sink --------------------------------------------------------------------------------------
    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        sch = schema.schema_for(table)
        batches = self._conform(batch, sch)
        for b in batches:
            ts = b.column(b.schema.get_field_index("ts_ns"))
            mm = pc.min_max(ts)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is None:  # ts_ns is non-nullable in the schema; a null column is a collector bug
                continue
            self._add(table, sch, b, int(lo), int(hi))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _conform(batch: pa.RecordBatch | pa.Table, sch: pa.Schema) -> list[pa.RecordBatch]:
        if isinstance(batch, pa.Table):
            t = batch if batch.schema.equals(sch) else batch.cast(sch)
            return [b for b in t.combine_chunks().to_batches() if b.num_rows]
        if not batch.schema.equals(sch):
            batch = batch.cast(sch)
        return [batch]

    def _add(self, table: str, sch: pa.Schema, batch: pa.RecordBatch, lo: int, hi: int) -> None:
        nb = _buffer_bytes(batch)
        with self._lock:
            tr = self._tables.get(table)
            if tr is None:
                tr = self._tables[table] = _TableRing(sch)
            last = tr.chunks[-1] if tr.chunks else None
            # Late batches (spans stamped at their start, kernel buckets) join the open chunk as
            # long as the chunk still spans at most chunk_ns.
            if (last is not None and not last.closed
                    and max(hi, last.max_ts) - min(lo, last.min_ts) <= self.chunk_ns
                    and last.rows + batch.num_rows <= MAX_CHUNK_ROWS
                    and last.nbytes + nb <= self.chunk_bytes):
                last.batches.append(batch)
                last.rows += batch.num_rows
                last.nbytes += nb
                last.min_ts = min(last.min_ts, lo)
                last.max_ts = max(last.max_ts, hi)
                if len(last.batches) >= MAX_OPEN_BATCHES:
                    self._compact(tr, last)
            else:
                if last is not None and not last.closed:
                    self._compact(tr, last)
                    last.closed = True
                tr.chunks.append(_Chunk(lo, hi, [batch], batch.num_rows, nb, first_seq=tr.rows_in))
            tr.rows += batch.num_rows
            tr.rows_in += batch.num_rows
            tr.nbytes += nb
            tr.generation += 1
            self._bytes += nb
            if hi <= time.monotonic_ns() + FUTURE_SLACK_NS and (self._newest_ns is None or hi > self._newest_ns):
                self._newest_ns = hi
            self._evict()

    def _compact(self, tr: _TableRing, chunk: _Chunk) -> None:
        """Concatenate a chunk's batches into one (fewer objects; exact buffer accounting)."""
        if len(chunk.batches) <= 1:
            return
        merged = pa.Table.from_batches(chunk.batches, schema=tr.schema).combine_chunks()
        batches = merged.to_batches()
        nb = sum(_buffer_bytes(b) for b in batches)
        tr.nbytes += nb - chunk.nbytes
        self._bytes += nb - chunk.nbytes
        chunk.batches, chunk.nbytes = batches, nb

    def _evict(self) -> None:
        """Age out, then enforce the byte limit (oldest chunk across tables first). Lock held."""
        if self._newest_ns is not None:
            cutoff = self._newest_ns - self.duration_ns
            for tr in self._tables.values():
                while tr.chunks and tr.chunks[0].max_ts < cutoff:
                    self._drop_first(tr, aged=True)
        while self._bytes > self.max_bytes:
            oldest: _TableRing | None = None
            for tr in self._tables.values():
                if tr.chunks and (oldest is None or tr.chunks[0].max_ts < oldest.chunks[0].max_ts):
                    oldest = tr
            if oldest is None:
                break
            self._drop_first(oldest, aged=False)

    def _drop_first(self, tr: _TableRing, aged: bool) -> None:
        c = tr.chunks.popleft()
        tr.rows -= c.rows
        tr.nbytes -= c.nbytes
        self._bytes -= c.nbytes
        tr.generation += 1
        if aged:
            tr.evicted_rows += c.rows
            tr.evicted_bytes += c.nbytes
        else:
            tr.dropped_rows += c.rows
            tr.dropped_bytes += c.nbytes

    # Reading -----------------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        """Everything the ring holds of ``name`` (an empty table of the schema when nothing)."""
        sch = schema.schema_for(name)
        with self._lock:
            tr = self._tables.get(name)
            batches = [b for c in tr.chunks for b in c.batches] if tr else []
        return pa.Table.from_batches(batches, schema=sch) if batches else sch.empty_table()

    def snapshot(self, since_ns: int | None = None, until_ns: int | None = None) -> dict[str, pa.Table]:
        """Every table the ring has seen, rows with ``since_ns <= ts_ns <= until_ns`` (bounds
        optional), taken at one instant under the lock (a consistent cut across tables)."""
        with self._lock:
            held = {name: (tr.schema, [b for c in tr.chunks if (since_ns is None or c.max_ts >= since_ns)
                                       and (until_ns is None or c.min_ts <= until_ns) for b in c.batches])
                    for name, tr in self._tables.items()}
        out: dict[str, pa.Table] = {}
        for name, (sch, batches) in sorted(held.items()):
            t = pa.Table.from_batches(batches, schema=sch) if batches else sch.empty_table()
            if t.num_rows and (since_ns is not None or until_ns is not None):
                ts = t.column("ts_ns")
                mask = None
                if since_ns is not None:
                    mask = pc.greater_equal(ts, since_ns)
                if until_ns is not None:
                    m2 = pc.less_equal(ts, until_ns)
                    mask = m2 if mask is None else pc.and_(mask, m2)
                t = t.filter(mask)
            out[name] = t
        return out

    def capture(self) -> tuple[dict[str, pa.Table], dict[str, int]]:
        """Everything held now and the cursor of that instant, atomically: ``since(cursor)`` later
        returns exactly the rows that are not in the capture (zero-copy: the tables reference the
        ring's batches, which stay alive while the capture is held even if the ring evicts them)."""
        with self._lock:
            held = {name: (tr.schema, [b for c in tr.chunks for b in c.batches]) for name, tr in self._tables.items()}
            cur = {name: tr.rows_in for name, tr in self._tables.items()}
        tables = {name: (pa.Table.from_batches(b, schema=sch) if b else sch.empty_table())
                  for name, (sch, b) in sorted(held.items())}
        return tables, cur

    def cursor(self) -> dict[str, int]:
        """Rows received so far per table: pass it to ``since`` later to get only what came after."""
        with self._lock:
            return {name: tr.rows_in for name, tr in self._tables.items()}

    def since(self, cursor: dict[str, int] | None, tables: list[str] | tuple[str, ...] | None = None,
              ) -> tuple[dict[str, pa.Table], dict[str, int]]:
        """Rows that arrived after ``cursor`` (from ``cursor()`` or a previous ``since``), in arrival
        order, and the new cursor -- exact whatever the rows' timestamps (late kernel buckets,
        spans stamped at their start). Rows already evicted are not returned. ``tables`` limits the
        tables looked at (the returned cursor then covers only those)."""
        cursor = cursor or {}
        with self._lock:
            names = [n for n in (tables if tables is not None else list(self._tables)) if n in self._tables]
            held: dict[str, tuple[pa.Schema, list[pa.RecordBatch]]] = {}
            new_cursor: dict[str, int] = {}
            for name in names:
                tr = self._tables[name]
                c = cursor.get(name, 0)
                new_cursor[name] = tr.rows_in
                out: list[pa.RecordBatch] = []
                if tr.rows_in > c:
                    for ch in tr.chunks:
                        if ch.first_seq + ch.rows <= c:
                            continue
                        seq = ch.first_seq
                        for b in ch.batches:
                            n = b.num_rows
                            if seq + n > c:
                                out.append(b.slice(max(0, c - seq)))
                            seq += n
                held[name] = (tr.schema, out)
        result = {name: (pa.Table.from_batches(b, schema=sch) if b else sch.empty_table())
                  for name, (sch, b) in held.items()}
        return result, new_cursor

    def has(self, name: str) -> bool:
        """The table received rows at some point (even if they have aged out since)."""
        with self._lock:
            return name in self._tables

    def table_names(self) -> list[str]:
        with self._lock:
            return sorted(self._tables)

    def generation(self, name: str) -> int:
        """Changes whenever the table's content changes; 0 for a table never seen."""
        with self._lock:
            tr = self._tables.get(name)
            return tr.generation if tr else 0

    def rows_in(self, name: str) -> int:
        """Rows ever received for ``name`` (monotonic: a reader's 'anything new since?' cursor)."""
        with self._lock:
            tr = self._tables.get(name)
            return tr.rows_in if tr else 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def newest_ns(self) -> int | None:
        with self._lock:
            return self._newest_ns

    def oldest_ns(self) -> int | None:
        """The oldest timestamp the ring still holds (any table)."""
        with self._lock:
            mins = [c.min_ts for tr in self._tables.values() for c in tr.chunks]
            return min(mins) if mins else None

    def stats(self) -> dict[str, Any]:
        """Sizes and eviction counts, per table and in total (for the manifest and the logs)."""
        with self._lock:
            tables = {
                name: {
                    "rows": tr.rows, "bytes": tr.nbytes, "chunks": len(tr.chunks), "rows_in": tr.rows_in,
                    "evicted_rows": tr.evicted_rows, "evicted_bytes": tr.evicted_bytes,
                    "dropped_rows": tr.dropped_rows, "dropped_bytes": tr.dropped_bytes,
                }
                for name, tr in sorted(self._tables.items())
            }
            oldest = self.oldest_ns()
            newest = self._newest_ns
            return {
                "duration_ns": self.duration_ns,
                "max_bytes": self.max_bytes,
                "bytes": self._bytes,
                "rows": sum(t["rows"] for t in tables.values()),
                "oldest_ns": oldest,
                "newest_ns": newest,
                "covered_ns": (newest - oldest) if oldest is not None and newest is not None else 0,
                "evicted_rows": sum(t["evicted_rows"] for t in tables.values()),
                "evicted_bytes": sum(t["evicted_bytes"] for t in tables.values()),
                "dropped_rows": sum(t["dropped_rows"] for t in tables.values()),
                "dropped_bytes": sum(t["dropped_bytes"] for t in tables.values()),
                "tables": tables,
            }

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._bytes = 0
            self._newest_ns = None
