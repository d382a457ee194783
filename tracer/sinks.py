"""Where emitted rows go: the recording writer, and any number of other sinks beside it.

Collectors emit through ``FanOut``, which turns rows into one Arrow record batch (schema from
tracer/schema.py) and hands that same batch to every sink: the file writer, the flight recorder's
in-memory ring, the Prometheus exporter, the live view. A sink that fails is detached with a note;
only the file writer's failure stops a recording.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pyarrow as pa

from autoglm_trace.tracer import schema


class Sink(Protocol):
    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def rows_to_batch(table: str, rows: list[Mapping[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema.schema_for(table))


def columns_to_batch(table: str, columns: Mapping[str, Any]) -> pa.RecordBatch:
    sch = schema.schema_for(table)
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type) for f in sch]
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


class FanOut:
    def __init__(self, primary: Sink | None, others: list[Sink] | None = None,
                 on_sink_error: Callable[[Sink, Exception], None] | None = None) -> None:
        self.primary = primary
        self.others = list(others or [])
        self.on_sink_error = on_sink_error
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        with self._lock:
            self.others.append(sink)

    def remove(self, sink: Sink) -> None:
        with self._lock:
            if sink in self.others:
                self.others.remove(sink)

    def emit(self, table: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self.emit_batch(table, rows_to_batch(table, rows))

    def emit_columns(self, table: str, columns: Mapping[str, Any]) -> None:
        if columns:
            self.emit_batch(table, columns_to_batch(table, columns))

    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self.primary is not None:
            self.primary.emit_batch(table, batch)
        with self._lock:
            others = list(self.others)
        for s in others:
            try:
                s.emit_batch(table, batch)
            except Exception as e:  # noqa: BLE001 - a side sink never stops the recording
                self.remove(s)
                if self.on_sink_error:
                    self.on_sink_error(s, e)

    def flush(self) -> None:
        if self.primary is not None:
            self.primary.flush()
        for s in list(self.others):
            try:
                s.flush()
            except Exception as e:  # noqa: BLE001
                self.remove(s)
                if self.on_sink_error:
                    self.on_sink_error(s, e)

    def close(self) -> None:
        for s in list(self.others):
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass
