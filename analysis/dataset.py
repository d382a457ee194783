"""The fleet dataset: recordings and their findings as Hive-partitioned Parquet, defined once.

``autoglm-trace export REC --parquet DIR`` (``analysis.parquet_export``) writes it; ``autoglm-trace
fleet DIR`` (``analysis.fleet``) and any engine that reads Parquet (DuckDB, Spark SQL, Trino, Athena)
query it. docs/format-parquet.md documents the same contract (generated from this module).

Layout -- one directory per table, so each is an ordinary external table for a metastore (a Hive /
Trino / Athena table is a directory), partitioned by host and UTC day::

    DIR/<table>/host=<host>/date=<YYYY-MM-DD>/<recording_id>.parquet

``recording_id`` keeps two recordings of one host and day apart (a flight recorder saves several a
day); exporting a recording again rewrites the same files. A recording whose rows span midnight has a
file in both days. Rules:

* Every row carries ``host``, ``boot_id``, ``recording_id`` and ``date`` (also in the path, for
  partition pruning; the values are equal).
* Beside each CLOCK_MONOTONIC column a wall-clock UTC timestamp (microseconds): ``ts`` beside
  ``ts_ns``, ``end_ts`` beside ``end_ns``, ``start_ts`` beside ``start_time_ns`` -- from the
  manifest's ``clock.monotonic_to_wall_ns``. ``ts_ns`` stays: it orders events within one boot.
* Portable types only: unsigned integers become signed 64-bit (``clocks_event_reasons`` keeps its
  bits), histograms ``list<int64>``; no nanosecond timestamps (Spark reads microseconds).
* The findings of ``analyze`` / ``oom`` are tables of their own: ``incidents``, ``causes``,
  ``culprits``, and ``oom_kills`` (the recorded ``oom_kills`` rows joined with the post-mortem's
  verdict, plus CUDA OOMs, which the kernel never sees). ``recordings`` holds one row per recording;
  it is written last, so a recording is in the dataset once its ``recordings`` row exists.
  ``latency_hist`` is the request latency of ``spans`` pre-aggregated per minute (log histogram), what
  the fleet's regression check reads.
* Versioned like the recording: every file's metadata carries ``autoglm_trace.dataset_version``,
  ``autoglm_trace.schema_version`` (of the recording it came from) and ``autoglm_trace.table``. Bump
  ``DATASET_VERSION`` when a column changes meaning or is removed, or the layout changes; adding a
  table or a nullable column keeps it.
"""

from __future__ import annotations

import re

import pyarrow as pa

from autoglm_trace import schema

DATASET_VERSION = 1
FORMAT_NAME = "autoglm-trace-dataset"
SUFFIX = ".parquet"

# monotonic column -> the wall-clock column written beside it
WALL_COLUMNS = {"ts_ns": "ts", "end_ns": "end_ts", "start_time_ns": "start_ts"}
WALL_TYPE = pa.timestamp("us", tz="UTC")
# A Hive partition value must be a path component that every engine reads back unchanged.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


KEY_FIELDS = [
    _f("host", pa.string(), "host name (the manifest's hostname, or export --host)", False),
    _f("boot_id", pa.string(), "kernel boot id: ts_ns values compare only within one boot", False),
    _f("recording_id", pa.string(), "16 hex digits identifying the recording (see docs/format-parquet.md)", False),
    _f("date", pa.date32(), "UTC day of the row's ts (the date= partition)", False),
]
KEY_NAMES = tuple(f.name for f in KEY_FIELDS)


def _portable(t: pa.DataType) -> pa.DataType:
    if pa.types.is_unsigned_integer(t):
        return pa.int64()
    if pa.types.is_list(t):
        return pa.list_(_portable(t.value_type))
    return t


def _meta(table: str, doc: str) -> dict[str, str]:
    return {"autoglm_trace.dataset_version": str(DATASET_VERSION),
            "autoglm_trace.schema_version": str(schema.SCHEMA_VERSION),
            "autoglm_trace.table": table, "doc": doc}


def _from_recording(table: str) -> pa.Schema:
    fields = list(KEY_FIELDS)
    for f in schema.schema_for(table):
        fields.append(f.with_type(_portable(f.type)))
        wall = WALL_COLUMNS.get(f.name)
        if wall:
            fields.append(_f(wall, WALL_TYPE, f"{f.name} as UTC wall-clock time", f.nullable))
    return pa.schema(fields, metadata=_meta(table, schema.TABLE_DOCS[table]))


