"""Host-mode process sampling: the biggest and the fastest-growing processes, once a second.

In host mode the /proc sampler records host counters but no process (there is no tree to follow),
so a flight-recorder snapshot of a host-wide OOM kill would show the kill but not the victim's
memory growth before it. This collector fills ``processes`` / ``proc_samples`` for a bounded set of
processes: each ``every_ms`` it reads every process's resident size from /proc/PID/statm (one small
read per process; fs/proc/array.c proc_pid_statm) and samples in full

* the ``top_n`` largest by RSS,
* any process whose RSS grew by at least ``grow_bytes_per_s`` since the previous scan (a leak or
  a runaway allocation is caught long before it is among the largest),
* every process selected in the last ``sticky_s`` seconds while it lives (continuous series).

Rows have exactly the /proc sampler's columns, so every reader treats them alike.
"""

from __future__ import annotations

import os
from typing import Any

from autoglm_trace import procfs
from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext
from autoglm_trace.probes.procsampler import identity_row, read_sample

DEFAULT_TOP_N = 16
DEFAULT_EVERY_MS = 1000
DEFAULT_GROW_BYTES_PER_S = 4 << 20
DEFAULT_STICKY_S = 60.0


def scan_rss() -> dict[int, int]:
    """Resident bytes of every process (kernel threads have none and are left out)."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir(procfs.PROC_ROOT)
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(procfs.PROC_ROOT, name, "statm"), "rb") as f:
                fields = f.read().split()
            rss = int(fields[1]) * procfs.PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
        if rss > 0:
            out[int(name)] = rss
    return out


def select_pids(rss: dict[int, int], prev: dict[int, int], dt_s: float, sticky: dict[int, int],
                now_ns: int, top_n: int, grow_bytes_per_s: float, sticky_ns: int) -> list[int]:
    """The pids to sample now; updates ``sticky`` (pid -> last time selected)."""
    chosen = set(sorted(rss, key=rss.__getitem__, reverse=True)[:top_n])
    if dt_s > 0:
        chosen.update(p for p, v in rss.items() if p in prev and (v - prev[p]) / dt_s >= grow_bytes_per_s)
    for p in chosen:
        sticky[p] = now_ns
    for p, t in list(sticky.items()):
        if p not in rss or now_ns - t > sticky_ns:
            del sticky[p]
    return sorted(set(sticky) & set(rss))


class TopRssSampler(Collector):
    name = "toprss"
    tables = ("processes", "proc_samples")

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        o = options or {}
        self.top_n = int(o.get("top_n", DEFAULT_TOP_N))
        self.every_ns = int(float(o.get("top_every_ms", DEFAULT_EVERY_MS)) * 1_000_000)
        self.grow = float(o.get("top_grow_bytes_per_s", DEFAULT_GROW_BYTES_PER_S))
        self.sticky_ns = int(float(o.get("top_sticky_s", DEFAULT_STICKY_S)) * 1e9)
        self._next_ns = 0
        self._prev: dict[int, int] = {}
        self._prev_ns = 0
        self._sticky: dict[int, int] = {}
        self._known: set[int] = set()
        self.samples = 0
        self.sampled_pids = 0

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        if not procfs.proc_path("self", "statm").exists():
            raise CollectorUnavailable(f"{procfs.PROC_ROOT} is not a procfs mount")

    def sample(self, now_ns: int) -> None:
        if now_ns < self._next_ns:
            return
        self._next_ns = now_ns + self.every_ns
        ctx = self.ctx
        assert ctx is not None
        rss = scan_rss()
        dt = (now_ns - self._prev_ns) / 1e9 if self._prev_ns else 0.0
        pids = select_pids(rss, self._prev, dt, self._sticky, now_ns, self.top_n, self.grow, self.sticky_ns)
        self._prev, self._prev_ns = rss, now_ns
        rows, new_procs = [], []
        uptime = None
        for pid in pids:
            try:
                row, st, status = read_sample(pid, now_ns)
            except procfs.ProcGone:
                continue
            rows.append(row)
            if pid not in self._known:
                self._known.add(pid)
                if uptime is None:
                    uptime = procfs.uptime_s()
                new_procs.append(identity_row(pid, st, status, now_ns, uptime, False))
        # A pid reused by a new process must get a new identity row: forget pids that are gone.
        self._known &= set(rss)
        ctx.emit("processes", new_procs)
        ctx.emit("proc_samples", rows)
        self.samples += 1
        self.sampled_pids = len(rows)

    def status(self) -> dict[str, Any]:
        return {"samples": self.samples, "pids": self.sampled_pids}

    def info(self) -> dict[str, Any]:
        return {"top_n": self.top_n, "every_ms": self.every_ns // 1_000_000,
                "grow_bytes_per_s": self.grow, "sticky_s": self.sticky_ns / 1e9}
