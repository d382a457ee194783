"""The /proc sampler (probes/procsampler.py): always on, unprivileged."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Planned, Setup
from autoglm_trace.probes.procsampler import ProcSampler


def plan(s: Setup) -> list[Planned]:
    opts = dict(s.options)
    return [("proc", lambda: ProcSampler(opts))]


SPEC = CollectorSpec(name="proc", tables=ProcSampler.tables, plan=plan, order=0)
