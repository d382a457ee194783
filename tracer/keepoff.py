"""The recorder keeps off the CPUs its target is pinned to.

A server pinned to CPU 0 (``taskset``, ``--cpuset-cpus``, a demo) shares that CPU with whatever else
runs there; the recorder must not be one of them, or every drain of its buffers becomes run-queue
wait "charged to autoglm-trace" in its own recording. When the target tree's CPUs (the union of
its processes' affinity masks) are a strict subset of the CPUs the recorder may use, every
recorder thread is moved to the others -- checked again every second, since a server may pin
itself after it starts. Nothing changes when the target may run anywhere, or when no CPU would be
left (the recorder then shares, as before). The target itself is never touched: it inherited its
mask at fork, before this runs.
"""

from __future__ import annotations

import os

from autoglm_trace import procfs


def target_cpus(pids: list[int], limit: int = 64) -> set[int] | None:
    cpus: set[int] = set()
    for pid in pids[:limit]:
        try:
            cpus |= os.sched_getaffinity(pid)
        except OSError:
            continue
    return cpus or None


class KeepOff:
    def __init__(self) -> None:
        self.allowed = os.sched_getaffinity(0)  # what the recorder was started with
        self.current: set[int] = set(self.allowed)

    def check(self, pids: list[int]) -> set[int] | None:
        """Move the recorder's threads off the target's CPUs (or back, when the target spreads out);
        returns the recorder's CPUs when they differ from the target's, None when it shares them."""
        theirs = target_cpus(pids)
        free = self.allowed - theirs if theirs is not None else set()
        want = free if free and theirs is not None and (theirs & self.allowed) else set(self.allowed)
        if want != self.current:
            self._apply(want)
        return want if want != self.allowed else None

    def _apply(self, cpus: set[int]) -> None:
        try:
            tids = [int(t) for t in os.listdir(procfs.proc_path(os.getpid(), "task"))]
        except OSError:
            tids = [0]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                continue
        self.current = set(cpus)
