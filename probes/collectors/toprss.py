"""The host's top processes by RSS (probes/toprss.py): the flight recorder in host mode only, so a
snapshot shows the victim's growth before a kill."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Planned, Setup
from autoglm_trace.probes.toprss import TopRssSampler


def plan(s: Setup) -> list[Planned]:
    if not (s.flight and s.host_mode):
        return []
    opts = dict(s.options)
    return [("toprss", lambda: TopRssSampler(opts))]


SPEC = CollectorSpec(name="toprss", tables=TopRssSampler.tables, plan=plan,
                     off_reason="only in a host-wide flight recorder (record --ring)", order=70)
