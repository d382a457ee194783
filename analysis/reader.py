"""The one way into a recording: every reporter, the analysis and the live view read through here.

``Recording(path)`` validates the directory (a manifest of ours, a schema version this code reads)
and loads tables on demand. A table file cut short by a killed recorder is read up to its last whole
batch and reported in ``truncated``; a table that is absent (the probe did not run) reads as an empty
table of the right schema, and ``has(name)`` says whether it was recorded at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema, span_client
from autoglm_trace.analysis import manifest_check
from autoglm_trace.errors import NewerSchemaError, RecordingError
from autoglm_trace.safefile import FileTooLarge, open_regular, read_regular


@dataclass
class TableRead:
    table: pa.Table
    truncated: bool = False
    error: str | None = None


MAX_TABLE_BYTES = 8 << 30  # a table file larger than this is refused, not read into memory
MAX_MANIFEST_BYTES = 16 << 20
SPAN_LONGEST_NS = 7 * 86400 * 1_000_000_000


class _CappedFile:
    """A read-only file object for Arrow's stream reader that never asks the OS for more than the file
    held when it was opened: a damaged message header can claim a body of any length, and a plain
    file object's ``read(n)`` allocates ``n`` bytes before it reads any."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._left, self._pos = fd, size, 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        chunks: list[bytes] = []
        while want > 0:
            chunk = os.read(self._fd, min(want, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
            self._left -= len(chunk)
            self._pos += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


class StreamRead:
    """One table file's batches, read and validated one at a time (nothing kept here): the single
    parser behind ``read_stream_file`` and ``Recording.scan``.

    Regular files only, never through a link (``safefile``), at most ``MAX_TABLE_BYTES``. The file's
    own metadata must name ``table`` when it names one (two files swapped are refused, not read as
    each other). Messages name the file, never its bytes (a length Arrow quotes would be the first
    bytes of a file the reader may read and the recording's owner may not). Iterating stops at the
    first damaged batch, keeping every whole one before it; ``truncated`` and ``error`` say so."""

    def __init__(self, path: Path, dir_fd: int | None = None, table: str | None = None) -> None:
        self.path, self.truncated, self.error = path, False, None
        self.batches_read = 0
        try:
            fd = open_regular(path.name if dir_fd is not None else path, dir_fd=dir_fd)
        except OSError as e:
            raise RecordingError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            size = os.fstat(fd).st_size
        except OSError as e:
            os.close(fd)
            raise RecordingError(f"cannot read {path}: {e.strerror or e}") from None
        self._file = _CappedFile(fd, size)
        if size > MAX_TABLE_BYTES:
            self._file.close()
            raise RecordingError(f"cannot read {path}: {FileTooLarge(path.name, size, MAX_TABLE_BYTES).strerror}")
        self.empty = size == 0  # created, but the recorder died before the schema message hit the disk
        self._reader: pa.ipc.RecordBatchStreamReader | None = None
        if self.empty:
            self._file.close()
            return
        try:
            self._reader = pa.ipc.open_stream(self._file)
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError):
            self._file.close()
            raise RecordingError(f"{path} is not an Arrow IPC stream") from None
        try:
            self._check(self._reader.schema, table)
        except BaseException:
            self._file.close()
            raise

    def _check(self, sch: pa.Schema, table: str | None) -> None:
        path = self.path
        version = schema.schema_version_of(sch)
        if version is not None and version > schema.SCHEMA_VERSION:
            raise NewerSchemaError(
                f"{path.name} uses recording schema v{version}; this autoglm-trace reads up to "
                f"v{schema.SCHEMA_VERSION} -- upgrade autoglm-trace"
            )
        if version is not None and version < 1:
            raise RecordingError(f"{path} has an invalid schema version in its metadata")
        if table is not None:
            named = (sch.metadata or {}).get(b"autoglm_trace.table")
            if named is not None and named != table.encode():
                raise RecordingError(f"{path} holds another table (its metadata names a different one); "
                                     "refusing a renamed or swapped table file")

    @property
    def schema(self) -> pa.Schema | None:
        return self._reader.schema if self._reader is not None else None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._reader is None:
            return
        try:
            while True:
                try:
                    batch = self._reader.read_next_batch()
                    # Full validation: a damaged batch can parse (offsets past its buffers) and would
                    # then crash the analysis instead of raising; treat it as the damaged tail.
                    batch.validate(full=True)
                except StopIteration:
                    break
                except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError, MemoryError):
                    self.truncated, self.error = True, f"damaged after {self.batches_read} whole batch(es)"
                    break
                self.batches_read += 1
                yield batch
        finally:
            self._file.close()


