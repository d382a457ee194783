"""Flight-recorder snapshots: what a trigger saves, where, and how many are kept.

A trigger captures the ring (``Pending``: zero-copy references to its batches plus a cursor); when
its tail has passed, ``snapshot_tables`` joins the capture with every row that arrived after it and
``snapshot_manifest`` describes it, and ``SnapshotWriter`` writes it as an ordinary recording on its
own thread (``write_snapshot``: through a hidden directory renamed at the end), then applies the
retention (``apply_retention``: oldest first, by count and by total bytes).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace import clock, schema
from autoglm_trace.errors import WriteError
from autoglm_trace.signals import human_bytes
from autoglm_trace.tracer.manifest import wall_iso
from autoglm_trace.tracer.writer import RecordingWriter

SNAPSHOT_NAME_RE = re.compile(r"^\d{8}T\d{6}Z-[a-z]+(?:-\d+)?$")


@dataclass
class Pending:
    """A snapshot being captured: the trigger, the ring as it was, and when its tail ends."""

    kind: str
    detail: str
    trigger_ns: int
    captured: dict[str, pa.Table]
    cursor: dict[str, int]
    deadline_ns: int
    also: list[dict[str, Any]] = field(default_factory=list)


def snapshot_tables(p: Pending, after: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The captured ring plus the rows that arrived after the capture; every table the ring saw
    exists (empty if it holds no rows now)."""
    tables: dict[str, pa.Table] = {}
    for name in sorted(set(p.captured) | set(after)):
        parts = [t for t in (p.captured.get(name), after.get(name)) if t is not None and t.num_rows]
        if parts:
            tables[name] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        else:
            tables[name] = schema.TABLES[name].empty_table()
    return tables


