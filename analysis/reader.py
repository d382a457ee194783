"""The one way into a recording: every reporter, the analysis and the live view read through here.

``Recording(path)`` validates the directory (a manifest of ours, a schema version this code reads)
and loads tables on demand. A table file cut short by a killed recorder is read up to its last whole
batch and reported in ``truncated``; a table that is absent (the probe did not run) reads as an empty
table of the right schema, and ``has(name)`` says whether it was recorded at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema, span_client
from autoglm_trace.analysis import manifest_check
from autoglm_trace.errors import NewerSchemaError, RecordingError
from autoglm_trace.safefile import read_regular


@dataclass
class TableRead:
    table: pa.Table
    truncated: bool = False
    error: str | None = None


MAX_TABLE_BYTES = 8 << 30  # a table file larger than this is refused, not read into memory
MAX_MANIFEST_BYTES = 16 << 20
SPAN_LONGEST_NS = 7 * 86400 * 1_000_000_000


def read_stream_file(path: Path, expected: pa.Schema | None = None, dir_fd: int | None = None,
                     table: str | None = None) -> TableRead:
    """Read an Arrow IPC stream, keeping every whole batch before a damaged tail.

    Regular files only, never through a link (``safefile``), at most ``MAX_TABLE_BYTES``. The file's
    own metadata must name ``table`` when it names one (two files swapped are refused, not read as
    each other). Messages name the file, never its bytes (a length Arrow quotes would be the first
    bytes of a file the reader may read and the recording's owner may not)."""
    name = path.name
    try:
        data = read_regular(name if dir_fd is not None else path, MAX_TABLE_BYTES, dir_fd=dir_fd)
    except OSError as e:
        raise RecordingError(f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        # Created but the recorder died before the schema message hit the disk.
        return TableRead(expected.empty_table() if expected is not None else pa.table({}), True, "empty file")
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError):
        raise RecordingError(f"{path} is not an Arrow IPC stream") from None
    version = schema.schema_version_of(reader.schema)
    if version is not None and version > schema.SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path.name} uses recording schema v{version}; this autoglm-trace reads up to "
            f"v{schema.SCHEMA_VERSION} -- upgrade autoglm-trace"
        )
    if version is not None and version < 1:
        raise RecordingError(f"{path} has an invalid schema version in its metadata")
    if table is not None:
        named = (reader.schema.metadata or {}).get(b"autoglm_trace.table")
        if named is not None and named != table.encode():
            raise RecordingError(f"{path} holds another table (its metadata names a different one); "
                                 "refusing a renamed or swapped table file")
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
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError):
            truncated, error = True, f"damaged after {len(batches)} whole batch(es)"
            break
    try:
        table_read = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowException, ValueError):
        raise RecordingError(f"{path} has batches that do not match its own schema") from None
    if expected is not None:
        try:
            table_read = _conform(table_read, expected)
        except (pa.ArrowException, ValueError, TypeError):  # names not UTF-8, uncastable types
            raise RecordingError(f"{path.name} does not match its table's schema") from None
    return TableRead(table_read, truncated, error)


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


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


