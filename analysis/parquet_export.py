"""``export_parquet(rec, DIR)``: one recording, and what ``analyze`` / ``oom`` found in it, into the
fleet dataset (layout and columns: ``analysis.dataset``, docs/format-parquet.md).

Reads only through the reader contract (``analysis.reader.Recording``). Every file is written as a
temp file in its partition directory and renamed, so a query never sees half a file; the raw tables
go first, the findings next and the ``recordings`` row last (a recording is in the dataset once that
row is). Exporting the same recording again replaces its files, so a re-run is harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autoglm_trace.analysis import dataset
from autoglm_trace.analysis.outfile import atomic_file
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.requests import recorded_requests
from autoglm_trace.errors import RecordingError, UsageError

DAY_NS = 86_400 * 1_000_000_000


def recording_id(manifest: dict[str, Any]) -> str:
    """16 hex digits: the manifest's own ``recording_id`` when it has one, else a hash of what makes
    a recording unique (host, boot, clock anchor, monotonic start and end, trigger) -- stable across copies and
    re-exports of the same directory, different for two flight snapshots of one ring."""
    given = manifest.get("recording_id")
    if isinstance(given, str) and dataset.SAFE_VALUE.match(given):
        return given[:32]
    host = manifest.get("host") if isinstance(manifest.get("host"), dict) else {}
    trig = manifest.get("trigger") if isinstance(manifest.get("trigger"), dict) else {}
    clk = manifest.get("clock") if isinstance(manifest.get("clock"), dict) else {}
    # The clock anchor tells two boots apart where boot_id is missing (same monotonic start).
    key = "\0".join(str(v) for v in (host.get("hostname"), host.get("boot_id"), clk.get("monotonic_to_wall_ns"),
                                     manifest.get("start_ns"), manifest.get("end_ns"), trig.get("ts_ns"),
                                     trig.get("kind")))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def safe_host(name: str) -> str:
    """A host name as a partition value: characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    s = "".join(c if (c.isascii() and (c.isalnum() or c in "._-")) else "_" for c in name.strip())[:253]
    if s and not s[0].isalnum():
        s = "h" + s
    return s or "unknown"


def check_label(key: str, value: str) -> None:
    if not key.isidentifier() or not key.isascii():
        raise UsageError(f"export: label name {key!r} must be a word of letters, digits and _")
    if any(ord(c) < 32 for c in value) or len(value) > 256:
        raise UsageError(f"export: label {key} must be one line of at most 256 characters")


