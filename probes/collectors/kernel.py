"""The bcc kernel probes (probes/kernel.py): root only; --no-bpf turns them off."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.errors import UsageError
from autoglm_trace.options import int_in
from autoglm_trace.probes.bpf_program import FAMILIES
from autoglm_trace.probes.kernel import KernelProbes


def probe_families(spec: str) -> list[str]:
    """``--probes``: a list of families, or ``-NAME`` items leaving families out of all of them.
    A UsageError passes through argparse as it is (one line, exit 2)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if not items:
        raise UsageError("record: --probes needs at least one family")
    drop = [x[1:] for x in items if x.startswith("-")]
    keep = [x for x in items if not x.startswith("-")]
    unknown = [x for x in drop + keep if x not in FAMILIES]
    if unknown:
        raise UsageError(f"record: unknown probe families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    if drop and keep:
        raise UsageError("record: --probes takes either families or -NAME exclusions, not both")
    chosen = [f for f in FAMILIES if f not in drop] if drop else [f for f in FAMILIES if f in keep]
    if not chosen:
        raise UsageError("record: --probes leaves no kernel probe family")
    return chosen


OPTIONS = (
    Option(("--no-bpf",), "bpf", "no kernel probes (the /proc sampler still runs)", action="store_false",
           default=True),
    Option(("--probes",), "families", "kernel probe families, comma-separated (default all: sched,wakeups,"
           "faults,io,memory,oom,proc); -NAME leaves one out, e.g. --probes=-wakeups", type=probe_families,
           metavar="LIST"),
    Option(("--bucket",), "bucket_ms", "kernel aggregation bucket (default: the interval)",
           type=int_in(1, 60_000, " ms"), metavar="MS"),
    Option(("--perf-pages",), "perf_pages", type=int_in(1, 1 << 16), hidden=True),
)


def plan(s: Setup) -> list[Planned]:
    if not s.options.get("bpf", True):
        return [("kernel", "disabled with --no-bpf")]
    if not s.is_root:
        return [("kernel", "not running as root: kernel probes need root (run with sudo); "
                           "recording with the /proc sampler alone")]
    opts = {k: v for k, v in s.options.items() if v is not None}
    opts["bucket_ms"] = s.options.get("bucket_ms") or s.interval_ms
    return [("kernel", lambda: KernelProbes(opts))]


SPEC = CollectorSpec(name="kernel", tables=KernelProbes.tables, plan=plan, options=OPTIONS,
                     title="kernel probes (bcc; root)", order=10)
