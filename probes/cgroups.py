"""cgroup readers for the kernel probes: memcg numbers of an OOM victim, v2 ids of a cgroup tree.

Paths go through autoglm_trace.procfs (one overridable root). cgroup v1 memory files:
Documentation/admin-guide/cgroup-v1/memory.rst; v2: Documentation/admin-guide/cgroup-v2.rst.
"""

from __future__ import annotations

import os
from pathlib import Path

from autoglm_trace import procfs

_UNLIMITED = 1 << 62  # v1 reports PAGE_COUNTER_MAX * PAGE_SIZE (~ 2**63) when there is no limit


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    if raw == "max":
        return None
    try:
        v = int(raw)
    except ValueError:
        return None
    return None if v >= _UNLIMITED else v


def memcg_numbers(cg_path: str) -> tuple[int | None, int | None, int | None]:
    """(limit, usage, max usage) of the memory cgroup at ``cg_path`` (as /proc/PID/cgroup names it)."""
    root = procfs.sys_path("fs/cgroup")
    rel = cg_path.lstrip("/")
    v1 = root / "memory" / rel
    if (v1 / "memory.limit_in_bytes").exists():
        return (
            _read_int(v1 / "memory.limit_in_bytes"),
            _read_int(v1 / "memory.usage_in_bytes"),
            _read_int(v1 / "memory.max_usage_in_bytes"),
        )
    for base in (root, root / "unified"):
        d = base / rel
        if (d / "memory.current").exists():
            return _read_int(d / "memory.max"), _read_int(d / "memory.current"), _read_int(d / "memory.peak")
    return None, None, None


def cgroup2_ids(path: str) -> list[int]:
    """Inode numbers (== v2 cgroup ids) of a cgroup2 directory and its descendants; [] for v1."""
    if not os.path.isdir(path) or not _is_cgroup2(path):
        return []
    ids = []
    for dirpath, _dirs, _files in os.walk(path):
        try:
            ids.append(os.stat(dirpath).st_ino)
        except OSError:
            continue
    return ids


def _is_cgroup2(path: str) -> bool:
    best, fstype = "", ""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    for line in mounts:
        parts = line.split()
        under = len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"))
        if under and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype == "cgroup2"

