"""The requests of a recording, each counted once: the one derivation ``analyze`` and ``diff`` share.

A request can be seen twice: the server's span API reports it and its latency log (ingested at record
time or given with ``--latency``) has it too. ``dedupe_spans`` keeps the span API's copy.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.timeline import col


def latency_table(rec: Recording, rows: list[dict[str, Any]], wall_clock: bool = False) -> pa.Table:
    """Spans-table rows as a table; ``wall_clock``: their times are UNIX ns, moved onto the recording's
    monotonic clock (``probes.latency_log.to_spans`` already does that for a parsed log)."""
    t = pa.Table.from_pylist(rows, schema=schema.schema_for("spans"))
    if wall_clock and t.num_rows:
        off = rec.wall_offset_ns
        t = t.set_column(t.schema.get_field_index("ts_ns"), schema.schema_for("spans").field("ts_ns"),
                         pc.subtract(t.column("ts_ns"), off))
        t = t.set_column(t.schema.get_field_index("end_ns"), schema.schema_for("spans").field("end_ns"),
                         pc.subtract(t.column("end_ns"), off))
    return t


def request_spans(rec: Recording, latency_rows: list[dict[str, Any]] | None = None) -> tuple[pa.Table, list[str]]:
    """The recording's requests, each once: its ``spans`` table (the span API and a latency log the
    recorder ingested) plus ``latency_rows``, de-duplicated; and the sources that gave any."""
    parts, sources = [], []
    t = rec.table("spans")
    if t.num_rows:
        parts.append(t)
        sources.append("spans")
    if latency_rows:
        lt = latency_table(rec, latency_rows)
        # Keep what overlaps the recording: a log usually covers more than the traced minutes.
        lt = lt.filter(pc.and_(pc.greater_equal(lt.column("end_ns"), rec.start_ns),
                               pc.less_equal(lt.column("ts_ns"), rec.end_ns)))
        if lt.num_rows:
            parts.append(lt)
            sources.append("latency_log")
    if not parts:
        return schema.empty_table("spans"), sources
    return dedupe_spans(pa.concat_tables(parts)), sources


_RECORDED: dict[int, pa.Table] = {}  # by id(recording), dropped when the recording is


def recorded_requests(rec: Recording) -> pa.Table:
    """The requests the recording itself holds (span API and ingested latency log), each once: what
    every view that counts or draws requests reads instead of the raw ``spans`` table. Kept per
    recording, so the views of one report share one de-duplication."""
    t = _RECORDED.get(id(rec))
    if t is None:
        t = _RECORDED[id(rec)] = request_spans(rec)[0]
        weakref.finalize(rec, _RECORDED.pop, id(rec), None)
    return t


def dedupe_spans(t: pa.Table, tol_ns: int = 50_000_000) -> pa.Table:
    """Drop a request seen twice (the server's span API *and* its latency log): a non-``api`` span
    whose start and end are within ``tol_ns`` of an ``api`` span's is the same request."""
    src = pc.fill_null(t.column("source"), "").to_numpy(zero_copy_only=False).astype(str)
    api = src == "api"
    if not api.any() or api.all():
        return t
    s = col(t, "ts_ns", np.int64)
    e = col(t, "end_ns", np.int64)
    order = np.argsort(s[api])
    a_s, a_e = s[api][order], e[api][order]
    other = np.flatnonzero(~api)
    j = np.searchsorted(a_s, s[other])
    dup = np.zeros(len(other), dtype=bool)
    for off in (-1, 0):  # the nearest api start is just before or just after
        k = np.clip(j + off, 0, len(a_s) - 1)
        dup |= (np.abs(a_s[k] - s[other]) <= tol_ns) & (np.abs(a_e[k] - e[other]) <= tol_ns)
    keep = np.ones(t.num_rows, dtype=bool)
    keep[other[dup]] = False
    return t if keep.all() else t.filter(pa.array(keep))