def read_stream_file(path: Path, expected: pa.Schema | None = None, dir_fd: int | None = None,
                     table: str | None = None) -> TableRead:
    """A whole table file as one Arrow table (see ``StreamRead`` for what is refused and kept)."""
    stream = StreamRead(path, dir_fd, table)
    if stream.empty:
        return TableRead(expected.empty_table() if expected is not None else pa.table({}), True, "empty file")
    batches = list(stream)
    try:
        table_read = pa.Table.from_batches(batches, schema=stream.schema)
    except (pa.ArrowException, ValueError):
        raise RecordingError(f"{path} has batches that do not match its own schema") from None
    if expected is not None:
        table_read = conform(table_read, expected, path)
    return TableRead(table_read, stream.truncated, stream.error)


def conform(table: pa.Table, expected: pa.Schema, path: Path) -> pa.Table:
    try:
        return _conform(table, expected)
    except (pa.ArrowException, ValueError, TypeError):  # names not UTF-8, uncastable types
        raise RecordingError(f"{path.name} does not match its table's schema") from None


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
        """The whole table (empty with the right schema when it was not recorded), kept for the next
        caller. A one-pass total over a few columns reads through ``scan`` instead."""
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
            t, dropped = self._plausible(name, read.table)
            if dropped:
                self.implausible[name] = dropped
        self._cache[name] = t
        return t

    def scan(self, name: str, columns: list[str]) -> pa.Table:
        """Just ``columns`` of a table -- the same rows ``table`` gives -- read one batch at a time
        and not kept: the recorder's exit summary totals a long recording this way without holding
        it (every table whole would cost the recorder memory in proportion to the recording)."""
        parts = self._scan(name, columns)
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables(parts).combine_chunks()

    def count(self, name: str) -> int:
        """The rows ``table(name)`` would have, counted without keeping them."""
        return sum(p.num_rows for p in self._scan(name, []))

    def _scan(self, name: str, columns: list[str]) -> list[pa.Table]:
        if name in self._cache:
            return [self._cache[name].select(columns)]
        expected = schema.TABLES.get(name)
        if expected is None:
            return [self.table(name).select(columns)]  # a file of no table we know: read as it is
        if not self.has(name):
            return [expected.empty_table().select(columns)]
        path = self.table_path(name)
        stream = StreamRead(path, dir_fd=self._fd, table=name)
        if stream.empty:
            self.truncated[name] = "empty file"
            return [expected.empty_table().select(columns)]
        parts: list[pa.Table] = []
        dropped = 0
        for batch in stream:
            t, n = self._plausible(name, conform(pa.Table.from_batches([batch]), expected, path))
            dropped += n
            parts.append(t.select(columns))
        if stream.truncated:
            self.truncated[name] = stream.error or "truncated"
        if dropped:
            self.implausible[name] = dropped
        return parts or [expected.empty_table().select(columns)]

    def _plausible(self, name: str, t: pa.Table) -> tuple[pa.Table, int]:
        """Rows no recorder writes -- a negative monotonic time, a span ending before it starts or
        starting long before the recording -- are left out (the count is returned for
        ``implausible``), so a hand-made or damaged table cannot push the analysis outside the int64
        range. Row by row, so a table and its batches give the same rows."""
        if not t.num_rows or "ts_ns" not in t.column_names or not pa.types.is_integer(t.schema.field("ts_ns").type):
            return t, 0
        import pyarrow.compute as pc

        ts = t.column("ts_ns")
        keep = pc.fill_null(pc.greater_equal(ts, 0), True)
        if name == "spans" and "end_ns" in t.column_names:
            end = t.column("end_ns")
            earliest = max(self.start_ns - span_client.MAX_EARLY_NS, 0)
            keep = pc.and_(keep, pc.fill_null(pc.and_(pc.greater_equal(ts, earliest), pc.greater_equal(end, ts)), False))
            keep = pc.and_(keep, pc.fill_null(pc.less_equal(pc.subtract(end, ts), SPAN_LONGEST_NS), False))
        dropped = t.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
        return (t.filter(keep), dropped) if dropped else (t, 0)

    def rows(self) -> dict[str, int]:
        """Rows per table, counted without keeping the tables."""
        return {name: self.count(name) for name in self.table_names}

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
            if "ts_ns" not in schema.TABLES[name].names:
                continue
            t = self.scan(name, ["ts_ns"])
            if t.num_rows:
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