def snapshot_manifest(base: dict[str, Any], p: Pending, tables: dict[str, pa.Table], now: int, cut_short: bool,
                      ring_stats: dict[str, Any], ring_s: float, ring_bytes: int, tail_s: float,
                      notes: list[str] | None = None, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The snapshot's manifest: the recorder's (``base``), with the snapshot's own time span, tables,
    trigger and ring state."""
    m: dict[str, Any] = json.loads(json.dumps(base, default=str))
    offset = int(m.get("clock", {}).get("monotonic_to_wall_ns") or clock.monotonic_to_wall_offset_ns())
    lo = hi = None
    for t in tables.values():
        if t.num_rows:
            mm = pc.min_max(t.column("ts_ns"))
            a, b = mm["min"].as_py(), mm["max"].as_py()
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    start = lo if lo is not None else p.trigger_ns
    end = max(hi or now, p.trigger_ns)
    if notes is not None:
        m["notes"] = list(notes)
    if stats is not None:
        m["stats"] = stats
    st = ring_stats
    out_notes = m.setdefault("notes", [])
    if st["dropped_rows"]:
        out_notes.append(f"flight ring: {st['dropped_rows']} rows were evicted by the {human_bytes(ring_bytes)} "
                         "size limit before they aged out; raise --ring-bytes to keep the full window")
    if cut_short:
        out_notes.append("flight snapshot: the recorder stopped before the tail after the trigger ended")
    m.update({
        "start_ns": start, "start_time": wall_iso(start + offset),
        "end_ns": end, "end_time": wall_iso(end + offset),
        "duration_s": round((end - start) / 1e9, 3),
        "complete": True, "stop_reason": f"flight snapshot ({p.kind})", "error": None,
        "tables": {k: v.num_rows for k, v in tables.items()},
        "trigger": {"kind": p.kind, "detail": p.detail, "ts_ns": p.trigger_ns,
                    "time": wall_iso(p.trigger_ns + offset), "also": p.also},
        "flight": {"ring_s": ring_s, "ring_bytes": ring_bytes, "tail_s": tail_s,
                   "cut_short": cut_short, "recorder_start_ns": base.get("start_ns"),
                   "ring": {k: v for k, v in st.items() if k != "tables"}},
    })
    return m


class SnapshotWriter:
    """Writes snapshots on its own thread (at most two waiting: a third is dropped and logged, the
    recorder never blocks) into ``out_dir``, applying the retention after each."""

    def __init__(self, out_dir: Path, keep: int | None, keep_bytes: int | None, log: Callable[[str], None],
                 export_parquet: Path | None = None, export_args: tuple[str, ...] = ()) -> None:
        self.out_dir = out_dir
        self.export_parquet = export_parquet
        self.export_args = export_args
        self.keep = keep
        self.keep_bytes = keep_bytes
        self.log = log
        self.names: list[Path] = []  # every path handed out (written or still queued)
        self.saved: list[Path] = []
        self.exported: list[Path] = []
        self._queue: queue.Queue[tuple[Path, dict[str, Any], dict[str, pa.Table]] | None] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._loop, name="flight-writer", daemon=True)
        self._thread.start()

    def new_path(self, trigger_ns: int, kind: str, wall_offset_ns: int | None) -> Path:
        """``out_dir/<UTC time of the trigger>-<kind>``, numbered if taken."""
        offset = wall_offset_ns or clock.monotonic_to_wall_offset_ns()
        stamp = datetime.fromtimestamp((trigger_ns + offset) / 1e9, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{kind}"
        path = self.out_dir / name
        i = 2
        while path.exists() or path in self.names:
            path = self.out_dir / f"{name}-{i}"
            i += 1
        self.names.append(path)
        return path

    def submit(self, path: Path, manifest: dict[str, Any], tables: dict[str, pa.Table]) -> bool:
        try:
            self._queue.put_nowait((path, manifest, tables))
        except queue.Full:
            self.log(f"snapshot {path.name} dropped: the previous snapshots are still being written")
            return False
        return True

    def apply_retention(self, keep_path: Path | None = None) -> None:
        for p in apply_retention(self.out_dir, self.keep, self.keep_bytes, protect=keep_path):
            self.log(f"retention: deleted {p}")

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            path, manifest, tables = item
            try:
                t0 = time.monotonic()
                size = write_snapshot(path, manifest, tables)
                rows = sum(t.num_rows for t in tables.values())
                self.saved.append(path)
                self.log(f"saved {path} ({rows} rows, {human_bytes(size)}, "
                         f"{manifest['duration_s']:.1f} s of data, written in {time.monotonic() - t0:.1f} s)")
                if self.export_parquet is not None:
                    self._export(path)
                self.apply_retention(keep_path=path)
            except Exception as e:  # noqa: BLE001 - a failed snapshot never stops the flight recorder
                self.log(f"writing {path} failed: {e}")
            finally:
                del tables
                self._queue.task_done()


    def _export(self, path: Path) -> None:
        """``export SNAPSHOT --parquet DIR`` in a child process: the analysis it runs (findings tables)
        never grows the long-lived recorder, and a failure is logged, never fatal."""
        cmd = [sys.executable, "-m", "autoglm_trace.tracer.cli", "export", str(path),
               "--parquet", str(self.export_parquet), *self.export_args]
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, errors="replace", timeout=EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.log(f"exporting {path.name} to {self.export_parquet} timed out after {EXPORT_TIMEOUT_S} s")
            return
        if r.returncode == 0:
            self.exported.append(path)
            self.log(f"exported {path.name} to {self.export_parquet} in {time.monotonic() - t0:.1f} s")
        else:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            self.log(f"exporting {path.name} to {self.export_parquet} failed (exit {r.returncode}): {last}")


EXPORT_TIMEOUT_S = 300


def write_snapshot(path: Path, manifest: dict[str, Any], tables: dict[str, pa.Table]) -> int:
    """Write an ordinary recording at ``path`` (through a hidden directory renamed at the end, so a
    reader or the retention never sees half a snapshot). Returns its size in bytes."""
    tmp = path.parent / f".partial-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    w = RecordingWriter(tmp, manifest)
    try:
        for name, t in tables.items():
            w.writer(name)  # every table the ring saw exists in the snapshot, even if empty now
            if t.num_rows:
                w.emit_batch(name, t)
        w.close()
        if w.failed:
            raise WriteError(w.failed)
        manifest["tables"] = w.rows()
        w.write_manifest()
        w.release()
    except BaseException:
        w.release()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, path)
    return dir_size(path)


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def list_snapshots(out_dir: Path) -> list[Path]:
    """Snapshot directories in ``out_dir`` (ours: named by time and trigger, with a manifest), oldest
    first."""
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return []
    snaps = [p for p in entries if SNAPSHOT_NAME_RE.match(p.name) and p.is_dir() and not p.is_symlink()
             and (p / schema.MANIFEST_NAME).is_file()]
    return sorted(snaps, key=lambda p: p.name)


def apply_retention(out_dir: Path, max_count: int | None, max_bytes: int | None,
                    protect: Path | None = None) -> list[Path]:
    """Delete the oldest snapshots until at most ``max_count`` remain and they total at most
    ``max_bytes``. ``protect`` (the snapshot just written) is never deleted, even if it alone
    exceeds ``max_bytes``. Returns what was deleted."""
    snaps = list_snapshots(out_dir)
    sizes = {p: dir_size(p) for p in snaps}
    deleted: list[Path] = []
    total = sum(sizes.values())
    for p in snaps:  # oldest first
        over_count = max_count is not None and len(snaps) - len(deleted) > max_count
        over_bytes = max_bytes is not None and total > max_bytes
        if not (over_count or over_bytes):
            break
        if protect is not None and p == protect:
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            deleted.append(p)
            total -= sizes[p]
    return deleted


def prepare_out_dir(path: Path) -> None:
    try:
        if path.is_symlink():
            raise WriteError(f"{path} is a symbolic link; refusing to write snapshots through it")
        if path.exists() and not path.is_dir():
            raise WriteError(f"{path} exists and is not a directory")
    except OSError as e:  # a name too long, a parent we may not search
        raise WriteError(f"cannot use {path}: {e.strerror or e}") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WriteError(f"{path} is not writable")
    # Snapshots are written, renamed and deleted (retention) by name in this directory: another user
    # who can create entries there could plant or swap them (as sshd's StrictModes, refuse it).
    st = os.stat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise WriteError(f"{path} can be written by other users (owner uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); use a directory only uid {os.geteuid()} can write")
    # Half-written snapshots of a recorder that was killed mid-write.
    for p in path.glob(".partial-*"):
        shutil.rmtree(p, ignore_errors=True)