def _portable_column(arr: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if arr.type == typ:
        return arr
    # uint64 bitmasks keep their bits in int64; counters never come near 2**63.
    return arr.cast(typ, safe=False)


def _wall(ts: pa.ChunkedArray, offset: int) -> pa.Array:
    v = ts.to_numpy(zero_copy_only=False)
    if v.dtype == object:  # nulls present
        out = [None if x is None else (int(x) + offset) // 1000 for x in ts.to_pylist()]
        return pa.array(out, type=pa.int64()).cast(dataset.WALL_TYPE)
    return pa.array((v.astype(np.int64) + offset) // 1000, type=pa.int64()).cast(dataset.WALL_TYPE)


class Exporter:
    """One recording's identity and clock, and the files written so far."""

    def __init__(self, rec: Recording, out: Path, host: str | None = None, build: str | None = None,
                 labels: dict[str, str] | None = None) -> None:
        self.rec, self.out = rec, Path(out)
        m = rec.manifest
        hinfo = m.get("host") if isinstance(m.get("host"), dict) else {}
        self.host = safe_host(host if host is not None else str(hinfo.get("hostname") or "unknown"))
        self.boot_id = str(hinfo.get("boot_id") or "")
        self.recording_id = recording_id(m)
        self.offset = self._offset(m)
        mlabels = m.get("labels") if isinstance(m.get("labels"), dict) else {}
        self.labels = {str(k): str(v) for k, v in mlabels.items()}
        self.labels.update(labels or {})
        if build is not None:
            self.labels["build"] = build
        self.files: list[Path] = []
        self.rows: dict[str, int] = {}

    @staticmethod
    def _offset(m: dict[str, Any]) -> int:
        clk = m.get("clock") if isinstance(m.get("clock"), dict) else {}
        off = clk.get("monotonic_to_wall_ns")
        if not isinstance(off, int) or isinstance(off, bool) or off <= 0:
            raise RecordingError("the manifest has no clock.monotonic_to_wall_ns: the recording cannot be "
                                 "placed in wall-clock time")
        return off

    # Writing ------------------------------------------------------------------------------------
    def _keyed(self, name: str, cols: dict[str, Any], n: int, wall_ns: np.ndarray) -> pa.Table:
        sch = dataset.schema_for(name)
        days = (wall_ns // DAY_NS).astype(np.int32)
        arrays: list[pa.Array | pa.ChunkedArray] = []
        for f in sch:
            if f.name == "host":
                arrays.append(pa.array([self.host] * n, pa.string()))
            elif f.name == "boot_id":
                arrays.append(pa.array([self.boot_id] * n, pa.string()))
            elif f.name == "recording_id":
                arrays.append(pa.array([self.recording_id] * n, pa.string()))
            elif f.name == "date":
                arrays.append(pa.array(days, pa.int32()).cast(pa.date32()))
            else:
                v = cols.get(f.name)
                if v is None:
                    arrays.append(pa.nulls(n, f.type))
                elif isinstance(v, (pa.Array, pa.ChunkedArray)):
                    arrays.append(_portable_column(v, f.type))
                else:
                    arrays.append(pa.array(v, type=f.type))
        return pa.Table.from_arrays(arrays, schema=sch)

    def write(self, name: str, t: pa.Table) -> None:
        """``t`` (dataset schema) into its partitions, one file per UTC day of its rows."""
        if not t.num_rows:
            return
        days = t.column("date")
        for day in pc.unique(days).to_pylist():
            part = t.filter(pc.equal(days, pa.scalar(day, pa.date32()))) if len(pc.unique(days)) > 1 else t
            d = self.out / name / f"host={self.host}" / f"date={day.isoformat()}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{self.recording_id}{dataset.SUFFIX}"
            with atomic_file(path) as f:
                pq.write_table(part, f, compression="zstd")
            self.files.append(path)
        self.rows[name] = self.rows.get(name, 0) + t.num_rows

    def recording_table(self, name: str) -> pa.Table:
        t = self.rec.table(name)
        cols: dict[str, Any] = {c: t.column(c) for c in t.column_names}
        wall_ns = t.column("ts_ns").to_numpy(zero_copy_only=False).astype(np.int64) + self.offset
        for mono, wall in dataset.WALL_COLUMNS.items():
            if mono in cols:
                cols[wall] = _wall(cols[mono], self.offset)
        return self._keyed(name, cols, t.num_rows, wall_ns)

    def rows_table(self, name: str, rows: list[dict[str, Any]]) -> pa.Table:
        """Findings rows (dicts with ``ts_ns`` and any of the table's columns) as a dataset table."""
        sch = dataset.schema_for(name)
        n = len(rows)
        ts = np.array([int(r["ts_ns"]) for r in rows], dtype=np.int64)
        cols: dict[str, Any] = {}
        for f in sch:
            if f.name in dataset.KEY_NAMES:
                continue
            if f.name in dataset.WALL_COLUMNS.values():
                mono = next(k for k, v in dataset.WALL_COLUMNS.items() if v == f.name)
                cols[f.name] = pa.array([None if r.get(mono) is None else (int(r[mono]) + self.offset) // 1000
                                         for r in rows], pa.int64()).cast(dataset.WALL_TYPE)
            elif f.name == "exported_at":
                cols[f.name] = pa.array([time.time_ns() // 1000] * n, pa.int64()).cast(dataset.WALL_TYPE)
            else:
                cols[f.name] = pa.array([_cell(r.get(f.name), f.type) for r in rows], type=f.type)
        return self._keyed(name, cols, n, ts + self.offset)


def _cell(v: Any, typ: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_string(typ):
        return v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
    if pa.types.is_integer(typ):
        return int(v)
    if pa.types.is_floating(typ):
        return float(v)
    if pa.types.is_boolean(typ):
        return bool(v)
    return v


# Findings rows --------------------------------------------------------------------------------
_CULPRIT_COLS = ("pid", "comm", "cgroup", "container", "pod", "in_target", "share")


def findings_rows(diagnosis: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The ``analyze --json`` dict flattened into incidents / causes / culprits rows."""
    incidents, causes, culprits = [], [], []
    for inc in diagnosis.get("incidents") or []:
        cs = [c for c in inc.get("causes") or []]
        top = cs[0] if cs else {}
        tc = (top.get("culprits") or [{}])[0] if top else {}
        incidents.append({
            "incident_id": inc["id"], "kind": inc.get("kind"), "ts_ns": inc["start_ns"], "end_ns": inc.get("end_ns"),
            "duration_s": inc.get("duration_s"), "requests": inc.get("requests"), "failed": inc.get("failed"),
            "latency_ms": inc.get("latency_ms"), "baseline_ms": inc.get("baseline_ms"),
            "extra_ms": inc.get("extra_ms"), "latency_extra_fraction": inc.get("latency_extra_fraction"),
            "cause": top.get("kind"), "cause_score": top.get("score"), "cause_summary": top.get("summary"),
            **{f"culprit_{k}": tc.get(k) for k in _CULPRIT_COLS}, "headline": inc.get("headline"),
        })
        for rank, c in enumerate(cs, 1):
            causes.append({"incident_id": inc["id"], "rank": rank, "ts_ns": inc["start_ns"], "kind": c.get("kind"),
                           "score": c.get("score"), "confidence": c.get("confidence"), "share": c.get("share"),
                           "ratio": c.get("ratio"), "signal": c.get("signal"), "summary": c.get("summary"),
                           "culprit_summary": c.get("culprit_summary")})
            for crank, cu in enumerate(c.get("culprits") or [], 1):
                detail = {k: v for k, v in cu.items() if k not in _CULPRIT_COLS}
                culprits.append({"incident_id": inc["id"], "cause_rank": rank, "cause": c.get("kind"),
                                 "rank": crank, "ts_ns": inc["start_ns"],
                                 **{k: cu.get(k) for k in _CULPRIT_COLS}, "detail": detail or None})
    return {"incidents": incidents, "causes": causes, "culprits": culprits}


def oom_rows(rec: Recording, kills: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Post-mortem kills joined with their recorded ``oom_kills`` row (same ts_ns and pid)."""
    raw: dict[tuple[int, int], dict[str, Any]] = {}
    if rec.has("oom_kills"):
        for r in rec.table("oom_kills").to_pylist():
            raw[(int(r["ts_ns"]), int(r["pid"]))] = r
    out = []
    for k in kills:
        row = dict(raw.get((int(k["ts_ns"]), int(k["pid"] or 0)), {}))
        for c in ("pid", "comm", "in_target", "kind", "rss_bytes", "gpu_bytes", "limit_bytes", "usage_bytes",
                  "growth_bytes_per_s", "tree_rss_bytes", "verdict", "verdict_reason", "container", "pod"):
            if k.get(c) is not None or c not in row:
                row[c] = k.get(c)
        if not row.get("memcg") and k.get("memcg"):
            row["memcg"] = k["memcg"]
        row["ts_ns"] = int(k["ts_ns"])
        row["pid"] = int(k["pid"] or 0)
        out.append(row)
    return out


def latency_hist(ex: Exporter, spans: pa.Table) -> pa.Table | None:
    """``spans`` as per-minute latency histograms (``dataset`` table ``latency_hist``)."""
    if not spans.num_rows:
        return None
    start = spans.column("ts_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    end = spans.column("end_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    keep = end >= start
    ms = np.maximum((end - start) / 1e6, 0.001)
    bucket = np.floor(np.log2(ms) * dataset.LATENCY_BUCKETS_PER_DOUBLING).astype(np.int32)
    minute = (start + ex.offset) // dataset.LATENCY_MINUTE_NS * dataset.LATENCY_MINUTE_NS
    failed = pc.fill_null(pc.equal(spans.column("ok"), False), False).to_numpy(zero_copy_only=False)
    names = pc.fill_null(spans.column("name"), "")
    t = pa.table({"minute": minute, "name": names, "bucket": bucket, "failed": failed.astype(np.int64),
                  "one": np.ones(len(start), np.int64)}).filter(pa.array(keep))
    if not t.num_rows:
        return None
    g = t.group_by(["minute", "name", "bucket"], use_threads=False).aggregate([("one", "sum"), ("failed", "sum")])
    g = g.sort_by([("minute", "ascending"), ("name", "ascending"), ("bucket", "ascending")])
    wall = g.column("minute").to_numpy().astype(np.int64)
    cols = {"ts_ns": wall - ex.offset, "ts": pa.array(wall // 1000, pa.int64()).cast(dataset.WALL_TYPE),
            "name": g.column("name"), "bucket": g.column("bucket"), "requests": g.column("one_sum"),
            "failed": g.column("failed_sum")}
    return ex._keyed("latency_hist", cols, g.num_rows, wall)


def recording_row(ex: Exporter, diagnosis: dict[str, Any]) -> dict[str, Any]:
    m = ex.rec.manifest
    target = m.get("target") if isinstance(m.get("target"), dict) else {}
    cmd = target.get("command")
    if isinstance(cmd, list):
        cmd = " ".join(str(c) for c in cmd)
    req = diagnosis.get("requests") or {}
    hinfo = m.get("host") if isinstance(m.get("host"), dict) else {}
    tool = m.get("tool") if isinstance(m.get("tool"), dict) else {}
    start, end = ex.rec.start_ns, ex.rec.end_ns
    return {
        "ts_ns": start, "end_ns": end, "duration_s": round((end - start) / 1e9, 3),
        "build": ex.labels.get("build"), "labels": json.dumps(ex.labels, sort_keys=True),
        "kernel": hinfo.get("kernel"), "cpus": hinfo.get("cpus") if isinstance(hinfo.get("cpus"), int) else None,
        "target": cmd or target.get("mode"), "complete": ex.rec.complete, "stop_reason": m.get("stop_reason"),
        "tool_version": tool.get("version"), "requests": req.get("count") or 0,
        "failed_requests": req.get("failed") or 0, "p50_ms": req.get("p50_ms"), "p99_ms": req.get("p99_ms"),
        "incidents": len(diagnosis.get("incidents") or []), "oom_kills": len(diagnosis.get("oom") or []),
        "exported_at": 0,
    }


def export_parquet(rec: Recording, out: str | Path, host: str | None = None, build: str | None = None,
                   labels: dict[str, str] | None = None,
                   diagnose: Callable[[Recording], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``rec`` into the dataset at ``out``; returns what was written (files, rows per table)."""
    if diagnose is None:
        from autoglm_trace.analysis.diagnosis import diagnose
    ex = Exporter(rec, Path(out), host=host, build=build, labels=labels)
    t0 = time.monotonic()
    for name in rec.table_names:
        if name not in dataset.TABLES or name == "oom_kills":
            continue  # oom_kills is written enriched, with the findings
        ex.write(name, ex.recording_table(name))
    d = diagnose(rec)
    for name, rows in findings_rows(d).items():
        if rows:
            ex.write(name, ex.rows_table(name, rows))
    lh = latency_hist(ex, recorded_requests(rec))
    if lh is not None:
        ex.write("latency_hist", lh)
    kills = oom_rows(rec, d.get("oom") or [])
    if kills:
        ex.write("oom_kills", ex.rows_table("oom_kills", kills))
    ex.write("recordings", ex.rows_table("recordings", [recording_row(ex, d)]))
    return {"dir": str(out), "host": ex.host, "boot_id": ex.boot_id, "recording_id": ex.recording_id,
            "labels": ex.labels, "files": [str(p) for p in ex.files], "rows": ex.rows,
            "bytes": sum(os.path.getsize(p) for p in ex.files), "seconds": round(time.monotonic() - t0, 3),
            "truncated": dict(rec.truncated)}
