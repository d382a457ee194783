"""Who each process is (probes/identity.py): container, pod, systemd unit and user, for naming culprits."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Planned, Setup
from autoglm_trace.probes.identity import IdentitySampler


def plan(s: Setup) -> list[Planned]:
    opts = dict(s.options)
    return [("identity", lambda: IdentitySampler(opts))]


SPEC = CollectorSpec(name="identity", tables=IdentitySampler.tables, plan=plan, order=5)
