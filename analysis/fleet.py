"""``fleet(DIR)``: questions across many hosts' exports (``analysis.dataset``), answered by SQL.

The queries are the ``.sql`` files in ``analysis/fleet_sql/`` (package data), written in the SQL
DuckDB, Spark SQL and Trino share. They read views the engine binds -- one per dataset table, named
as the table, plus the one-row ``fleet_params`` -- so the same text runs on DuckDB here (embedded, no
server) and on Spark or Trino over the same Parquet in object storage (docs/fleet.md).

What comes back (``autoglm-trace fleet --json``, schema ``autoglm-trace.fleet/1``):

* ``range``: hosts, recordings, requests and time covered;
* ``by_host``: per host, incidents, the most frequent cause and culprit, the last incident;
* ``over_time``: incidents per time bucket, host, cause and culprit;
* ``top_culprits``: culprits blamed most often across hosts (by program name and container);
* ``incidents``: the largest incidents, each with host, cause and culprit;
* ``oom``: OOM kills and CUDA OOMs;
* ``regression``: per host, request latency before vs after (two periods, or two builds) with the
  ``diff`` command's test (``analysis.diff.histogram_dist``: order-statistic confidence intervals,
  disjoint = significant) applied to per-host latency histograms the SQL aggregates.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autoglm_trace.analysis import dataset
from autoglm_trace.analysis.diff import QUANTILES, histogram_dist
from autoglm_trace.errors import NewerSchemaError, RecordingError, UsageError

SCHEMA_ID = "autoglm-trace.fleet/1"
SQL_PACKAGE = "autoglm_trace.analysis"
SQL_DIR = "fleet_sql"
# The queries the default `fleet DIR` runs, in order.
QUERIES = ("fleet_range", "incidents_by_host", "incidents_over_time", "top_culprits", "incident_list",
           "oom_kills", "latency_histograms")
FAR_PAST = datetime(1970, 1, 1, tzinfo=timezone.utc)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=timezone.utc)
# The findings tables: one to a few rows per recording, read by most queries. DuckDB copies them
# into memory once instead of opening every host's file again for each query.
MATERIALIZE = frozenset({"recordings", "incidents", "causes", "culprits", "oom_kills"})
BUCKETS_PER_DOUBLING = dataset.LATENCY_BUCKETS_PER_DOUBLING  # latency_hist.bucket = floor(log2(ms) * 8)


def sql_text(name: str) -> str:
    """The body of ``fleet_sql/<name>.sql`` (what every engine runs)."""
    try:
        return (resources.files(SQL_PACKAGE) / SQL_DIR / f"{name}.sql").read_text()
    except FileNotFoundError:
        raise UsageError(f"fleet: no query named {name!r}") from None


def query_names() -> list[str]:
    d = resources.files(SQL_PACKAGE) / SQL_DIR
    return sorted(p.name[:-4] for p in d.iterdir() if p.name.endswith(".sql"))


# Parameters ------------------------------------------------------------------------------------
@dataclass
class Params:
    """The one row of the ``fleet_params`` view."""

    since: datetime = FAR_PAST
    until: datetime = FAR_FUTURE
    bucket_unit: str = "hour"
    top_n: int = 20
    compare: str = "period"  # or "build"
    before: tuple[datetime, datetime] | None = None
    after: tuple[datetime, datetime] | None = None
    builds: tuple[str, str] | None = None

    def row(self) -> dict[str, Any]:
        b = self.before or (FAR_PAST, FAR_PAST)
        a = self.after or (FAR_PAST, FAR_PAST)
        bb = self.builds or (None, None)
        return {"since_ts": self.since, "until_ts": self.until, "bucket_unit": self.bucket_unit,
                "top_n": self.top_n, "compare": self.compare, "before_start": b[0], "before_end": b[1],
                "after_start": a[0], "after_end": a[1], "before_build": bb[0], "after_build": bb[1]}


PARAM_TYPES = {"since_ts": "timestamp", "until_ts": "timestamp", "bucket_unit": "string", "top_n": "int",
               "compare": "string", "before_start": "timestamp", "before_end": "timestamp",
               "after_start": "timestamp", "after_end": "timestamp", "before_build": "string",
               "after_build": "string"}


def parse_time(text: str, what: str) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    s = text.strip()
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"fleet: {what} {text!r} is not an ISO date or time (2025-11-24 or 2025-11-24T16:00)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_period(text: str, what: str) -> tuple[datetime, datetime]:
    """``START..END`` (END exclusive; a bare date as END means up to the end of that day)."""
    a, sep, b = text.partition("..")
    if not sep or not a or not b:
        raise UsageError(f"fleet: {what} wants START..END, e.g. 2025-11-20..2025-11-22, got {text!r}")
    start, end = parse_time(a, what), parse_time(b, what)
    if len(b.strip()) == 10:
        end += timedelta(days=1)
    if end <= start:
        raise UsageError(f"fleet: {what} {text!r} ends before it starts")
    return start, end


# Engines ---------------------------------------------------------------------------------------
class Engine(Protocol):
    name: str

    def bind(self, table: str, files: list[Path], root: Path) -> None: ...
    def bind_params(self, row: dict[str, Any]) -> None: ...
    def query(self, sql: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def _sql_literal(v: Any, typ: str) -> str:
    if v is None:
        return f"CAST(NULL AS {'STRING' if typ == 'string' else typ.upper()})"
    if typ == "timestamp":
        return f"TIMESTAMP '{v.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    if typ == "int":
        return str(int(v))
    return "'" + str(v).replace("'", "''") + "'"


def params_select(row: dict[str, Any]) -> str:
    """``SELECT <literal> AS <name>, ...``: the ``fleet_params`` body (DuckDB and Spark spell these
    literals alike; times are UTC, each engine's session time zone is set to UTC)."""
    return "SELECT " + ", ".join(f"{_sql_literal(row[k], PARAM_TYPES[k])} AS {k}" for k in PARAM_TYPES)


class DuckDBEngine:
    name = "duckdb"

    def __init__(self, threads: int | None = None) -> None:
        import duckdb

        self._duckdb = duckdb
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        # Every query reads the recordings table (incidents count once their recording row exists):
        # keep the files' footers instead of parsing a thousand of them per query.
        try:
            self.con.execute("SET parquet_metadata_cache = true")
        except duckdb.Error:
            pass
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def bind(self, table: str, files: list[Path], root: Path) -> None:
        if not files:
            self.con.register(table, dataset.schema_for(table).empty_table())
            return
        rel = self.con.read_parquet([str(f) for f in files], hive_partitioning=True, union_by_name=True)
        if table in MATERIALIZE:
            # Small and read by several queries: opened once, kept in memory.
            rel.create(table)
        else:
            rel.create_view(table, replace=True)

    def bind_params(self, row: dict[str, Any]) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW fleet_params AS {params_select(row)}")

    def query(self, sql: str) -> list[dict[str, Any]]:
        cur = self.con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        self.con.close()


class SparkEngine:
    """Spark SQL (local mode by default): the portability check, and a way to run the same queries
    where a Spark cluster already reads the dataset."""

    name = "spark"

    def __init__(self, session: Any = None) -> None:
        if session is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise UsageError("fleet: --engine spark needs pyspark (pip install 'autoglm-trace[spark]') "
                                 "and a Java runtime") from None
            session = (SparkSession.builder.master("local[2]").appName("autoglm-trace-fleet")
                       .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
                       .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
            session.sparkContext.setLogLevel("ERROR")
        self.spark = session
        self.spark.conf.set("spark.sql.session.timeZone", "UTC")

    def bind(self, table: str, files: list[Path], root: Path) -> None:
        from pyspark.sql.pandas.types import from_arrow_schema

        # The documented schema, not inference: no job to merge footers, and columns an older file
        # lacks read as nulls.
        sch = from_arrow_schema(dataset.schema_for(table))
        if files:
            df = self.spark.read.schema(sch).parquet(str(root / table))
        else:
            df = self.spark.createDataFrame([], sch)
        df.createOrReplaceTempView(table)

    def bind_params(self, row: dict[str, Any]) -> None:
        self.spark.sql(f"CREATE OR REPLACE TEMP VIEW fleet_params AS {params_select(row)}")

    def query(self, sql: str) -> list[dict[str, Any]]:
        return [r.asDict() for r in self.spark.sql(sql).collect()]

    def close(self) -> None:
        pass  # the session may be shared (tests, a notebook): the caller stops it


def make_engine(name: str) -> Engine:
    if name == "duckdb":
        return DuckDBEngine()
    if name == "spark":
        return SparkEngine()
    raise UsageError(f"fleet: unknown engine {name!r} (duckdb or spark)")


# The dataset -----------------------------------------------------------------------------------
@dataclass
class Dataset:
    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path, tables: set[str] | None = None) -> Dataset:
        """The files of ``tables`` (default: every dataset table) under ``root``; ``recordings`` is
        always listed (no recordings: not a dataset)."""
        root = Path(root)
        if not root.exists():
            raise RecordingError(f"{root}: no such directory")
        if not root.is_dir():
            raise RecordingError(f"{root} is not a directory")
        ds = cls(root)
        for name in dataset.TABLES:
            if tables is not None and name not in tables and name != "recordings":
                continue
            ds.files[name] = _parquet_files(root / name)
        if not ds.files["recordings"]:
            raise RecordingError(f"{root} holds no exported recording (no recordings/ files); write one with "
                                 "'autoglm-trace export REC --parquet DIR'")
        ds._check_version()
        return ds

    def _check_version(self) -> None:
        """Refuse files of a newer dataset version (checked on the last-named file of each table:
        a full check would read every footer before the first query)."""
        for files in self.files.values():
            if not files:
                continue
            f = files[-1]
            try:
                sch = pq.read_schema(f)
            except (OSError, pa.ArrowException) as e:
                raise RecordingError(f"{f} is not a readable Parquet file ({str(e).splitlines()[0][:160]})") from None
            v = dataset.dataset_version_of(sch)
            if v is not None and v > dataset.DATASET_VERSION:
                raise NewerSchemaError(f"{f} is fleet dataset v{v}; this autoglm-trace reads up to "
                                       f"v{dataset.DATASET_VERSION} -- upgrade autoglm-trace")

    def bind(self, engine: Engine, tables: set[str] | None = None) -> None:
        for name, files in self.files.items():
            if tables is None or name in tables:
                engine.bind(name, files, self.root)


def _parquet_files(d: Path) -> list[Path]:
    """Every ``*.parquet`` under ``d`` (hidden temp files and ``_``-names skipped, as Spark does)."""
    found: list[Path] = []
    if not d.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith((".", "_")))
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if f.endswith(dataset.SUFFIX) and not f.startswith((".", "_"))]
    return found


