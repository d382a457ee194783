"""Recordings that look like several hosts' (written by the project's writer through the synthetic
scenarios), exported into one fleet dataset: shared by the DuckDB and the Spark tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoglm_trace.analysis.parquet_export import export_parquet
from autoglm_trace.analysis.reader import Recording
from tests.fakes.synthetic import WALL_OFFSET_NS, Scenario, write_recording

HOUR_NS = 3600 * 10**9
# host -> (scenario kind, build, latency scale, hours after the synthetic epoch)
HOSTS: dict[str, tuple[str, str, float, int]] = {
    "gpu-r1-01": ("clean", "v1", 1.0, 0),
    "gpu-r1-02": ("cpu", "v1", 1.0, 0),      # the injected incident: stress-ng steals the CPU
    "gpu-r2-01": ("clean", "v1", 1.0, 0),
    "gpu-r2-02": ("leak_oom", "v1", 1.0, 0),  # a memcg OOM kill (leak)
    "gpu-r1-01b": ("clean", "v2", 1.0, 2),   # same build on another host, later: no regression
    "gpu-r2-01b": ("clean", "v2", 1.6, 2),   # build v2 on this host: 1.6x slower
}


def make_fleet(base: Path, duration_s: float = 180.0) -> dict[str, Any]:
    """Write one recording per host and export each into ``base/ds``; returns the truths."""
    truths: dict[str, Any] = {}
    for i, (host, (kind, build, scale, hours)) in enumerate(HOSTS.items()):
        name = host.removesuffix("b") if host.endswith("b") else host
        rec = base / f"rec-{host}"
        truths[host] = write_recording(rec, Scenario(
            kind=kind, duration_s=duration_s, seed=10 + i, hostname=name, boot_id=f"boot-{name}",
            wall_offset_ns=WALL_OFFSET_NS + hours * HOUR_NS, labels={"build": build, "rack": name[4:6]},
            latency_scale=scale))
        export_parquet(Recording(rec), base / "ds")
    return truths
