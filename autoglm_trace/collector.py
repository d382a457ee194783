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


# The registry's contract ----------------------------------------------------------------------
# Every collector is declared once (probes/collectors/<name>.py): its name, the tables it owns, its
# command-line options and how it starts. The session, the record / top parsers and the manifest
# loop over these declarations; nothing else names a collector.


@dataclass(frozen=True)
class Option:
    """One command-line option of a collector, shown by ``record`` and ``top``. Its value lands in
    ``RecordOptions.collector_options[dest]`` (typed by ``type``: autoglm_trace/options.py), which
    every collector also sees as ``ctx.options``. ``dest`` names are unique across collectors."""

    flags: tuple[str, ...]
    dest: str
    help: str = ""
    type: Callable[[str], Any] | None = None
    default: Any = None
    action: str | None = None  # "store_true", "store_false", "append"
    metavar: str | None = None
    hidden: bool = False  # accepted, not shown in --help
    in_manifest: bool = True  # recorded under the manifest's "options" (False for request bodies)

    def argparse_kwargs(self) -> dict[str, Any]:
        import argparse

        kw: dict[str, Any] = {"dest": self.dest, "help": argparse.SUPPRESS if self.hidden else self.help}
        if self.action:
            kw["action"] = self.action
        if self.type is not None:
            kw["type"] = self.type
        if self.metavar is not None:
            kw["metavar"] = self.metavar
        kw["default"] = list(self.default) if isinstance(self.default, (list, tuple)) else self.default
        return kw


@dataclass(frozen=True)
class Setup:
    """What a declaration knows when the session plans its collectors."""

    is_root: bool
    interval_ms: int
    # Every collector's option values (defaults filled in) plus the session's shared ones
    # (interval_ms, target_uid / target_gid when the target runs as the sudo user).
    options: Mapping[str, Any]
    flight: bool = False  # an always-on flight recorder (record --ring), not a one-off recording
    host_mode: bool = False  # no target filter: the whole host


# One planned instance: its manifest name and a factory, or the reason it does not run.
Planned = tuple[str, "Callable[[], Collector] | str"]


@dataclass(frozen=True)
class CollectorSpec:
    """A collector's declaration. ``plan`` returns the instances to start -- none when the collector
    was not asked for (``off_reason`` then says how to ask), one reason string when it cannot run."""

    name: str
    tables: tuple[str, ...]
    plan: Callable[[Setup], list[Planned]]
    options: tuple[Option, ...] = ()
    title: str = ""  # the --help group heading
    off_reason: str = "not requested"
    order: int = 100  # start order (the /proc sampler first: the others key on its identities)
