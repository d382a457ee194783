"""The span receiver (probes/span_receiver.py): datagrams from ``autoglm_trace.span`` in the target."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.probes.span_receiver import SpanReceiver

OPTIONS = (
    Option(("--no-spans",), "spans", "do not listen for span API datagrams", action="store_false", default=True),
)


def plan(s: Setup) -> list[Planned]:
    if not s.options.get("spans", True):
        return []
    opts = {k: v for k, v in s.options.items() if v is not None}
    return [("spans", lambda: SpanReceiver(opts))]


SPEC = CollectorSpec(name="spans", tables=SpanReceiver.tables, plan=plan, options=OPTIONS,
                     title="request spans (the autoglm_trace.span API)", off_reason="disabled with --no-spans", order=30)
