"""The one way into a recording: every reporter, the analysis and the live view read through here.

``Recording(path)`` validates the directory (a manifest of ours, a schema version this code reads)
and loads tables on demand. A table file cut short by a killed recorder is read up to its last whole
batch and reported in ``truncated``; a table that is absent (the probe did not run) reads as an empty
table of the right schema, and ``has(name)`` says whether it was recorded at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.errors import NewerSchemaError, RecordingError


@dataclass
class TableRead:
    table: pa.Table
    truncated: bool = False
    error: str | None = None


def read_stream_file(path: Path, expected: pa.Schema | None = None) -> TableRead:
    """Read an Arrow IPC stream, keeping every whole batch before a damaged tail."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordingError(f"cannot read {path}: {e.strerror}") from None
    if not data:
        # Created but the recorder died before the schema message hit the disk.
        return TableRead(expected.empty_table() if expected is not None else pa.table({}), True, "empty file")
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise RecordingError(f"{path.name} is not an Arrow IPC stream ({_short(e)})") from None
    version = schema.schema_version_of(reader.schema)
    if version is not None and version > schema.SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path.name} uses recording schema v{version}; this autoglm-trace reads up to "
            f"v{schema.SCHEMA_VERSION} -- upgrade autoglm-trace"
        )
    batches: list[pa.RecordBatch] = []
    truncated, error = False, None
    while True:
        try:
            batch = reader.read_next_batch()
            # Full validation: a damaged batch can parse (offsets past its buffers) and would then
            # crash the analysis instead of raising; treat it as the damaged tail.
            batch.validate(full=True)
            batches.append(batch)
        except StopIteration:
            break
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as e:
            truncated, error = True, _short(e)
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if expected is not None:
        try:
            table = _conform(table, expected)
        except (pa.ArrowException, ValueError) as e:  # a damaged schema: names not UTF-8, uncastable types
            raise RecordingError(f"{path.name} does not match its table's schema ({_short(e)})") from None
    return TableRead(table, truncated, error)


def _conform(table: pa.Table, expected: pa.Schema) -> pa.Table:
    """Give an older/narrower table the columns this version expects (missing ones as nulls)."""
    if table.schema.equals(expected, check_metadata=False):
        return table
    cols = []
    for f in expected:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=expected)


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


@dataclass
class Recording:
    path: Path
    manifest: dict[str, Any] = field(init=False)
    truncated: dict[str, str] = field(init=False, default_factory=dict)
    _cache: dict[str, pa.Table] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        p = self.path
        if not p.exists():
            raise RecordingError(f"{p}: no such recording")
        if not p.is_dir():
            raise RecordingError(f"{p} is not a recording directory")
        mpath = p / schema.MANIFEST_NAME
        if not mpath.exists():
            if not any(p.iterdir()):
                raise RecordingError(f"{p} is empty, not a recording")
            raise RecordingError(f"{p} is not an autoglm-trace recording (no {schema.MANIFEST_NAME})")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise RecordingError(f"{mpath} is unreadable ({_short(e)})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != schema.FORMAT_NAME:
            raise RecordingError(f"{p} is not an autoglm-trace recording (manifest format mismatch)")
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise RecordingError(f"{mpath} has no valid schema_version")
        if version > schema.SCHEMA_VERSION:
            raise NewerSchemaError(
                f"{p} was written with recording schema v{version}; this autoglm-trace reads up to "
                f"v{schema.SCHEMA_VERSION} -- upgrade autoglm-trace"
            )
        self.manifest = manifest

    # Tables ------------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.path / f"{name}{schema.TABLE_SUFFIX}"

    def has(self, name: str) -> bool:
        return self.table_path(name).exists()

    @cached_property
    def table_names(self) -> list[str]:
        return sorted(q.name[: -len(schema.TABLE_SUFFIX)] for q in self.path.glob(f"*{schema.TABLE_SUFFIX}"))

    def table(self, name: str) -> pa.Table:
        """The whole table (empty with the right schema when it was not recorded)."""
        if name in self._cache:
            return self._cache[name]
        expected = schema.TABLES.get(name)
        path = self.table_path(name)
        if not path.exists():
            if expected is None:
                raise RecordingError(f"{self.path} has no table {name!r}")
            t = expected.empty_table()
        else:
            read = read_stream_file(path, expected)
            if read.truncated:
                self.truncated[name] = read.error or "truncated"
            t = read.table
        self._cache[name] = t
        return t

    def rows(self) -> dict[str, int]:
        return {name: self.table(name).num_rows for name in self.table_names}

    # Manifest conveniences ---------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and not self.truncated

    @property
    def wall_offset_ns(self) -> int:
        return int(self.manifest.get("clock", {}).get("monotonic_to_wall_ns", 0))

    def to_wall_ns(self, ts_ns: int) -> int:
        return ts_ns + self.wall_offset_ns

    @property
    def start_ns(self) -> int:
        return int(self.manifest.get("start_ns") or 0)

    @property
    def end_ns(self) -> int:
        end = self.manifest.get("end_ns")
        if end:
            return int(end)
        # A killed recorder never wrote its end: the last timestamp seen stands in for it.
        last = self.start_ns
        for name in self.table_names:
            t = self.table(name)
            if t.num_rows and "ts_ns" in t.column_names:
                import pyarrow.compute as pc

                last = max(last, int(pc.max(t.column("ts_ns")).as_py()))
        return last

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.manifest.get("target") or {})

    @property
    def collectors(self) -> dict[str, Any]:
        return dict(self.manifest.get("collectors") or {})


def open_recording(path: str | Path) -> Recording:
    return Recording(Path(path))
