"""``autoglm-trace doctor``: can this machine record everything? A table with a fix per failure."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoglm_trace import procfs
from autoglm_trace.printable import printable
from autoglm_trace.probes import headers, kernel_features
from autoglm_trace.probes.nvml import nvml_check
from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "doctor"
SUMMARY = "check root, BPF, tracefs, tracepoints, bcc, kernel headers, NVML and cgroups; print fixes"
ORDER = 90

EPILOG = """examples:
  sudo autoglm-trace doctor
  autoglm-trace doctor --json

Exit status 0 when every required check passes (warnings allowed), 1 otherwise."""

OK, WARN, FAIL = "ok", "warn", "fail"

# tracepoint -> which probe family needs it
TRACEPOINTS = {
    "sched/sched_switch": "scheduler",
    "sched/sched_waking": "wakers",
    "sched/sched_migrate_task": "scheduler",
    "sched/sched_process_fork": "scheduler",
    "sched/sched_process_exec": "scheduler",
    "sched/sched_process_exit": "scheduler",
    "exceptions/page_fault_user": "page faults",
    "block/block_rq_issue": "block I/O",
    "block/block_rq_complete": "block I/O",
    "vmscan/mm_vmscan_direct_reclaim_begin": "reclaim",
    "vmscan/mm_vmscan_direct_reclaim_end": "reclaim",
    "vmscan/mm_vmscan_memcg_reclaim_begin": "reclaim (memcg)",
    "vmscan/mm_vmscan_memcg_reclaim_end": "reclaim (memcg)",
    "vmscan/mm_vmscan_wakeup_kswapd": "reclaim (kswapd)",
    "oom/mark_victim": "OOM killer",
}


def _tracefs() -> Path | None:
    for p in (procfs.sys_path("kernel/tracing"), procfs.sys_path("kernel/debug/tracing")):
        if (p / "available_events").exists() or (p / "events").is_dir():
            return p
    return None


def check_root() -> tuple[str, str, str]:
    if os.geteuid() == 0:
        return OK, "running as root", ""
    return WARN, f"running as uid {os.geteuid()}: kernel probes need root", "run with sudo (the /proc sampler works without it)"


def check_bpf_syscall() -> tuple[str, str, str]:
    unpriv = procfs.proc_path("sys/kernel/unprivileged_bpf_disabled")
    jit = procfs.proc_path("sys/net/core/bpf_jit_enable")
    parts = []
    if jit.exists():
        parts.append(f"bpf_jit_enable={jit.read_text().strip()}")
    if unpriv.exists():
        parts.append(f"unprivileged_bpf_disabled={unpriv.read_text().strip()}")
    if procfs.sys_path("kernel/btf/vmlinux").exists():
        parts.append("BTF: /sys/kernel/btf/vmlinux")
    if not procfs.sys_path("fs/bpf").exists() and not jit.exists():
        return FAIL, "no BPF support visible (/proc/sys/net/core/bpf_jit_enable, /sys/fs/bpf missing)", \
            "use a kernel built with CONFIG_BPF_SYSCALL=y"
    return OK, ", ".join(parts) or "BPF present", ""


def check_tracefs() -> tuple[str, str, str]:
    p = _tracefs()
    if p is None:
        return FAIL, "tracefs is not mounted", "sudo mount -t tracefs tracefs /sys/kernel/tracing (or run 'sudo make setup')"
    return OK, f"tracefs at {p}", ""


def check_tracepoints() -> list[tuple[str, str, str, str]]:
    p = _tracefs()
    out = []
    for tp, family in TRACEPOINTS.items():
        if p is None:
            out.append((f"tracepoint {tp}", FAIL, f"unknown (no tracefs); needed by {family}", "mount tracefs"))
            continue
        if (p / "events" / tp).is_dir():
            out.append((f"tracepoint {tp}", OK, f"present ({family})", ""))
        else:
            fix = "x86 only; page faults fall back to /proc counters" if "exceptions" in tp else \
                "the kernel lacks it; that probe is skipped and the manifest says so"
            out.append((f"tracepoint {tp}", WARN, f"missing: {family} probe degraded", fix))
    kprobes = p is not None and (p / "kprobe_events").exists()
    out.append(("kprobes", OK if kprobes else WARN,
                "available" if kprobes else "not available (CONFIG_KPROBES off): autoglm-trace uses tracepoints only",
                "" if kprobes else "nothing to do; bcc tools that need kprobes (offcputime, oomkill) will not work here"))
    return out


def check_headers() -> tuple[str, str, str]:
    h = headers.find()
    if h.how != "missing":
        return OK, f"{h.how}: {h.detail}", ""
    return FAIL, h.detail, (
        f"sudo make setup: unpacks the nearest Debian linux-headers-* into {headers.CACHE} with "
        "apt-get download + dpkg -x (no package installed, nothing under /lib/modules or /boot)")


def check_bcc() -> tuple[str, str, str]:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return FAIL, f"cannot import bcc ({e})", "apt install python3-bpfcc bpfcc-tools, and use a venv with --system-site-packages (make setup does both)"
    if os.geteuid() != 0:
        return WARN, "bcc imports; compile test needs root", "run doctor with sudo"
    try:
        from bcc import BPF

        headers.apply()
        b = BPF(text="int probe(void *ctx) { return 0; }", cflags=["-w"])
        b.load_func("probe", BPF.SOCKET_FILTER)
        b.cleanup()
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        return FAIL, f"bcc cannot compile/load a tiny program: {msg[-1] if msg else e}", "check kernel headers (above) and that BPF is enabled"
    raw = BPF.support_raw_tracepoint()
    return OK, f"bcc compiles and loads programs; raw tracepoints: {'yes' if raw else 'no'}", ""


def check_probe_families() -> list[tuple[str, str, str, str]]:
    fr: Callable[[], Any] = kernel_features.feature_report
    out = []
    try:
        for family, ok, reason in fr():
            out.append((f"probe {family}", OK if ok else WARN, reason or ("available" if ok else "unavailable"), ""))
    except Exception as e:  # noqa: BLE001
        out.append(("kernel probes", WARN, f"feature check failed: {e}", ""))
    return out


def check_nvml() -> tuple[str, str, str]:
    try:
        ok, detail = nvml_check()
    except Exception as e:  # noqa: BLE001
        return WARN, f"NVML check failed: {e}", ""
    return (OK, detail, "") if ok else (WARN, detail, "GPU tables will be absent; everything else records")


def check_cgroups() -> tuple[str, str, str]:
    root = procfs.sys_path("fs/cgroup")
    found = []
    if (root / "cgroup.controllers").exists():
        found.append("v2 (unified) at /sys/fs/cgroup")
    if (root / "unified" / "cgroup.controllers").exists():
        found.append("v2 at /sys/fs/cgroup/unified")
    if (root / "memory" / "memory.limit_in_bytes").exists():
        found.append("v1 memory at /sys/fs/cgroup/memory")
    if not found:
        return WARN, "no cgroup mount found", "--cgroup targets and memcg limits in OOM reports need cgroupfs"
    return OK, "; ".join(found), ""


def check_psi() -> tuple[str, str, str]:
    if procfs.read_pressure("cpu") is not None:
        return OK, "PSI at /proc/pressure", ""
    return WARN, "PSI not available", "boot with psi=1 (CONFIG_PSI) for host pressure columns"


def _guarded(name: str, fn: Callable[[], Any], many: bool = False) -> list[tuple[str, str, str, str]]:
    """One check's rows; a check that cannot even look (tracefs is root-only, a /sys file unreadable
    as this user) is a warning row saying so, never a traceback that hides every other check."""
    try:
        got = fn()
    except OSError as e:
        where = f" ({printable(e.filename)})" if e.filename else ""
        fix = "run as root (sudo)" if isinstance(e, PermissionError) else ""
        return [(name, WARN, f"cannot check: {e.strerror or e}{where}", fix)]
    return list(got) if many else [(name, *got)]


def run_checks() -> list[dict[str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, fn in (("root", check_root), ("BPF", check_bpf_syscall), ("tracefs", check_tracefs)):
        rows += _guarded(name, fn)
    rows += _guarded("tracepoints", check_tracepoints, many=True)
    rows += _guarded("kernel headers", check_headers)
    rows += _guarded("bcc", check_bcc)
    rows += _guarded("probe families", check_probe_families, many=True)
    rows += _guarded("NVML", check_nvml)
    rows += _guarded("cgroups", check_cgroups)
    rows += _guarded("PSI", check_psi)
    return [{"check": c, "status": s, "detail": d, "fix": f} for c, s, d, f in rows]


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run_checks()
    failed = any(r["status"] == FAIL for r in rows)
    if args.json:
        json.dump({"ok": not failed, "checks": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="autoglm-trace doctor", title_justify="left")
    t.add_column("check")
    t.add_column("status")
    t.add_column("detail")
    t.add_column("fix", style="cyan")
    style = {OK: "[green]ok[/]", WARN: "[yellow]warn[/]", FAIL: "[bold red]FAIL[/]"}
    for r in rows:
        t.add_row(r["check"], style[r["status"]], r["detail"], r["fix"])
    con = Console()
    con.print(t)
    con.print("[bold red]Some required checks failed.[/]" if failed else "[green]Ready to record.[/]")
    return 1 if failed else 0
