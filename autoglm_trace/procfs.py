"""Parsers for the /proc and /sys text the sampler reads, every path through one overridable root.

Tests point ``PROC_ROOT`` / ``SYS_ROOT`` (or the env vars ``AUTOGLM_TRACE_PROCFS`` /
``AUTOGLM_TRACE_SYSFS``) at a directory of canned kernel text. Each parser cites the kernel code
that prints the format it reads. Missing files (a process that exited, PSI disabled) raise
``ProcGone`` or return None, never a bare OSError: see ``translate_errors``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

PROC_ROOT = Path(os.environ.get("AUTOGLM_TRACE_PROCFS", "/proc"))
SYS_ROOT = Path(os.environ.get("AUTOGLM_TRACE_SYSFS", "/sys"))

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

F = TypeVar("F", bound=Callable[..., Any])


class ProcGone(Exception):
    """The process vanished (or its /proc entry is unreadable) while we read it."""


def translate_errors(fn: F) -> F:
    """Turn the OSErrors of reading /proc/PID/* into ProcGone (one place, as psutil does)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, ProcessLookupError, PermissionError) as e:
            raise ProcGone(str(e)) from None
        except OSError as e:  # ESRCH from a racing exit shows up as plain OSError on some files
            raise ProcGone(str(e)) from None

    return wrapper  # type: ignore[return-value]


def proc_path(*parts: object) -> Path:
    return PROC_ROOT.joinpath(*(str(p) for p in parts))


def sys_path(*parts: object) -> Path:
    return SYS_ROOT.joinpath(*(str(p) for p in parts))


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


# Per process ---------------------------------------------------------------------------------


@translate_errors
def read_pid_stat(pid: int) -> dict[str, Any]:
    """/proc/PID/stat (fs/proc/array.c do_task_stat). comm is in parentheses and may hold spaces
    or parentheses itself, so split at the *last* ')'."""
    text = _read(proc_path(pid, "stat"))
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1 : rpar]
    f = text[rpar + 2 :].split()
    # f[0] is field 3 (state); field n is f[n - 3].
    return {
        "pid": int(text[:lpar]),
        "comm": comm,
        "state": f[0],
        "ppid": int(f[1]),
        "minflt": int(f[7]),
        "majflt": int(f[9]),
        "utime_s": int(f[11]) / CLK_TCK,
        "stime_s": int(f[12]) / CLK_TCK,
        "num_threads": int(f[17]),
        "starttime_ticks": int(f[19]),
        "vsize": int(f[20]),
        "rss_pages": int(f[21]),
    }


@translate_errors
def read_pid_status(pid: int) -> dict[str, str]:
    """/proc/PID/status (fs/proc/array.c proc_pid_status): 'Key:\\tvalue' lines. The
    *_ctxt_switches lines sum over all threads of the group (task_struct nvcsw / nivcsw)."""
    out: dict[str, str] = {}
    for line in _read(proc_path(pid, "status")).splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


@translate_errors
def read_pid_statm(pid: int) -> tuple[int, int, int]:
    """/proc/PID/statm (fs/proc/array.c proc_pid_statm): size resident shared ... in pages."""
    f = _read(proc_path(pid, "statm")).split()
    return int(f[0]) * PAGE_SIZE, int(f[1]) * PAGE_SIZE, int(f[2]) * PAGE_SIZE


def read_pid_io(pid: int) -> tuple[int | None, int | None]:
    """/proc/PID/io (fs/proc/base.c do_io_accounting): read_bytes / write_bytes hit storage.
    Unreadable for other users' processes without root: (None, None)."""
    try:
        vals = dict(line.split(": ") for line in _read(proc_path(pid, "io")).splitlines() if ": " in line)
        return int(vals["read_bytes"]), int(vals["write_bytes"])
    except (OSError, KeyError, ValueError):
        return None, None


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(proc_path(pid, "fd")))
    except OSError:
        return None


def read_pid_cgroup(pid: int) -> str:
    """/proc/PID/cgroup (kernel/cgroup/cgroup.c proc_cgroup_show): 'id:controllers:path'. Prefer the
    v2 line (id 0), else the memory controller's v1 path."""
    try:
        lines = _read(proc_path(pid, "cgroup")).splitlines()
    except OSError:
        return ""
    v2 = mem = ""
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            mem = parts[2]
    return mem or v2


def read_cmdline(pid: int) -> str:
    try:
        return _read(proc_path(pid, "cmdline")).replace("\x00", " ").strip()
    except OSError:
        return ""


def int_or_none(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def uid_from_status(status: dict[str, str]) -> int | None:
    """Real uid from a parsed /proc/PID/status ('Uid:\treal effective saved fs')."""
    try:
        return int(status["Uid"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


def read_uid(pid: int) -> int | None:
    try:
        return int(read_pid_status(pid)["Uid"].split()[0])
    except (ProcGone, KeyError, ValueError, IndexError):
        return None


def boot_time_s() -> float:
    for line in _read(proc_path("stat")).splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def uptime_s() -> float:
    return float(_read(proc_path("uptime")).split()[0])


# Host ------------------------------------------------------------------------------------------


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo (fs/proc/meminfo.c): values in kB; returned in bytes."""
    out: dict[str, int] = {}
    for line in _read(proc_path("meminfo")).splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts:
            out[k] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def read_vmstat() -> dict[str, int]:
    """/proc/vmstat (mm/vmstat.c vmstat_start): 'name value' lines."""
    out: dict[str, int] = {}
    for line in _read(proc_path("vmstat")).splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def read_loadavg() -> tuple[float, float, float]:
    f = _read(proc_path("loadavg")).split()
    return float(f[0]), float(f[1]), float(f[2])


def read_stat_cpus() -> tuple[list[tuple[int, list[int]]], int | None]:
    """/proc/stat (fs/proc/stat.c show_stat): per-cpu jiffies and the ctxt total."""
    cpus: list[tuple[int, list[int]]] = []
    ctxt = None
    for line in _read(proc_path("stat")).splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            cpus.append((int(name[3:]), [int(v) for v in vals]))
        elif line.startswith("ctxt "):
            ctxt = int(line.split()[1])
    return cpus, ctxt


def read_pressure(resource: str) -> dict[str, int] | None:
    """/proc/pressure/<resource> (kernel/sched/psi.c psi_show): 'some|full ... total=US'. None when
    PSI is disabled (psi=0 on the command line, or CONFIG_PSI off)."""
    try:
        text = _read(proc_path("pressure", resource))
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for fld in fields:
            if fld.startswith("total="):
                out[kind] = int(fld[6:])
    return out
