"""Every view that counts or draws requests reads them through ``analysis/requests.py``: a request
the span API and the server's latency log both reported is one request in the report's latency
chart, the timeline's load signal, the Perfetto slices and the Parquet latency histogram."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.analysis.requests import recorded_requests
from tests.fakes.synthetic import Scenario, write_recording


def _doubled(tmp_path: Path) -> Recording:
    write_recording(tmp_path / "r", Scenario(kind="clean", seed=5))
    rec = Recording(tmp_path / "r")
    api = rec.table("spans")
    log = api.set_column(api.schema.get_field_index("source"), "source", pa.array(["log"] * api.num_rows))
    both = pa.concat_tables([api, log])
    with pa.OSFile(str(rec.table_path("spans")), "wb") as f, pa.ipc.new_stream(f, both.schema) as w:
        w.write_table(both)
    rec = Recording(tmp_path / "r")
    assert rec.table("spans").num_rows == 2 * api.num_rows > 0
    return rec


def test_each_view_counts_a_request_once(tmp_path: Path) -> None:
    from autoglm_trace.analysis import parquet_export, perfetto, tracks
    from autoglm_trace.analysis.timeline import build_timeline

    rec = _doubled(tmp_path)
    n = recorded_requests(rec).num_rows
    assert n * 2 == rec.table("spans").num_rows

    assert tracks.latency_series(rec, max_points=10**6).ts_ns.size == n

    tl = build_timeline(rec)
    arrivals = tl.get("request_arrivals")
    assert int(round(float(arrivals.values.sum()))) == n

    stats = perfetto.export_perfetto(rec, tmp_path / "t.json")
    assert stats["spans"] == n

    parquet_export.export_parquet(rec, tmp_path / "pq", host="h")
    lh = pq.read_table(next((tmp_path / "pq" / "latency_hist").rglob("*.parquet")))
    assert int(pc.sum(lh.column("requests")).as_py()) == n
