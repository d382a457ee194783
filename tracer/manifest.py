"""manifest.json: what a recording is (host, target, clock, collectors, completeness).

Written when the recording starts (``complete: false``), refreshed every few seconds while it runs,
and rewritten at the end with ``complete: true``, the end time and the target's exit status. A reader
that finds ``complete: false`` knows the recorder did not finish cleanly. Documented in docs/format.md.
"""

from __future__ import annotations

import os
import platform
import socket
from datetime import datetime, timezone
from typing import Any

from autoglm_trace import __version__, clock, procfs, schema


def wall_iso(wall_ns: int) -> str:
    return datetime.fromtimestamp(wall_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def host_info() -> dict[str, Any]:
    try:
        mem_total = procfs.read_meminfo().get("MemTotal")
    except OSError:
        mem_total = None
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "mem_total_bytes": mem_total,
        "boot_id": clock.boot_id(),
    }


def new_manifest(target: dict[str, Any], options: dict[str, Any], interval_ns: int) -> dict[str, Any]:
    offset = clock.monotonic_to_wall_offset_ns()
    start = clock.now_ns()
    return {
        "format": schema.FORMAT_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "tool": {"name": "autoglm-trace", "version": __version__},
        "host": host_info(),
        "target": target,
        "clock": {"name": "CLOCK_MONOTONIC", "monotonic_to_wall_ns": offset},
        "start_ns": start,
        "start_time": wall_iso(start + offset),
        "end_ns": None,
        "end_time": None,
        "duration_s": None,
        "interval_ns": interval_ns,
        "options": options,
        "collectors": {},
        "notes": [],
        "complete": False,
        "stop_reason": None,
        "error": None,
        "tables": {},
        "recorder": {"pid": os.getpid()},
    }