def _findings(table: str, doc: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(list(KEY_FIELDS) + fields, metadata=_meta(table, doc))


_ts = [_f("ts_ns", pa.int64(), "CLOCK_MONOTONIC ns of the start", False),
       _f("ts", WALL_TYPE, "start, UTC wall-clock", False)]

FINDINGS: dict[str, pa.Schema] = {
    "recordings": _findings("recordings", "One row per exported recording: what, when, which build, and its "
                            "request totals (the denominators for incident rates).", [
        *_ts,
        _f("end_ns", pa.int64(), "CLOCK_MONOTONIC ns of the end"),
        _f("end_ts", WALL_TYPE, "end, UTC wall-clock"),
        _f("duration_s", pa.float64(), "recorded seconds"),
        _f("build", pa.string(), "build / version label of the served software (export --build, "
           "record --label build=...)"),
        _f("labels", pa.string(), "all labels as a JSON object (rack, zone, model ...)"),
        _f("kernel", pa.string(), "kernel release"),
        _f("cpus", pa.int32(), "CPUs of the host"),
        _f("target", pa.string(), "the target's command (or mode for a host-wide recording)"),
        _f("complete", pa.bool_(), "the recorder finished cleanly"),
        _f("stop_reason", pa.string(), "why it stopped (flight snapshot (oom), duration reached ...)"),
        _f("tool_version", pa.string(), "autoglm-trace version that recorded it"),
        _f("requests", pa.int64(), "requests timed in the recording (0 without spans)"),
        _f("failed_requests", pa.int64(), "of which failed"),
        _f("p50_ms", pa.float64(), "request latency median"),
        _f("p99_ms", pa.float64(), "request latency p99"),
        _f("incidents", pa.int32(), "incidents analyze found"),
        _f("oom_kills", pa.int32(), "OOM kills and CUDA OOMs the post-mortem found"),
        _f("exported_at", WALL_TYPE, "when this export ran"),
    ]),
    "incidents": _findings("incidents", "One row per incident of `analyze`, with its top cause and that "
                           "cause's top culprit (all causes in `causes`, all culprits in `culprits`).", [
        _f("incident_id", pa.int32(), "incident number within the recording (1 = largest)", False),
        _f("kind", pa.string(), "latency (slow requests) | resource (a stall signal spiked)"),
        *_ts,
        _f("end_ns", pa.int64(), "CLOCK_MONOTONIC ns of the end"),
        _f("end_ts", WALL_TYPE, "end, UTC wall-clock"),
        _f("duration_s", pa.float64(), "length"),
        _f("requests", pa.int64(), "slow requests in it"),
        _f("failed", pa.int64(), "failed requests in it"),
        _f("latency_ms", pa.float64(), "p99 latency of its slow requests"),
        _f("baseline_ms", pa.float64(), "what those requests were expected to take"),
        _f("extra_ms", pa.float64(), "mean extra latency per slow request"),
        _f("latency_extra_fraction", pa.float64(), "share of their latency that is extra"),
        _f("cause", pa.string(), "top cause kind (cpu_contention, io_wait, memory_pressure, gpu_throttle, "
           "gpu_memory, oom, load, unexplained ...)"),
        _f("cause_score", pa.float64(), "its score (docs/analysis.md)"),
        _f("cause_summary", pa.string(), "its one-line evidence"),
        _f("culprit_pid", pa.int32(), "top culprit of the top cause"),
        _f("culprit_comm", pa.string(), "its comm"),
        _f("culprit_cgroup", pa.string(), "its cgroup path when known"),
        _f("culprit_container", pa.string(), "its container when the analysis named one"),
        _f("culprit_pod", pa.string(), "its Kubernetes pod when the analysis named one"),
        _f("culprit_in_target", pa.bool_(), "the culprit is inside the traced tree"),
        _f("culprit_share", pa.float64(), "its share of the resource the cause is about"),
        _f("headline", pa.string(), "the analysis' one-line headline"),
    ]),
    "causes": _findings("causes", "Every ranked cause of every incident.", [
        _f("incident_id", pa.int32(), "incident number", False),
        _f("rank", pa.int32(), "1 = best score", False),
        *_ts,
        _f("kind", pa.string(), "cause kind"),
        _f("score", pa.float64(), "confidence x (0.3 + 0.7 share)"),
        _f("confidence", pa.float64(), "0..1"),
        _f("share", pa.float64(), "share of the extra latency it accounts for"),
        _f("ratio", pa.float64(), "incident / baseline of its signal"),
        _f("signal", pa.string(), "the signal that carried it"),
        _f("summary", pa.string(), "one-line evidence"),
        _f("culprit_summary", pa.string(), "one line about its top culprit"),
    ]),
    "culprits": _findings("culprits", "Every named culprit of every cause of every incident.", [
        _f("incident_id", pa.int32(), "incident number", False),
        _f("cause_rank", pa.int32(), "rank of the cause within the incident", False),
        _f("cause", pa.string(), "cause kind"),
        _f("rank", pa.int32(), "1 = largest share", False),
        *_ts,
        _f("pid", pa.int32(), "process id"),
        _f("comm", pa.string(), "comm"),
        _f("cgroup", pa.string(), "cgroup path when known"),
        _f("container", pa.string(), "container when the analysis named one"),
        _f("pod", pa.string(), "Kubernetes pod when the analysis named one"),
        _f("in_target", pa.bool_(), "inside the traced tree"),
        _f("share", pa.float64(), "share of the resource (run-queue wait, I/O bytes, reclaim time, GPU growth)"),
        _f("detail", pa.string(), "the culprit's other numbers as a JSON object"),
    ]),
}

FINDINGS["latency_hist"] = _findings(
    "latency_hist", "Request latency per recording per UTC minute per span name as a log histogram: "
    "bucket b counts requests (by start time) whose latency is in [2^(b/8), 2^((b+1)/8)) ms, about 9 % "
    "wide (LATENCY_BUCKETS_PER_DOUBLING). The fleet's regression check reads this, not the raw spans: "
    "its cost does not grow with the request rate.", [
        _f("ts_ns", pa.int64(), "CLOCK_MONOTONIC ns of the minute's start", False),
        _f("ts", WALL_TYPE, "the minute's start, UTC wall-clock", False),
        _f("name", pa.string(), "span name ('' when unnamed)"),
        _f("bucket", pa.int32(), "floor(log2(latency in ms) * 8); latencies under 1 us count as 1 us", False),
        _f("requests", pa.int64(), "requests in the bucket", False),
        _f("failed", pa.int64(), "of which failed (spans.ok = false)", False),
    ])
LATENCY_BUCKETS_PER_DOUBLING = 8
LATENCY_MINUTE_NS = 60 * 1_000_000_000

_OOM_EXTRA = [
    _f("kind", pa.string(), "host | memcg | cuda (the killer path)"),
    _f("rss_bytes", pa.int64(), "victim RSS at the kill"),
    _f("gpu_bytes", pa.int64(), "victim GPU memory at the kill"),
    _f("limit_bytes", pa.int64(), "the limit it hit (memcg / host / GPU)"),
    _f("usage_bytes", pa.int64(), "usage at the kill"),
    _f("growth_bytes_per_s", pa.float64(), "victim growth over the last minute"),
    _f("tree_rss_bytes", pa.int64(), "RSS of the victim's process tree"),
    _f("verdict", pa.string(), "leak | kv_cache_growth | sudden_allocation | unknown"),
    _f("verdict_reason", pa.string(), "why"),
    _f("container", pa.string(), "victim's container when the analysis named one"),
    _f("pod", pa.string(), "victim's Kubernetes pod when the analysis named one"),
]
_oom = _from_recording("oom_kills")
FINDINGS["oom_kills"] = pa.schema(
    list(_oom) + _OOM_EXTRA,
    metadata=_meta("oom_kills", "Every OOM kill (the recorded oom_kills rows) and CUDA OOM, with the "
                   "`oom` post-mortem's verdict."))

FINDINGS_ORDER = ("incidents", "causes", "culprits", "oom_kills", "latency_hist", "recordings")
TABLES: dict[str, pa.Schema] = {name: _from_recording(name) for name in schema.TABLES if name != "oom_kills"}
TABLES.update(FINDINGS)


def schema_for(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown dataset table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def dataset_version_of(sch: pa.Schema) -> int | None:
    raw = (sch.metadata or {}).get(b"autoglm_trace.dataset_version")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def tables_markdown() -> str:
    """The column reference of docs/format-parquet.md."""
    out: list[str] = []
    for name in [*FINDINGS_ORDER, *(n for n in TABLES if n not in FINDINGS)]:
        sch = TABLES[name]
        doc = (sch.metadata or {}).get(b"doc", b"").decode()
        out.append(f"### `{name}`\n")
        out.append(doc + "\n")
        if name not in FINDINGS:
            out.append(f"Columns of the recording's `{name}` table (docs/format.md) with the key columns "
                       "and wall-clock times added:\n")
        out.append("| column | type | meaning |")
        out.append("|---|---|---|")
        for f in sch:
            d = (f.metadata or {}).get(b"doc", b"").decode()
            null = "" if f.nullable else " (never null)"
            out.append(f"| `{f.name}` | {f.type}{null} | {d.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
