"""The same fleet .sql files on Spark SQL (local mode) give the same answers as on DuckDB.

Needs pyspark (the project's `spark` extra, which scripts/setup.sh installs where `java` exists) and a
Java runtime; skipped with the reason otherwise.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from autoglm_trace.analysis import fleet
from tests.fleet_data import make_fleet

pytestmark = pytest.mark.slow


def _spark_missing() -> str | None:
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (java not on PATH, JAVA_HOME unset): Spark cannot start"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark not installed (the project's 'spark' extra; scripts/setup.sh installs it when java exists)"
    return None


@pytest.fixture(scope="module")
def spark():
    reason = _spark_missing()
    if reason:
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    s = (SparkSession.builder.master("local[2]").appName("autoglm-trace-test")
         .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "2").config("spark.driver.memory", "1g").getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


def _same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_duckdb_and_spark_agree(tmp_path: Path, spark) -> None:
    make_fleet(tmp_path)
    ds = tmp_path / "ds"
    duck = fleet.fleet_report(ds)
    sp = fleet.fleet_report(ds, None, fleet.SparkEngine(spark))
    assert sp["engine"] == "spark" and duck["engine"] == "duckdb"
    for key in ("params", "range", "by_host", "over_time", "top_culprits", "incidents", "oom", "regression"):
        _same(duck[key], sp[key], key)
    assert sp["incidents"][0]["host"] == "gpu-r1-02" and sp["incidents"][0]["culprit_comm"] == "stress-ng"
    assert sp["incidents"][0]["cause"] == "cpu_contention"
    # The build comparison: only its query differs, run it alone on both engines.
    p = fleet.Params(compare="build", builds=("v1", "v2"), top_n=5)
    got = {}
    for eng in (fleet.DuckDBEngine(), fleet.SparkEngine(spark)):
        dset = fleet.Dataset.open(ds)
        dset.bind(eng, fleet.tables_used(("latency_histograms",)))
        eng.bind_params(p.row())
        got[eng.name] = fleet.run_query(eng, "latency_histograms")
    _same(got["duckdb"], got["spark"], "latency_histograms")
    both = {h for h in {r["host"] for r in got["spark"]}
            if {r["side"] for r in got["spark"] if r["host"] == h} == {"before", "after"}}
    assert both == {"gpu-r1-01", "gpu-r2-01"}
