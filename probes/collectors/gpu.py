"""NVML sampling (probes/nvml.py): a real or simulated backend, chosen when it starts."""

from __future__ import annotations

from autoglm_trace.collector import CollectorSpec, Option, Planned, Setup
from autoglm_trace.options import int_in
from autoglm_trace.probes.nvml import NvmlSampler

OPTIONS = (
    Option(("--no-gpu",), "gpu", "no NVML sampling", action="store_false", default=True),
    Option(("--gpu-interval",), "gpu_interval_ms", "NVML sampling interval (default: the interval)",
           type=int_in(1, 60_000, " ms"), metavar="MS"),
)


def plan(s: Setup) -> list[Planned]:
    if not s.options.get("gpu", True):
        return [("gpu", "disabled with --no-gpu")]
    opts = {k: v for k, v in s.options.items() if v is not None}
    return [("gpu", lambda: NvmlSampler(opts))]


SPEC = CollectorSpec(name="gpu", tables=NvmlSampler.tables, plan=plan, options=OPTIONS, title="GPU (NVML)",
                     order=20)