def tables_used(queries: tuple[str, ...]) -> set[str]:
    """The dataset tables the queries read (only those are bound: binding costs a listing on Spark)."""
    text = "\n".join(re.sub(r"--[^\n]*", "", sql_text(q)) for q in queries)
    return {t for t in dataset.TABLES if re.search(rf"\b{t}\b", text)}


# Running ---------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """Engine values as JSON-able plain values: times as ISO-8601 UTC, dates as ISO dates."""
    if isinstance(v, datetime):
        # Spark hands back naive datetimes in the driver's local time zone; DuckDB aware ones.
        v = v.astimezone(timezone.utc) if v.tzinfo else v.astimezone().astimezone(timezone.utc)
        return v.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if hasattr(v, "__float__") and not isinstance(v, (int, float, bool)):  # Decimal
        return float(v)
    return v


def run_query(engine: Engine, name: str) -> list[dict[str, Any]]:
    try:
        rows = engine.query(sql_text(name))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - engines raise their own error classes
        msg = str(e).strip().splitlines()
        raise RecordingError(f"fleet: query {name} failed on {engine.name}: {msg[0][:300] if msg else type(e).__name__}") from None
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def default_params(r: dict[str, Any], p: Params) -> Params:
    """Fill what the user left open from the data (``r``: the fleet_range row): the comparison
    defaults to the first vs the second half of the recorded time; the bucket to an hour, or a day
    past three days."""
    first, last = r.get("first_ts"), r.get("last_ts")
    if first and last:
        lo, hi = parse_time(first, "first_ts"), parse_time(last, "last_ts")
        lo, hi = max(lo, p.since), min(hi + timedelta(microseconds=1), p.until)
        if p.bucket_unit == "auto":
            p.bucket_unit = "day" if hi - lo > timedelta(days=3) else "hour"
        if p.compare == "period" and p.before is None:
            # latency_hist rows are minutes: split on a minute boundary
            mid = lo + (hi - lo) / 2
            mid = mid.replace(second=0, microsecond=0) if hi - lo >= timedelta(minutes=2) else mid
            p.before, p.after = (lo, mid), (mid, hi)
    if p.bucket_unit == "auto":
        p.bucket_unit = "hour"
    return p


