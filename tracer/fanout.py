"""The recorder's fan-out: one Arrow batch per emit, handed to the file writer and every other sink.

Collectors emit through ``FanOut``, which turns rows into one record batch (autoglm_trace/sinks.py) and
hands that same batch to every sink. A sink that fails is detached with a note; only the file writer's
failure stops a recording.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from autoglm_trace.sinks import Sink, columns_to_batch, rows_to_batch


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
