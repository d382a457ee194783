"""What is being traced: a process tree (``-p PID`` / ``-- CMD``), a cgroup, or the whole host.

The tree is kept as a set of tgids. The psutil sampler refreshes it from /proc each interval
(children started later join), and the BPF probes add forks in the kernel and report them, so a
child that lives for a millisecond is still attributed. ``ever`` keeps every pid that belonged to
the tree, so events that arrive after a process exited are still matched.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from autoglm_trace import procfs

HOST = "host"
TREE = "tree"
CGROUP = "cgroup"


@dataclass
class TargetTree:
    mode: str = TREE  # tree | cgroup | host
    root_pid: int | None = None
    cgroup_path: str | None = None  # absolute path under /sys/fs/cgroup for mode == cgroup
    _alive: set[int] = field(default_factory=set)
    ever: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_pid(cls, pid: int) -> TargetTree:
        t = cls(mode=TREE, root_pid=pid)
        t.add(pid)
        t.refresh()
        return t

    @classmethod
    def for_cgroup(cls, path: str) -> TargetTree:
        t = cls(mode=CGROUP, cgroup_path=path)
        t.refresh()
        return t

    @classmethod
    def for_host(cls) -> TargetTree:
        return cls(mode=HOST)

    # Membership --------------------------------------------------------------------------------
    def add(self, pid: int) -> None:
        with self._lock:
            self._alive.add(pid)
            self.ever.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._alive.discard(pid)

    def contains(self, pid: int) -> bool:
        if self.mode == HOST:
            return True
        with self._lock:
            return pid in self.ever

    def pids(self) -> list[int]:
        """Live tgids of the target (for host mode: empty, meaning 'everything')."""
        with self._lock:
            return sorted(self._alive)

    def refresh(self) -> list[int]:
        """Re-read the tree from /proc; returns pids that joined since the last refresh."""
        found: set[int] = set()
        if self.mode == TREE and self.root_pid is not None:
            try:
                root = psutil.Process(self.root_pid)
                found.add(root.pid)
                found.update(c.pid for c in root.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            # Orphans re-parented away from the root are kept while they live.
            with self._lock:
                known = set(self._alive)
            for pid in known - found:
                if psutil.pid_exists(pid):
                    found.add(pid)
        elif self.mode == CGROUP and self.cgroup_path:
            found.update(cgroup_pids(self.cgroup_path))
        with self._lock:
            new = found - self.ever
            self._alive = found
            self.ever |= found
        return sorted(new)

    @property
    def alive(self) -> bool:
        if self.mode == HOST:
            return True
        if self.mode == CGROUP:
            return bool(self.pids())
        with self._lock:
            return bool(self._alive)

    def describe(self) -> str:
        if self.mode == HOST:
            return "the whole host"
        if self.mode == CGROUP:
            return f"cgroup {self.cgroup_path}"
        return f"pid {self.root_pid} and its children"


def cgroup_pids(path: str) -> set[int]:
    """Tgids in a cgroup directory and its sub-cgroups (cgroup.procs, v1 or v2)."""
    pids: set[int] = set()
    for procs in Path(path).rglob("cgroup.procs"):
        try:
            pids.update(int(x) for x in procs.read_text().split())
        except (OSError, ValueError):
            continue
    return pids


def cgroup_id(path: str) -> int | None:
    """The kernel's cgroup id is the inode number of its directory (what bpf_get_current_cgroup_id
    returns for cgroup v2; kernel/cgroup/cgroup.c, cgroup_id() == kernfs node id)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def resolve_cgroup(arg: str) -> str:
    """Accept an absolute cgroupfs path or a path relative to /sys/fs/cgroup (v2 or v1 memory)."""
    root = procfs.sys_path("fs/cgroup")
    candidates = [Path(arg)] if arg.startswith("/") else []
    rel = arg.lstrip("/")
    candidates += [root / rel, root / "unified" / rel, root / "memory" / rel]
    for c in candidates:
        if (c / "cgroup.procs").exists():
            return str(c)
    raise FileNotFoundError(arg)