@dataclass
class Recording:
    """A recording opened for reading. The directory is opened once (``dir_fd``) and every file in it
    is opened relative to that fd without following links: what is read is what was there when the
    recording was opened, even if the directory is renamed or replaced meanwhile."""

    path: Path
    manifest: dict[str, Any] = field(init=False)
    truncated: dict[str, str] = field(init=False, default_factory=dict)
    implausible: dict[str, int] = field(init=False, default_factory=dict)
    _cache: dict[str, pa.Table] = field(init=False, default_factory=dict, repr=False)
    _dir_fd: int | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        p = self.path
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RecordingError(f"{p}: no such recording") from None
        except NotADirectoryError:
            raise RecordingError(f"{p} is not a recording directory") from None
        except OSError as e:
            raise RecordingError(f"cannot open {p}: {e.strerror or e}") from None
        self._dir_fd = fd
        try:
            self.manifest = self._read_manifest()
        except BaseException:
            self.close()
            raise

    def _read_manifest(self) -> dict[str, Any]:
        p, mpath = self.path, self.path / schema.MANIFEST_NAME
        try:
            raw = read_regular(schema.MANIFEST_NAME, MAX_MANIFEST_BYTES, dir_fd=self._dir_fd)
        except FileNotFoundError:
            try:
                empty = not os.listdir(self._fd)
            except OSError as e:
                raise RecordingError(f"cannot list {p}: {e.strerror or e}") from None
            if empty:
                raise RecordingError(f"{p} is empty, not a recording") from None
            raise RecordingError(f"{p} is not an autoglm-trace recording (no {schema.MANIFEST_NAME})") from None
        except OSError as e:
            raise RecordingError(f"cannot read {mpath}: {e.strerror or e}") from None
        try:
            manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RecordingError(f"{mpath} is unreadable (not valid JSON)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != schema.FORMAT_NAME:
            raise RecordingError(f"{p} is not an autoglm-trace recording (manifest format mismatch)")
        version = manifest.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > schema.SCHEMA_VERSION:
            raise NewerSchemaError(
                f"{p} was written with recording schema v{version}; this autoglm-trace reads up to "
                f"v{schema.SCHEMA_VERSION} -- upgrade autoglm-trace"
            )
        try:
            return manifest_check.validate(manifest)
        except manifest_check.ManifestInvalid as e:
            raise RecordingError(f"{mpath}: {str(e)[:300]}") from None

    @property
    def _fd(self) -> int:
        if self._dir_fd is None:
            raise RecordingError(f"{self.path} was closed")
        return self._dir_fd

    def close(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Tables ------------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.path / f"{name}{schema.TABLE_SUFFIX}"

    def has(self, name: str) -> bool:
        try:
            os.stat(f"{name}{schema.TABLE_SUFFIX}", dir_fd=self._fd, follow_symlinks=False)
        except (OSError, ValueError):
            return False
        return True

    @cached_property
    def table_names(self) -> list[str]:
        try:
            entries = os.listdir(self._fd)
        except OSError as e:
            raise RecordingError(f"cannot list {self.path}: {e.strerror or e}") from None
        return sorted(n[: -len(schema.TABLE_SUFFIX)] for n in entries
                      if n.endswith(schema.TABLE_SUFFIX) and not n.startswith("."))

    def table(self, name: str) -> pa.Table:
        """The whole table (empty with the right schema when it was not recorded)."""
        if name in self._cache:
            return self._cache[name]
        expected = schema.TABLES.get(name)
        if not self.has(name):
            if expected is None:
                raise RecordingError(f"{self.path} has no table {name!r}")
            t = expected.empty_table()
        else:
            read = read_stream_file(self.table_path(name), expected, dir_fd=self._fd, table=name)
            if read.truncated:
                self.truncated[name] = read.error or "truncated"
            t = self._plausible(name, read.table)
        self._cache[name] = t
        return t

    def _plausible(self, name: str, t: pa.Table) -> pa.Table:
        """Rows no recorder writes -- a negative monotonic time, a span ending before it starts or
        starting long before the recording -- are left out (counted in ``implausible``), so a
        hand-made or damaged table cannot push the analysis outside the int64 range."""
        if not t.num_rows or "ts_ns" not in t.column_names or not pa.types.is_integer(t.schema.field("ts_ns").type):
            return t
        import pyarrow.compute as pc

        ts = t.column("ts_ns")
        keep = pc.fill_null(pc.greater_equal(ts, 0), True)
        if name == "spans" and "end_ns" in t.column_names:
            end = t.column("end_ns")
            earliest = max(self.start_ns - span_client.MAX_EARLY_NS, 0)
            keep = pc.and_(keep, pc.fill_null(pc.and_(pc.greater_equal(ts, earliest), pc.greater_equal(end, ts)), False))
            keep = pc.and_(keep, pc.fill_null(pc.less_equal(pc.subtract(end, ts), SPAN_LONGEST_NS), False))
        dropped = t.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
        if dropped:
            self.implausible[name] = dropped
            t = t.filter(keep)
        return t

    def rows(self) -> dict[str, int]:
        return {name: self.table(name).num_rows for name in self.table_names}

    # Manifest conveniences ---------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and not self.truncated

    @property
    def wall_offset_ns(self) -> int:
        return int((self.manifest.get("clock") or {}).get("monotonic_to_wall_ns") or 0)

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
            if name not in schema.TABLES:
                continue  # a file of no table we know: not ours to interpret
            t = self.table(name)
            if t.num_rows and "ts_ns" in t.column_names:
                import pyarrow.compute as pc

                top = pc.max(t.column("ts_ns")).as_py()
                if top is not None:
                    last = max(last, int(top))
        return last

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.manifest.get("target") or {})

    @property
    def collectors(self) -> dict[str, Any]:
        return dict(self.manifest.get("collectors") or {})


def open_recording(path: str | Path) -> Recording:
    return Recording(Path(path))
