"""The recording writer: one Arrow IPC stream per table plus manifest.json.

Crash safety comes from the stream format: each flushed batch is a self-contained message, so a
recorder killed with SIGKILL leaves every file readable up to its last flushed batch (the reader
stops at the truncated tail and says so). ``flush()`` is called at least once a second by the
recorder; rows appended between flushes are buffered here (bounded: a table whose buffer passes
``max_buffered_rows`` is flushed at once).

Files are opened with O_NOFOLLOW | O_EXCL so a symlink planted in the recording directory is never
followed, and a recording never overwrites another.

Root writing on behalf of a sudo user (``owner``): the recording directory is opened once
(O_DIRECTORY | O_NOFOLLOW) and every later operation -- creating a table file, replacing the
manifest -- is relative to that fd (``dir_fd=``, openat semantics). Renaming the directory away and
planting a symlink in its place (the target runs as that user and may try) changes nothing: root
keeps writing into the directory it created. Ownership is given through fds as each file is created
(``fchown``), never by name, so nothing outside the recording can be handed over; a directory is
given away only if the recorder created it (an existing ``-o DIR`` keeps its owner and mode).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.errors import WriteError

_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_new(path: Path, mode: int = 0o644, dir_fd: int | None = None) -> int:
    try:
        return os.open(path.name if dir_fd is not None else path, _FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        raise WriteError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WriteError(f"{path} is a symbolic link; refusing to follow it") from None
        raise WriteError(f"cannot create {path}: {e.strerror}") from None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def open_directory(path: Path) -> tuple[int, bool]:
    """Create the recording directory (or take an existing empty one that is not a link) and return
    an fd on it and whether we created it. Parents are created as needed; the last component is
    opened with O_NOFOLLOW relative to its parent, so a link there is refused, not followed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.exists():
            parent.mkdir(mode=0o755, parents=True)
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise WriteError(f"cannot create {path}: {e.strerror or e}") from None
    try:
        created = False
        try:
            os.mkdir(path.name, 0o700, dir_fd=pfd)  # 0700 until its owner and mode are final
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise WriteError(f"cannot create {path}: {e.strerror or e}") from None
        try:
            fd = os.open(path.name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): tell them apart.
            is_link = e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and _is_link(path.name, pfd))
            if is_link:
                raise WriteError(f"{path} is a symbolic link; refusing to record through it") from None
            if e.errno == errno.ENOTDIR:
                raise WriteError(f"{path} exists and is not a directory") from None
            raise WriteError(f"cannot open {path}: {e.strerror or e}") from None
    finally:
        os.close(pfd)
    if not created:
        try:
            entries = os.listdir(fd)
        except OSError as e:
            os.close(fd)
            raise WriteError(f"cannot list {path}: {e.strerror or e}") from None
        if entries:
            os.close(fd)
            raise WriteError(f"{path} is not empty; choose a new recording path")
    return fd, created


def prepare_directory(path: Path) -> Path:
    """Create the recording directory (see ``open_directory``); returns its path."""
    fd, created = open_directory(path)
    try:
        if created:
            os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
    return Path(path)


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

    def __init__(self, directory: Path, table: str, max_buffered_rows: int = 200_000, dir_fd: int | None = None,
                 owner: tuple[int, int] | None = None) -> None:
        self.table = table
        self.schema = schema.schema_for(table)
        self.path = directory / f"{table}{schema.TABLE_SUFFIX}"
        self.max_buffered_rows = max_buffered_rows
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows_written = 0
        self.bytes_written = 0
        self._lock = threading.Lock()
        fd = _open_new(self.path, dir_fd=dir_fd)
        if owner is not None:
            _give(fd, owner)
        self._sink = _FdSink(fd)
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


def _finite(v: Any) -> Any:
    """``v`` with every NaN/infinite float as null: a manifest is strict JSON (a NaN in it made
    manifest.json unreadable by every JSON parser but Python's)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _give(fd: int, owner: tuple[int, int]) -> None:
    try:
        os.fchown(fd, *owner)
    except OSError:
        pass  # not root: the files are ours already


class RecordingWriter:
    """Owns a recording directory: a TableWriter per table (created on first use) and the manifest.
    ``owner`` (uid, gid): who the recording is given to (root recording for a sudo user)."""

    def __init__(self, directory: Path | str, manifest: dict[str, Any], tables: Iterable[str] = (),
                 owner: tuple[int, int] | None = None) -> None:
        self.directory = Path(directory)
        self.owner = owner
        self._dir_fd, self.created = open_directory(self.directory)
        if self.created:
            if owner is not None:
                _give(self._dir_fd, owner)
            os.fchmod(self._dir_fd, 0o755)
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
                w = self._tables[table] = TableWriter(self.directory, table, dir_fd=self._dir_fd, owner=self.owner)
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
        dfd = self._dir_fd
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp.name, dir_fd=dfd)  # a leftover (or a planted link: removed, not followed)
            fd = _open_new(tmp, dir_fd=dfd)
            if self.owner is not None:
                _give(fd, self.owner)
            with os.fdopen(fd, "w") as f:
                json.dump(_finite(self.manifest), f, indent=2, sort_keys=True, default=str, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp.name, schema.MANIFEST_NAME, src_dir_fd=dfd, dst_dir_fd=dfd)
        except (OSError, ValueError) as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name, dir_fd=dfd)  # never leave a half-written temporary beside the last good manifest
            raise WriteError(f"cannot write the manifest: {getattr(e, 'strerror', None) or e}") from None

    def close(self) -> None:
        """Close every table; the directory fd stays open for a last ``write_manifest``
        (``release()`` closes it)."""
        errors = []
        for w in list(self._tables.values()):
            try:
                w.close()
            except WriteError as e:
                errors.append(str(e))
        if errors and self.failed is None:
            self.failed = errors[0]

    def release(self) -> None:
        fd, self._dir_fd = self._dir_fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
