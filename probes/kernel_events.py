"""ctypes mirrors of the perf-buffer event structs in probes/bpf/*.c, and their decoders."""

from __future__ import annotations

import ctypes as ct


class ProcEvent(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64), ("nvcsw", ct.c_uint64), ("nivcsw", ct.c_uint64),
        ("min_flt", ct.c_uint64), ("maj_flt", ct.c_uint64), ("type", ct.c_uint32),
        ("pid", ct.c_uint32), ("tid", ct.c_uint32), ("ppid", ct.c_uint32),
        ("exit_code", ct.c_int32), ("pad", ct.c_uint32), ("comm", ct.c_char * 16),
    ]


class OomEvent(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64), ("total_vm_kb", ct.c_uint64), ("anon_rss_kb", ct.c_uint64),
        ("file_rss_kb", ct.c_uint64), ("shmem_rss_kb", ct.c_uint64), ("pid", ct.c_uint32),
        ("uid", ct.c_uint32), ("trigger_tgid", ct.c_uint32), ("in_target", ct.c_uint32),
        ("oom_score_adj", ct.c_int32), ("pad", ct.c_uint32), ("comm", ct.c_char * 16),
    ]


class ReclaimEvent(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64), ("duration_ns", ct.c_uint64), ("nr_reclaimed", ct.c_uint64),
        ("tgid", ct.c_uint32), ("tid", ct.c_uint32), ("kind", ct.c_uint32),
        ("in_target", ct.c_uint32), ("comm", ct.c_char * 16),
    ]


PROC_EVENT_NAMES = {1: "fork", 2: "exec", 3: "exit", 4: "thread_exit"}
RECLAIM_KINDS = {1: "direct", 2: "memcg", 3: "memcg_softlimit", 4: "kswapd_wake"}
# wakeups.c WCTX_* mask -> the context a wakeup came from; with several bits, the innermost (an
# hrtimer expires inside a hard interrupt, which can interrupt a softirq).
WAKE_CONTEXT_NAMES = {0: "task", 1: "hardirq", 2: "softirq", 3: "hardirq", 4: "hrtimer", 5: "hrtimer",
                      6: "hrtimer", 7: "hrtimer"}


def decode_exit_code(code: int) -> tuple[int | None, int | None]:
    """task->exit_code -> (exit status, terminating signal); include/linux/sched.h / wait(2)."""
    sig = code & 0x7F
    if sig:
        return None, sig
    return (code >> 8) & 0xFF, None


def comm_str(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def dev_name(dev: int) -> str:
    # Kernel-internal dev_t (include/linux/kdev_t.h): MINORBITS = 20.
    return f"{dev >> 20}:{dev & 0xFFFFF}"
