"""The /proc sampler: per-process and host counters, no root needed.

Raw counters only (cumulative CPU seconds, context switches, faults, I/O bytes): rates are the
reader's business. Every file goes through ``autoglm_trace.procfs`` so tests can feed canned kernel text.
psutil enumerates the tree (``TargetTree.refresh``); the counters themselves come straight from
/proc, which is what psutil reads too, minus its per-call object overhead.
"""

from __future__ import annotations

import time
from typing import Any

from autoglm_trace import procfs
from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext
from autoglm_trace.probes.growth import GrowthEstimator
from autoglm_trace.target import HOST


def _mono_from_starttime(starttime_ticks: int, uptime_now: float, mono_now_ns: int) -> int:
    """Process start on the monotonic clock. starttime is in ticks since boot (CLOCK_BOOTTIME, which
    also counts suspend); close enough to CLOCK_MONOTONIC on a server that has not suspended."""
    age_s = uptime_now - starttime_ticks / procfs.CLK_TCK
    return mono_now_ns - int(age_s * 1e9)


def read_sample(pid: int, now_ns: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """One ``proc_samples`` row for ``pid`` (plus the parsed stat and status it came from).
    Raises ProcGone when the process vanished mid-read."""
    st = procfs.read_pid_stat(pid)
    status = procfs.read_pid_status(pid)
    _, _, shared = procfs.read_pid_statm(pid)
    rd, wr = procfs.read_pid_io(pid)
    row = {
        "ts_ns": now_ns,
        "pid": pid,
        "cpu_user_s": st["utime_s"],
        "cpu_system_s": st["stime_s"],
        "rss_bytes": st["rss_pages"] * procfs.PAGE_SIZE,
        "vms_bytes": st["vsize"],
        "shared_bytes": shared,
        "num_threads": st["num_threads"],
        "ctx_voluntary": procfs.int_or_none(status.get("voluntary_ctxt_switches")),
        "ctx_involuntary": procfs.int_or_none(status.get("nonvoluntary_ctxt_switches")),
        "minflt": st["minflt"],
        "majflt": st["majflt"],
        "io_read_bytes": rd,
        "io_write_bytes": wr,
        "num_fds": procfs.count_fds(pid),
        "state": st["state"],
    }
    return row, st, status


def identity_row(pid: int, st: dict[str, Any], status: dict[str, str], now_ns: int, uptime: float,
                 is_root: bool) -> dict[str, Any]:
    """The ``processes`` row written when a process is first seen."""
    return {
        "ts_ns": now_ns,
        "pid": pid,
        "ppid": st["ppid"],
        "comm": st["comm"],
        "cmdline": procfs.read_cmdline(pid),
        "uid": procfs.uid_from_status(status),
        "cgroup": procfs.read_pid_cgroup(pid),
        "start_time_ns": _mono_from_starttime(st["starttime_ticks"], uptime, now_ns),
        "is_root": is_root,
    }


class ProcSampler(Collector):
    name = "proc"
    tables = ("processes", "proc_samples", "host_samples", "host_cpu")

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        opts = options or {}
        self.host_every = max(1, int(opts.get("host_every", 1)))
        self._known: set[int] = set()
        self._ticks = 0
        self.samples = 0
        self.last: dict[int, dict[str, Any]] = {}  # pid -> last row, for the live status
        self._psi_ok = True
        # Time-to-full of the tree's RSS against its memcg limit (or what the host has left).
        self.growth = GrowthEstimator(kind="memory_growth", what="RSS")
        self.growth_every = max(1, int(opts.get("growth_every", 5)))
        self.last_alert: dict[str, Any] | None = None
        self._limit_cache: tuple[float, float | None] = (0.0, None)

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        if not procfs.proc_path("self", "stat").exists() and not procfs.proc_path("stat").exists():
            raise CollectorUnavailable(f"{procfs.PROC_ROOT} is not a procfs mount")
        if procfs.read_pressure("cpu") is None:
            self._psi_ok = False
            ctx.note("PSI (/proc/pressure) is not available on this kernel: host pressure columns stay empty")

    # ------------------------------------------------------------------------------------------
    def sample(self, now_ns: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        target = ctx.target
        if target.mode == HOST:
            pids: list[int] = []
        else:
            target.refresh()
            pids = target.pids()
        rows = []
        new_procs = []
        uptime = None
        for pid in pids:
            try:
                row, st, status = read_sample(pid, now_ns)
            except procfs.ProcGone:
                target.discard(pid)
                continue
            rows.append(row)
            self.last[pid] = row
            if pid not in self._known:
                self._known.add(pid)
                if uptime is None:
                    uptime = procfs.uptime_s()
                new_procs.append(identity_row(pid, st, status, now_ns, uptime, pid == target.root_pid))
        # Drop live-status rows of processes that left.
        for pid in list(self.last):
            if pid not in pids:
                del self.last[pid]
        ctx.emit("processes", new_procs)
        ctx.emit("proc_samples", rows)
        if self._ticks % self.host_every == 0:
            self._sample_host(now_ns)
        if rows and self._ticks % self.growth_every == 0:
            self._watch_growth(now_ns, sum(r["rss_bytes"] or 0 for r in rows))
        self._ticks += 1
        self.samples += 1

    def _sample_host(self, now_ns: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        try:
            mem = procfs.read_meminfo()
            vm = procfs.read_vmstat()
            load = procfs.read_loadavg()
            cpus, ctxt = procfs.read_stat_cpus()
        except OSError as e:
            ctx.note(f"host counters unreadable: {e}")
            return
        psi: dict[str, dict[str, int] | None] = {}
        if self._psi_ok:
            for res in ("cpu", "memory", "io"):
                psi[res] = procfs.read_pressure(res)
        ctx.emit(
            "host_samples",
            [
                {
                    "ts_ns": now_ns,
                    "mem_total_bytes": mem.get("MemTotal"),
                    "mem_available_bytes": mem.get("MemAvailable"),
                    "mem_free_bytes": mem.get("MemFree"),
                    "mem_cached_bytes": mem.get("Cached", 0) + mem.get("Buffers", 0),
                    "swap_total_bytes": mem.get("SwapTotal"),
                    "swap_free_bytes": mem.get("SwapFree"),
                    "load1": load[0],
                    "load5": load[1],
                    "load15": load[2],
                    "psi_cpu_some_us": (psi.get("cpu") or {}).get("some"),
                    "psi_mem_some_us": (psi.get("memory") or {}).get("some"),
                    "psi_mem_full_us": (psi.get("memory") or {}).get("full"),
                    "psi_io_some_us": (psi.get("io") or {}).get("some"),
                    "psi_io_full_us": (psi.get("io") or {}).get("full"),
                    "pgmajfault": vm.get("pgmajfault"),
                    "pgscan_direct": vm.get("pgscan_direct"),
                    "allocstall": sum(v for k, v in vm.items() if k.startswith("allocstall")),
                    "ctxt": ctxt,
                }
            ],
        )
        tck = float(procfs.CLK_TCK)
        cols: dict[str, list[Any]] = {k: [] for k in ("ts_ns", "cpu", "user_s", "system_s", "idle_s", "iowait_s", "irq_s", "steal_s")}
        for cpu, v in cpus:
            v = v + [0] * (8 - len(v))
            cols["ts_ns"].append(now_ns)
            cols["cpu"].append(cpu)
            cols["user_s"].append((v[0] + v[1]) / tck)
            cols["system_s"].append(v[2] / tck)
            cols["idle_s"].append(v[3] / tck)
            cols["iowait_s"].append(v[4] / tck)
            cols["irq_s"].append((v[5] + v[6]) / tck)
            cols["steal_s"].append(v[7] / tck)
        if cols["ts_ns"]:
            ctx.emit_columns("host_cpu", cols)

    def _memory_limit(self, now_ns: int, rss: float) -> float | None:
        """The tree's memcg limit (re-read every 10 s), else RSS plus what the host has available."""
        ctx = self.ctx
        assert ctx is not None
        if now_ns - self._limit_cache[0] > 10e9:
            limit = None
            root = ctx.target.root_pid
            if root is not None:
                limit = memcg_limit_bytes(procfs.read_pid_cgroup(root))
            self._limit_cache = (now_ns, limit)
        limit = self._limit_cache[1]
        if limit is not None:
            return limit
        try:
            return rss + procfs.read_meminfo().get("MemAvailable", 0)
        except OSError:
            return None

    def _watch_growth(self, now_ns: int, rss: float) -> None:
        ctx = self.ctx
        assert ctx is not None
        root = ctx.target.root_pid
        subject = f"pid {root} tree" if root is not None else "target"
        alert = self.growth.observe(subject, now_ns, rss, self._memory_limit(now_ns, rss))
        if alert is not None:
            self.last_alert = alert
            ctx.emit("alerts", [alert])

    def status(self) -> dict[str, Any]:
        rss = sum(r["rss_bytes"] or 0 for r in self.last.values())
        cpu = sum((r["cpu_user_s"] or 0) + (r["cpu_system_s"] or 0) for r in self.last.values())
        out: dict[str, Any] = {"procs": len(self.last), "rss_bytes": rss, "cpu_s": cpu}
        if self.last_alert is not None:
            out["alert"] = self.last_alert["message"]
        return out


# A v1 memcg without a limit reports PAGE_COUNTER_MAX rounded to pages (~2^63); v2 says "max".
_NO_LIMIT = 1 << 60


def memcg_limit_bytes(cgroup_path: str) -> float | None:
    """Memory limit of a cgroup (v1 memory.limit_in_bytes or v2 memory.max); None when unlimited."""
    if not cgroup_path:
        return None
    rel = cgroup_path.lstrip("/")
    for f in (procfs.sys_path("fs/cgroup/memory", rel, "memory.limit_in_bytes"),
              procfs.sys_path("fs/cgroup", rel, "memory.max"),
              procfs.sys_path("fs/cgroup/unified", rel, "memory.max")):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            v = int(text)
        except ValueError:
            continue
        return None if v >= _NO_LIMIT else float(v)
    return None


def wait_for(predicate: Any, timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())
