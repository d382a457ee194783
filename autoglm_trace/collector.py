"""What a data source looks like to the recorder.

A collector (psutil sampler, bcc probes, NVML, span receiver, scraper ...) knows nothing of files: it
emits rows of the tables it owns through ``SessionContext.emit*`` and the recorder writes them. Each
collector is optional: ``start()`` raises ``CollectorUnavailable`` with a reason a user can act on,
the recorder stores that reason in the manifest (``collectors.<name>``), shows it once, and carries
on with the rest.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


class CollectorUnavailable(Exception):
    """This collector cannot run here; the message says why and what would fix it."""


@dataclass
class SessionContext:
    """What the recorder hands every collector."""

    emit_rows: Callable[[str, list[Mapping[str, Any]]], None]
    emit_columns_fn: Callable[[str, Mapping[str, Any]], None]
    emit_batch_fn: Callable[[str, pa.RecordBatch | pa.Table], None]
    target: Any  # autoglm_trace.target.TargetTree
    interval_ns: int = 100_000_000
    is_root: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    # Messages for the user and the manifest ("GPU0 does not support power readings", ...).
    notes: list[str] = field(default_factory=list)
    _notes_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def emit(self, table: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self.emit_rows(table, rows)

    def emit_columns(self, table: str, columns: Mapping[str, Any]) -> None:
        self.emit_columns_fn(table, columns)

    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        self.emit_batch_fn(table, batch)

    def note(self, message: str) -> None:
        with self._notes_lock:
            if message not in self.notes:
                self.notes.append(message)


class Collector(ABC):
    """Base class. Subclasses set ``name`` and ``tables`` and implement ``start``/``sample``."""

    name: str = "collector"
    tables: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.ctx: SessionContext | None = None

    @abstractmethod
    def start(self, ctx: SessionContext) -> None:
        """Attach / open; raise CollectorUnavailable(reason) when this cannot run here."""

    def sample(self, now_ns: int) -> None:  # noqa: B027 - optional hook
        """Called by the recorder every interval (on its sampling thread)."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Detach and emit what is still aggregated; called once, after the last sample."""

    def status(self) -> dict[str, Any]:
        """Live numbers for the status line (e.g. {"events": n, "lost": m})."""
        return {}

    def target_env(self) -> dict[str, str]:
        """Environment variables a spawned target (``record -- CMD``) should get, e.g. the span
        socket's path. Called after ``start()`` and before the target execs."""
        return {}

    def info(self) -> dict[str, Any]:
        """Static facts for the manifest (e.g. GPU names, attached tracepoints)."""
        return {}
