"""A tailed JSONL/CSV latency log (probes/latency_log.py)."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.probes.latency_log import LatencyLogTail

OPTIONS = (
    Option(("--latency-log",), "latency_log", "tail a JSONL/CSV latency log while recording", metavar="FILE"),
)


def plan(s: Setup) -> list[Planned]:
    path = s.options.get("latency_log")
    return [("latency_log", lambda: LatencyLogTail(path))] if path else []


SPEC = CollectorSpec(name="latency_log", tables=LatencyLogTail.tables, plan=plan, options=OPTIONS,
                     title="latency log", off_reason="not requested (--latency-log FILE)",
                     order=60)
