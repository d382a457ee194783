"""The text of the one bcc program: probe families (probes/bpf/*.c) and the generated prologue.

No root and no bcc needed here: ``record --print-bpf`` and the unit tests build the text as the
loader does. Tracepoint presence is read from tracefs (the same check bcc's
``BPF.tracepoint_exists`` makes), so nothing here loads LLVM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoglm_trace.probes import btf as btf_mod

BPF_DIR = Path(__file__).resolve().parent / "bpf"
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

DEFAULT_BUCKET_MS = 100
MAX_TARGETS = 16384
MAX_THREADS = 32768
MAX_AGG = 16384

FILTER_MODES = {"host": 0, "tree": 1, "cgroup": 2}


@dataclass(frozen=True)
class Family:
    name: str
    index: int  # FAM_* in common.h
    source: str
    required: tuple[tuple[str, str], ...]
    raw: bool = False  # needs raw tracepoints
    typed: bool = False  # its TP_BTF programs are tp_btf ones where the kernel can (common.h)
    # Extra tracepoints used when present: {macro: (category, event)}.
    optional: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    perf_buffers: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # families whose maps its C code uses


# Concatenation order matters: proc.c refers to maps of sched.c and memory.c when enabled, wakeups.c
# to sched.c's.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sched", 1, "sched.c",
            (("sched", "sched_switch"), ("sched", "sched_migrate_task")),
            raw=True, typed=True,
        ),
        Family(
            "wakeups", 6, "wakeups.c", (("sched", "sched_waking"),), raw=True, typed=True, needs=("sched",),
            optional={
                "HAVE_TP_SOFTIRQ": ("irq", "softirq_entry"),
                "HAVE_TP_IRQ_HANDLER": ("irq", "irq_handler_entry"),
                "HAVE_TP_HRTIMER_EXPIRE": ("timer", "hrtimer_expire_entry"),
            },
        ),
        Family("faults", 2, "faults.c", (("exceptions", "page_fault_user"),)),
        Family(
            "io", 3, "io.c", (("block", "block_rq_issue"), ("block", "block_rq_complete")),
            optional={
                "HAVE_TP_BLOCK_IO_START": ("block", "block_io_start"),
                "HAVE_TP_BLOCK_RQ_REQUEUE": ("block", "block_rq_requeue"),
            },
        ),
        Family(
            "memory", 4, "memory.c",
            (("vmscan", "mm_vmscan_direct_reclaim_begin"), ("vmscan", "mm_vmscan_direct_reclaim_end")),
            optional={
                "HAVE_TP_MEMCG_RECLAIM": ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
                "HAVE_TP_MEMCG_SOFTLIMIT_RECLAIM": ("vmscan", "mm_vmscan_memcg_softlimit_reclaim_begin"),
                "HAVE_TP_KSWAPD_WAKE": ("vmscan", "mm_vmscan_kswapd_wake"),
            },
            perf_buffers=("reclaim_events",),
        ),
        Family("oom", 5, "oom.c", (("oom", "mark_victim"),), perf_buffers=("oom_events",)),
        Family(
            "proc", 0, "proc.c",
            (("sched", "sched_process_fork"), ("sched", "sched_process_exec"),
             ("sched", "sched_process_exit")),
            raw=True, perf_buffers=("proc_events",),
        ),
    )
}
NR_FAMILIES = 7
NR_STATS = 3  # per family in the `stats` map: events, map_full, perf_full (common.h)
FAMILY_BY_INDEX = {f.index: f.name for f in FAMILIES.values()}


def tracefs() -> Path | None:
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    return None


def tracepoint_present(category: str, event: str) -> bool | None:
    """Whether tracefs lists the tracepoint; None when tracefs cannot be read (not root)."""
    tfs = tracefs()
    if tfs is None:
        return None
    return (tfs / "events" / category / event).is_dir()


def _exit_has_group_dead() -> bool:
    """sched_process_exit gained a `bool group_dead` argument in 6.16; tracefs shows it."""
    tfs = tracefs()
    if tfs is None:
        return False
    try:
        return "group_dead" in (tfs / "events/sched/sched_process_exit/format").read_text()
    except OSError:
        return False


def select_families(families: Iterable[str] | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    wanted = [f.strip() for f in families if f and f.strip()]
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    # Keep the concatenation order of FAMILIES.
    return [f for f in FAMILIES if f in wanted]


def missing_needs(name: str, families: Iterable[str]) -> list[str]:
    """The families ``name`` needs that are not among ``families``."""
    have = set(families)
    return [n for n in FAMILIES[name].needs if n not in have]


TYPED_MACRO = "HAVE_TASK_STORAGE"
_TP_BTF = re.compile(r"^TP_BTF\((\w+)\)", re.M)


def tp_btf_events(text: str) -> list[str]:
    """The tracepoints ``text`` handles with tp_btf programs (named ``tp_btf__<event>``): bcc compiles
    them but does not load them (probes/bpf_loader.py does)."""
    if f"#define {TYPED_MACRO} 1" not in text:
        return []
    return _TP_BTF.findall(text)


def generate_program(options: dict | None = None) -> str:
    """The complete C text of the bcc program for ``options`` (no root needed).

    Option keys: bucket_ms, families, filter ("tree" | "cgroup" | "host"), and for tests /
    callers that already probed the kernel: task_offsets ({OFF_TASK_*: int}), defines (extra
    macros, e.g. {"HAVE_TP_KSWAPD_WAKE": 1}), group_dead (bool), typed (bool: the tp_btf / task
    storage path of common.h; default: when the kernel's BTF says it can).
    """
    opts = dict(options or {})
    fams = select_families(opts.get("families"))
    fams = [f for f in fams if not missing_needs(f, fams)]  # its C code would not compile alone
    bucket_ns = int(float(opts.get("bucket_ms", DEFAULT_BUCKET_MS)) * 1_000_000)
    if bucket_ns <= 0:
        raise ValueError("bucket_ms must be positive")
    mode = opts.get("filter", "tree")
    if mode not in FILTER_MODES:
        raise ValueError(f"filter must be one of {', '.join(FILTER_MODES)}")
    offsets = opts.get("task_offsets")
    lines = [
        "/* autoglm-trace kernel probes: generated by autoglm_trace.probes.bpf_program.generate_program */",
        f"/* families: {', '.join(fams)} */",
        f"#define BUCKET_NS {bucket_ns}ULL",
        f"#define FILTER_MODE {FILTER_MODES[mode]}  /* {mode} */",
        f"#define MAX_TARGETS {int(opts.get('max_targets', MAX_TARGETS))}",
        f"#define MAX_THREADS {int(opts.get('max_threads', MAX_THREADS))}",
        f"#define MAX_AGG {int(opts.get('max_agg', MAX_AGG))}",
    ]
    if offsets is None:
        try:
            offsets = btf_mod.task_offsets()
        except btf_mod.BTFError as e:
            lines.append(f"#error task_struct offsets unknown: {e}")
            offsets = {}
    for macro, value in sorted(offsets.items()):
        lines.append(f"#define {macro} {int(value)}")
    for fam in fams:
        lines.append(f"#define HAVE_{fam.upper()} 1")
    defines = opts.get("defines")
    if defines is None:
        defines = {}
        for fam in fams:
            for macro, (cat, ev) in FAMILIES[fam].optional.items():
                # Unknown (not root): assume present; start() passes what it checked.
                if tracepoint_present(cat, ev) is not False:
                    defines[macro] = 1
    for macro, value in sorted(defines.items()):
        lines.append(f"#define {macro} {value}")
    typed = opts.get("typed")
    if typed is None:
        try:
            typed = btf_mod.typed_problem() is None
        except btf_mod.BTFError:
            typed = False
    if typed:
        lines.append(f"#define {TYPED_MACRO} 1")
    group_dead = opts.get("group_dead")
    if group_dead is None:
        group_dead = _exit_has_group_dead()
    if group_dead:
        lines.append("#define HAVE_EXIT_GROUP_DEAD 1")
    parts = ["\n".join(lines), (BPF_DIR / "common.h").read_text()]
    for fam in fams:
        parts.append((BPF_DIR / FAMILIES[fam].source).read_text())
    return "\n\n".join(parts)
