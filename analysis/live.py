"""A recording that is still being made: the ring's content read like ``Recording``.

``LiveRecording(ring, manifest)`` offers the read interface of ``analysis.reader.Recording``
(``table``, ``scan``, ``count``, ``has``, ``table_names``, ``rows``, ``manifest``, ``start_ns``, ``end_ns``, ``target``,
``collectors``, ``wall_offset_ns``, ``to_wall_ns``, ``truncated``, ``complete``, ``path``) over a
``TableSource`` (autoglm_trace/sinks.py; the recorder's ring is one), so the analysis functions, the
live view and the exporter run unchanged on live data.

``table(name)`` returns what the ring holds now; the result is cached until the ring's content of that
table changes, so several analysis passes in one tick see the same rows without re-concatenating.
For a cut that stays fixed across tables (an analysis pass that must not see tables at different
instants), take ``freeze()``: a LiveRecording over one snapshot of the ring.

``start_ns`` / ``end_ns`` are the window the ring holds now (oldest and newest data), not the
recorder's start: a flight recorder has run for days, the ring holds the last minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.errors import RecordingError
from autoglm_trace.sinks import TableSource


class LiveRecording:
    def __init__(self, ring: TableSource, manifest: dict[str, Any],
                 path: str | Path = "<live>", _frozen: dict[str, pa.Table] | None = None) -> None:
        self.ring = ring
        self.manifest = manifest  # the recorder's live manifest (the same dict; it updates)
        self.path = Path(path)
        self.truncated: dict[str, str] = {}
        self._frozen = _frozen
        self._cache: dict[str, tuple[int, pa.Table]] = {}

    # Tables ------------------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        expected = schema.TABLES.get(name)
        if expected is None:
            raise RecordingError(f"{self.path} has no table {name!r}")
        if self._frozen is not None:
            return self._frozen.get(name, expected.empty_table())
        gen = self.ring.generation(name)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == gen:
            return hit[1]
        t = self.ring.table(name)
        self._cache[name] = (gen, t)
        return t

    def has(self, name: str) -> bool:
        if self._frozen is not None:
            return name in self._frozen
        return self.ring.has(name)

    @property
    def table_names(self) -> list[str]:
        if self._frozen is not None:
            return sorted(self._frozen)
        return self.ring.table_names()

    def scan(self, name: str, columns: list[str]) -> pa.Table:
        """As ``Recording.scan``: the ring is in memory already, so a selection of ``table``."""
        return self.table(name).select(columns)

    def count(self, name: str) -> int:
        return self.table(name).num_rows

    def rows(self) -> dict[str, int]:
        return {name: self.count(name) for name in self.table_names}

    def freeze(self) -> LiveRecording:
        """A LiveRecording over one consistent snapshot of the ring (tables fixed from now on)."""
        snap = self.ring.snapshot()
        return LiveRecording(self.ring, dict(self.manifest), self.path, _frozen=snap)

    # Manifest conveniences (as Recording) ------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def wall_offset_ns(self) -> int:
        return int(self.manifest.get("clock", {}).get("monotonic_to_wall_ns", 0))

    def to_wall_ns(self, ts_ns: int) -> int:
        return ts_ns + self.wall_offset_ns

    def _bounds(self) -> tuple[int | None, int | None]:
        if self._frozen is None:
            return self.ring.oldest_ns(), self.ring.newest_ns()
        lo = hi = None
        import pyarrow.compute as pc

        for t in self._frozen.values():
            if t.num_rows:
                mm = pc.min_max(t.column("ts_ns"))
                a, b = mm["min"].as_py(), mm["max"].as_py()
                lo = a if lo is None else min(lo, a)
                hi = b if hi is None else max(hi, b)
        return lo, hi

    @property
    def start_ns(self) -> int:
        """The oldest data the ring holds (never before the recorder started)."""
        lo, _ = self._bounds()
        started = int(self.manifest.get("start_ns") or 0)
        return max(lo, started) if lo is not None else started

    @property
    def end_ns(self) -> int:
        """The recorder's end once it has ended, else the newest data the ring holds."""
        end = self.manifest.get("end_ns")
        if end:
            return int(end)
        _, hi = self._bounds()
        return max(hi or 0, self.start_ns)

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.manifest.get("target") or {})

    @property
    def collectors(self) -> dict[str, Any]:
        return dict(self.manifest.get("collectors") or {})