def _bucket_value(b: int) -> float:
    """Representative latency (ms) of histogram bucket b: its geometric middle."""
    return float(2.0 ** ((b + 0.5) / BUCKETS_PER_DOUBLING))


def regression(rows: list[dict[str, Any]], p: Params) -> dict[str, Any]:
    """Per host, before vs after, with ``diff``'s test on the latency histograms."""
    by: dict[str, dict[str, dict[int, int]]] = {}
    for r in rows:
        by.setdefault(r["host"], {}).setdefault(r["side"], {})[int(r["bucket"])] = int(r["requests"])
    hosts = []
    for host in sorted(by):
        sides = by[host]
        if "before" not in sides or "after" not in sides:
            continue
        hist = {}
        for side in ("before", "after"):
            bs = np.array(sorted(sides[side]), dtype=np.int64)
            hist[side] = (np.array([_bucket_value(b) for b in bs]), np.array([sides[side][b] for b in bs]))
        d = histogram_dist(hist["before"], hist["after"], "ms")
        if d is None:
            continue
        regressed = any(d[f"p{q}"]["significant"] and d[f"p{q}"]["change"] > 0 for q in QUANTILES)
        improved = any(d[f"p{q}"]["significant"] and d[f"p{q}"]["change"] < 0 for q in QUANTILES)
        hosts.append({"host": host, "regressed": regressed, "improved": improved and not regressed,
                      "before_requests": d["base_count"], "after_requests": d["new_count"],
                      **{f"p{q}": d[f"p{q}"] for q in QUANTILES}})
    hosts.sort(key=lambda h: (not h["regressed"], -(h["p99"]["ratio"] or 0), h["host"]))
    n_reg = sum(h["regressed"] for h in hosts)
    if p.compare == "build":
        assert p.builds is not None
        sides = {"before": {"build": p.builds[0]}, "after": {"build": p.builds[1]}}
    else:
        fmt = (lambda t: _plain(t)) if p.before else (lambda t: None)
        b, a = p.before or (None, None), p.after or (None, None)
        sides = {"before": {"start": fmt(b[0]), "end": fmt(b[1])}, "after": {"start": fmt(a[0]), "end": fmt(a[1])}}
    if not hosts:
        verdict = "no host has requests on both sides"
    elif n_reg == 0:
        verdict = f"no host regressed ({len(hosts)} compared)"
    elif n_reg == len(hosts):
        verdict = f"every host regressed ({n_reg} of {len(hosts)})"
    else:
        verdict = f"{n_reg} of {len(hosts)} hosts regressed"
    return {"compare": p.compare, **sides, "test": "p50/p90/p99 95% order-statistic intervals disjoint "
            f"(latency histograms, {BUCKETS_PER_DOUBLING} buckets per doubling)",
            "hosts_compared": len(hosts), "hosts_regressed": n_reg, "verdict": verdict, "hosts": hosts}


