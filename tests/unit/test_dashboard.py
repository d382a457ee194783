"""dashboards/autoglm-trace.json: valid Grafana JSON whose every query names metrics the exporter
really serves (checked against the exporter's exposition after feeding it every table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autoglm_trace.sinks import rows_to_batch
from autoglm_trace.tracer.exporter import PrometheusExporter

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "autoglm-trace.json"
NAME = re.compile(r"\bautoglm_trace_[a-z0-9_]+")

H = [0] * 32
H[5] = 3

ONE_OF_EACH = {
    "processes": [{"ts_ns": 1, "pid": 10, "comm": "server"}],
    "proc_samples": [{"ts_ns": 1, "pid": 10, "ctx_voluntary": 1, "ctx_involuntary": 2, "minflt": 3, "majflt": 4,
                      "cpu_user_s": 1.0, "cpu_system_s": 1.0, "rss_bytes": 5}],
    "sched": [{"ts_ns": 1, "bucket_ns": 1, "pid": 10, "tid": 10, "runq_hist": H, "runq_wait_ns": 1, "oncpu_ns": 1}],
    "preemptions": [{"ts_ns": 1, "bucket_ns": 1, "pid": 10, "preemptor_pid": 3, "preemptor_comm": "x", "count": 1,
                     "wait_ns": 1}],
    "block_io": [{"ts_ns": 1, "bucket_ns": 1, "pid": 10, "dev": "8:0", "op": "R", "in_target": True, "count": 3,
                  "bytes": 4096, "lat_sum_ns": 10, "lat_hist": H}],
    "reclaim": [{"ts_ns": 1, "pid": 10, "kind": "direct", "in_target": True, "duration_ns": 5}],
    "oom_kills": [{"ts_ns": 1, "pid": 11, "comm": "hog", "in_target": True}],
    "probe_stats": [{"ts_ns": 1, "probe": "sched", "events": 5, "lost": 1, "reason": "perf_buffer"}],
    "gpu_devices": [{"ts_ns": 1, "gpu": 0, "mem_used_bytes": 1, "mem_total_bytes": 2, "util_gpu_pct": 50.0,
                     "util_mem_pct": 10.0, "power_mw": 100_000, "power_limit_mw": 300_000, "sm_clock_mhz": 1000,
                     "temp_c": 60, "clocks_event_reasons": 4}],
    "gpu_processes": [{"ts_ns": 1, "gpu": 0, "pid": 10, "used_bytes": 1}],
    "spans": [{"ts_ns": 0, "end_ns": 10_000_000, "name": "generate", "ok": False, "ttft_ns": 1_000_000}],
}


def served_names() -> set[str]:
    e = PrometheusExporter()
    for table, rows in ONE_OF_EACH.items():
        e.emit_batch(table, rows_to_batch(table, rows))
    text = generate_latest(e.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def _exprs(d: dict) -> list[str]:
    out = []
    for p in d["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    out += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return out


def test_dashboard_is_valid_grafana_json():
    d = json.loads(DASHBOARD.read_text())
    assert 36 <= d["schemaVersion"] <= 41 and d["uid"] and d["title"]
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds and ds[0]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"
    for e in _exprs(d):
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e


def test_latency_on_top_and_oom_annotation():
    d = json.loads(DASHBOARD.read_text())
    graphs = [p for p in d["panels"] if p["type"] != "row"]
    first = min(graphs, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert "latency" in first["title"].lower()
    assert any("histogram_quantile(0.99" in t["expr"] and "span_latency" in t["expr"] for t in first["targets"])
    resources = [p for p in graphs if not any("span_" in t["expr"] for t in p["targets"])]
    assert all(p["gridPos"]["y"] >= first["gridPos"]["y"] + first["gridPos"]["h"] for p in resources)
    (oom,) = [a for a in d["annotations"]["list"] if "oom" in a.get("expr", "")]
    assert "increase(autoglm_trace_oom_kills_total" in oom["expr"] and "[1m]" in oom["expr"] and "> 0" in oom["expr"]


def test_every_queried_metric_is_served():
    d = json.loads(DASHBOARD.read_text())
    queried = {m for e in _exprs(d) for m in NAME.findall(e)}
    served = served_names()
    assert queried - served == set()
    # And the panels the issue asks for are there.
    for m in ("autoglm_trace_span_latency_seconds_bucket", "autoglm_trace_runq_latency_seconds_bucket",
              "autoglm_trace_context_switches_total", "autoglm_trace_page_faults_total",
              "autoglm_trace_block_io_latency_seconds_bucket", "autoglm_trace_reclaim_stall_seconds_total",
              "autoglm_trace_process_rss_bytes", "autoglm_trace_gpu_memory_used_bytes",
              "autoglm_trace_gpu_utilization_ratio", "autoglm_trace_gpu_power_watts",
              "autoglm_trace_gpu_throttle_active", "autoglm_trace_lost_events_total",
              "autoglm_trace_oom_kills_total"):
        assert m in queried, m


def test_docs_list_every_metric():
    from autoglm_trace.tracer.exporter import METRICS, PREFIX

    doc = (DASHBOARD.parents[1] / "docs" / "live.md").read_text()
    for name, (typ, _, _labels) in METRICS.items():
        full = PREFIX + name + ("_total" if typ == "counter" else "")
        assert f"`{full}`" in doc, full
