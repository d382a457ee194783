"""The sink contract: where emitted rows go, and what a live table store offers its readers.

A ``Sink`` takes Arrow record batches of the tables in autoglm_trace/schema.py: the file writer, the
flight recorder's in-memory ring, the Prometheus exporter, the live view. The recorder's fan-out
(tracer/fanout.py) hands the same batch to every sink. ``TableSource`` is the read side of an in-memory
store (the ring), which analysis/live.py reads like a recording without knowing the recorder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa

from autoglm_trace import schema


class Sink(Protocol):
    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TableSource(Protocol):
    """What an in-memory table store offers readers (tracer.ring.RingSink is one)."""

    def table(self, name: str) -> pa.Table: ...

    def snapshot(self, since_ns: int | None = None, until_ns: int | None = None) -> dict[str, pa.Table]: ...

    def has(self, name: str) -> bool: ...

    def table_names(self) -> list[str]: ...

    def generation(self, name: str) -> int: ...

    def oldest_ns(self) -> int | None: ...

    def newest_ns(self) -> int | None: ...


def rows_to_batch(table: str, rows: list[Mapping[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema.schema_for(table))


def columns_to_batch(table: str, columns: Mapping[str, Any]) -> pa.RecordBatch:
    sch = schema.schema_for(table)
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type) for f in sch]
    return pa.RecordBatch.from_arrays(arrays, schema=sch)
