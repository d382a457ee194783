"""Synthetic requests on an interval (probes/http_probe.py): one collector per --probe URL."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.options import float_in, http_url
from autoglm_trace.probes.http_probe import HttpProbe

OPTIONS = (
    Option(("--probe",), "probe", "send a synthetic request on an interval", type=http_url, action="append",
           default=(), metavar="URL"),
    Option(("--probe-body",), "probe_body", "POST this body with each --probe request (LLM servers want a POST)",
           metavar="JSON", in_manifest=False),
    Option(("--probe-interval",), "probe_interval_s", type=float_in(0.05, 3600, " s"), default=1.0, metavar="S"),
)


def plan(s: Setup) -> list[Planned]:
    interval = float(s.options.get("probe_interval_s") or 1.0)
    body = s.options.get("probe_body")
    return [(f"probe{i}" if i else "probe", lambda u=url: HttpProbe(u, interval_s=interval, body=body))
            for i, url in enumerate(s.options.get("probe") or ())]


SPEC = CollectorSpec(name="probe", tables=HttpProbe.tables, plan=plan, options=OPTIONS,
                     title="synthetic requests", off_reason="not requested (--probe URL)", order=50)
