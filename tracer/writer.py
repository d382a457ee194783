"""The recording writer: one Arrow IPC stream per table plus manifest.json.

Crash safety comes from the stream format: each flushed batch is a self-contained message, so a
recorder killed with SIGKILL leaves every file readable up to its last flushed batch (the reader
stops at the truncated tail and says so). ``flush()`` is called at least once a second by the
recorder; rows appended between flushes are buffered here (bounded: a table whose buffer passes
``max_buffered_rows`` is flushed at once).

Files are opened with O_NOFOLLOW | O_EXCL so a symlink planted in the recording directory is never
followed, and a recording never overwrites another.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.errors import WriteError

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_new(path: Path, mode: int = 0o644) -> int:
    try:
        return os.open(path, _FILE_FLAGS, mode)
    except FileExistsError:
        raise WriteError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WriteError(f"{path} is a symbolic link; refusing to follow it") from None
        raise WriteError(f"cannot create {path}: {e.strerror}") from None


def prepare_directory(path: Path) -> Path:
    """Create the recording directory; an existing one must be ours-to-use (empty, not a link)."""
    path = Path(path)
    if path.is_symlink():
        raise WriteError(f"{path} is a symbolic link; refusing to record through it")
    if path.exists():
        if not path.is_dir():
            raise WriteError(f"{path} exists and is not a directory")
        if any(path.iterdir()):
            raise WriteError(f"{path} is not empty; choose a new recording path")
    else:
        try:
            path.mkdir(mode=0o755, parents=True)
        except OSError as e:
            raise WriteError(f"cannot create {path}: {e.strerror}") from None
    os.chmod(path, 0o755)
    return path


class _FdSink:
    """A file object over an fd opened safely; pyarrow writes through it."""

    def __init__(self, fd: int) -> None:
        self._f = os.fdopen(fd, "wb", buffering=0)

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


class TableWriter:
    """Buffers rows of one table and appends them to ``<table>.arrow`` as record batches."""

    def __init__(self, directory: Path, table: str, max_buffered_rows: int = 200_000) -> None:
        self.table = table
        self.schema = schema.schema_for(table)
        self.path = directory / f"{table}{schema.TABLE_SUFFIX}"
        self.max_buffered_rows = max_buffered_rows
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows_written = 0
        self.bytes_written = 0
        self._lock = threading.Lock()
        self._sink = _FdSink(_open_new(self.path))
        # zstd buffer compression: about 4x smaller files; every Arrow reader (pyarrow, polars,
        # DuckDB through pyarrow) decompresses IPC streams transparently.
        self._writer = pa.ipc.new_stream(self._sink, self.schema, options=_IPC_OPTIONS)

    # Appending --------------------------------------------------------------------------------
    def append_rows(self, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self._append(pa.RecordBatch.from_pylist(rows, schema=self.schema))

    def append_columns(self, columns: Mapping[str, Any]) -> None:
        arrays = []
        n = None
        for field in self.schema:
            col = columns.get(field.name)
            if col is None:
                if n is None:
                    n = len(next(iter(columns.values())))
                arrays.append(pa.nulls(n, field.type))
            else:
                arrays.append(pa.array(col, type=field.type))
                n = len(arrays[-1])
        if n:
            self._append(pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def append_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows:
            if isinstance(batch, pa.Table):
                for b in batch.cast(self.schema).to_batches():
                    self._append(b)
            else:
                self._append(batch.cast(self.schema) if batch.schema != self.schema else batch)

    def _append(self, batch: pa.RecordBatch) -> None:
        with self._lock:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            over = self._pending_rows >= self.max_buffered_rows
        if over:
            self.flush()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # Flushing ---------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write what is buffered as one batch; returns rows written. Raises WriteError."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
            if not pending or self._writer is None:
                return 0
            merged = pa.Table.from_batches(pending, schema=self.schema).combine_chunks()
            try:
                for batch in merged.to_batches():
                    self._writer.write_batch(batch)
                    self.bytes_written += batch.nbytes
                self._sink.flush()
            except OSError as e:
                raise WriteError(
                    f"writing {self.path.name} failed ({e.strerror or e}); rows flushed before "
                    "this point stay readable"
                ) from None
            self.rows_written += merged.num_rows
            return merged.num_rows

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                if self._writer is not None:
                    try:
                        self._writer.close()
                    except OSError:
                        pass
                    self._writer = None
                try:
                    self._sink.close()
                except OSError:
                    pass


class RecordingWriter:
    """Owns a recording directory: a TableWriter per table (created on first use) and the manifest."""

    def __init__(self, directory: Path | str, manifest: dict[str, Any], tables: Iterable[str] = ()) -> None:
        self.directory = prepare_directory(Path(directory))
        self.manifest = manifest
        self._tables: dict[str, TableWriter] = {}
        self._lock = threading.Lock()
        self.failed: str | None = None
        for t in tables:
            self.writer(t)
        self.write_manifest()

    def writer(self, table: str) -> TableWriter:
        with self._lock:
            w = self._tables.get(table)
            if w is None:
                w = self._tables[table] = TableWriter(self.directory, table)
            return w

    def emit(self, table: str, rows: list[Mapping[str, Any]]) -> None:
        if self.failed is None:
            self.writer(table).append_rows(rows)

    def emit_columns(self, table: str, columns: Mapping[str, Any]) -> None:
        if self.failed is None:
            self.writer(table).append_columns(columns)

    def emit_batch(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        if self.failed is None:
            self.writer(table).append_batch(batch)

    def rows(self) -> dict[str, int]:
        with self._lock:
            tables = dict(self._tables)
        return {name: w.rows_written + w.pending_rows for name, w in sorted(tables.items())}

    def bytes_written(self) -> int:
        return sum(w.bytes_written for w in list(self._tables.values()))

    def flush(self) -> None:
        """Flush every table. On a write failure the recorder is told once (``failed``)."""
        if self.failed is not None:
            return
        with self._lock:
            tables = list(self._tables.values())
        for w in tables:
            try:
                w.flush()
            except WriteError as e:
                self.failed = str(e)
                raise

    def write_manifest(self) -> None:
        """Replace manifest.json atomically (write a new file, then rename over the old one)."""
        tmp = self.directory / f".{schema.MANIFEST_NAME}.{os.getpid()}.tmp"
        try:
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()
            fd = _open_new(tmp)
            with os.fdopen(fd, "w") as f:
                json.dump(self.manifest, f, indent=2, sort_keys=True, default=str)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / schema.MANIFEST_NAME)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()  # never leave a half-written temporary beside the last good manifest
            raise WriteError(f"cannot write the manifest: {e.strerror or e}") from None

    def close(self) -> None:
        errors = []
        for w in list(self._tables.values()):
            try:
                w.close()
            except WriteError as e:
                errors.append(str(e))
        if errors and self.failed is None:
            self.failed = errors[0]

    def chown(self, uid: int, gid: int) -> None:
        """Give the recording to the user who ran sudo (never following links)."""
        for p in [self.directory, *self.directory.iterdir()]:
            try:
                os.chown(p, uid, gid, follow_symlinks=False)
            except OSError:
                pass