def fleet_report(root: str | Path, params: Params | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Run the default queries over the dataset at ``root``; returns the ``fleet --json`` dict."""
    t0 = time.monotonic()
    p = params or Params(bucket_unit="auto")
    used = tables_used(QUERIES)
    ds = Dataset.open(root, used)
    timings: dict[str, float] = {"list_files": round(time.monotonic() - t0, 3)}
    own = engine is None
    eng = engine or make_engine("duckdb")
    try:
        q0 = time.monotonic()
        try:
            ds.bind(eng, used)
        except Exception as e:  # noqa: BLE001 - engines raise their own error classes
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise RecordingError(f"fleet: cannot read the dataset at {root} ({eng.name}): {msg}") from None
        eng.bind_params(p.row())
        timings["bind"] = round(time.monotonic() - q0, 3)
        q0 = time.monotonic()
        out: dict[str, Any] = {"fleet_range": run_query(eng, "fleet_range")}  # depends on since/until only
        timings["fleet_range"] = round(time.monotonic() - q0, 3)
        p = default_params(out["fleet_range"][0], p)
        eng.bind_params(p.row())
        for name in QUERIES[1:]:
            q0 = time.monotonic()
            out[name] = run_query(eng, name)
            timings[name] = round(time.monotonic() - q0, 3)
    finally:
        if own:
            eng.close()
    rng = out["fleet_range"][0]
    return {
        "schema": SCHEMA_ID, "dir": str(root), "engine": eng.name,
        "params": {"since": _plain(p.since) if p.since != FAR_PAST else None,
                   "until": _plain(p.until) if p.until != FAR_FUTURE else None,
                   "bucket": p.bucket_unit, "top": p.top_n},
        "range": rng, "by_host": out["incidents_by_host"], "over_time": out["incidents_over_time"],
        "top_culprits": out["top_culprits"], "incidents": out["incident_list"], "oom": out["oom_kills"],
        "regression": regression(out["latency_histograms"], p),
        "files": {k: len(v) for k, v in ds.files.items() if v},
        "timing": {"seconds": round(time.monotonic() - t0, 3), "queries": timings},
    }
