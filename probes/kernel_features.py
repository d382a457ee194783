"""What the kernel probes can do on this host, and why not (``doctor``, and the collector's start).

Each family needs its tracepoints (read from tracefs) and, for the sched / proc families, raw
tracepoints; everything needs root, bcc (the compiler, run by the loader process), kernel headers
for bcc and BTF for task_struct offsets. Nothing here imports bcc: the recorder must not map LLVM.
"""

from __future__ import annotations

import importlib.util
import os
import re

from autoglm_trace.probes import btf as btf_mod
from autoglm_trace.probes import headers as headers_mod
from autoglm_trace.probes.bpf_program import FAMILIES, Family, tracefs, tracepoint_present


def bcc_present() -> bool:
    """Whether the loader process can import bcc (found, not imported: importing maps LLVM)."""
    try:
        return importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError):
        return False


def raw_tracepoints_supported() -> bool:
    """BPF_RAW_TRACEPOINT_OPEN arrived in 4.17 (kernel/bpf/syscall.c); bcc's own check greps
    kallsyms, which needs the same root we already require."""
    nums = [int(x) for x in re.findall(r"\d+", os.uname().release)[:2]] + [0, 0]
    return (nums[0], nums[1]) >= (4, 17)


def base_problem() -> str | None:
    """Why no probe can run here at all (None: the basics are in place)."""
    if os.geteuid() != 0:
        return "kernel probes need root: run 'sudo autoglm-trace record ...'"
    if not bcc_present():
        return "the bcc Python module is missing: install python3-bpfcc (or run 'sudo make setup')"
    if not headers_mod.present():
        return (
            f"{headers_mod.find().detail}: run 'sudo make setup' (unpacks the nearest headers into "
            f"{headers_mod.CACHE}; installs no package)"
        )
    if tracefs() is None:
        return "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"
    try:
        btf_mod.task_offsets()
    except btf_mod.BTFError as e:
        return f"{e}"
    return None


def family_problem(fam: Family) -> str | None:
    missing = [f"{cat}:{ev}" for cat, ev in fam.required if not tracepoint_present(cat, ev)]
    if missing:
        return f"tracepoint {', '.join(missing)} not in this kernel"
    if fam.raw and not raw_tracepoints_supported():
        return "raw tracepoints unsupported (kernel older than 4.17)"
    return None


def family_degraded(name: str) -> str | None:
    """What an available family will not record on this kernel (None: all of it)."""
    if name == "sched":
        try:
            offsets = btf_mod.task_offsets()
        except btf_mod.BTFError:
            return None  # base_problem() says it
        if "OFF_TASK_SI_RUN_DELAY" not in offsets:
            return ("no run-queue wait (task_struct has no sched_info: kernel built without "
                    "CONFIG_SCHED_INFO); off-CPU stretches count whole as sleep or preemption")
    return None


def typed_note() -> str | None:
    """Why the sched programs run on raw tracepoints with probe reads and a hash of thread states
    (dearer per switch) rather than the typed path (None: they take the typed path)."""
    try:
        problem = btf_mod.typed_problem()
    except btf_mod.BTFError:
        return None  # base_problem() says it
    return None if problem is None else f"raw tracepoints and a hash of thread states ({problem})"


def feature_report() -> list[tuple[str, bool, str]]:
    """(family, available, reason or fix) for ``doctor``."""
    base = base_problem()
    out = []
    for fam in FAMILIES.values():
        if base is not None:
            out.append((fam.name, False, base))
            continue
        problem = family_problem(fam)
        if problem:
            out.append((fam.name, False, problem))
        else:
            tps = ", ".join(f"{c}:{e}" for c, e in fam.required)
            degraded = family_degraded(fam.name)
            kind = ""
            if fam.raw:
                kind = "typed (tp_btf, task storage) " if fam.typed and not typed_note() else "raw "
            out.append((fam.name, True, f"{kind}tracepoints {tps}" + (f"; {degraded}" if degraded else "")))
    return out

