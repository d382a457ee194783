"""The bcc kernel probes: one BPF program built from the families in probes/bpf/*.c.

``KernelProbes`` is the collector ``record`` attaches when it runs as root. Everything high-rate
(scheduler switches, page faults, block I/O) is aggregated in the kernel per thread / issuer per
time bucket; user space drains finished buckets every interval with batched map operations and
numpy, so the Python cost scales with (threads x buckets), never with events. Rare events
(process lifecycle, OOM kills, reclaim stalls) come through perf buffers, whose lost-sample
counts -- and every refused map update -- are stored in ``probe_stats`` each interval.

Filtering happens in the kernel: a hash of target tgids seeded from user space and extended at
fork (proc.c), plus cgroup v2 ids in cgroup mode. See docs/format-kernel.md for the tables.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from autoglm_trace.probes import btf as btf_mod
from autoglm_trace.probes import headers as headers_mod
from autoglm_trace.tracer import procfs, schema
from autoglm_trace.tracer.collector import Collector, CollectorUnavailable, SessionContext

BPF_DIR = Path(__file__).resolve().parent / "bpf"
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

DEFAULT_BUCKET_MS = 100
DEFAULT_PERF_PAGES = 64
MAX_TARGETS = 16384
MAX_THREADS = 32768
MAX_AGG = 16384
# Per-bucket block-I/O rows kept for issuers outside the target (the top ones by bytes).
TOP_OTHER_IO_ISSUERS = 10
# Buckets are drained once they ended this long ago, so updates racing the bucket edge land.
DRAIN_GRACE_NS = 5_000_000
CGROUP_CACHE_REFRESH_NS = 1_000_000_000

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS_MAJ = 6

FILTER_MODES = {"host": 0, "tree": 1, "cgroup": 2}


@dataclass(frozen=True)
class Family:
    name: str
    index: int  # FAM_* in common.h
    source: str
    required: tuple[tuple[str, str], ...]
    raw: bool = False  # needs raw tracepoints
    # Extra tracepoints used when present: {macro: (category, event)}.
    optional: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    perf_buffers: tuple[str, ...] = ()


# Concatenation order matters: proc.c refers to maps of sched.c and memory.c when enabled.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sched", 1, "sched.c",
            (("sched", "sched_switch"), ("sched", "sched_wakeup"), ("sched", "sched_wakeup_new"),
             ("sched", "sched_migrate_task")),
            raw=True,
        ),
        Family("faults", 2, "faults.c", (("exceptions", "page_fault_user"),)),
        Family("io", 3, "io.c", (("block", "block_rq_issue"), ("block", "block_rq_complete"))),
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
NR_FAMILIES = 6
NR_STATS = 3  # per family in the `stats` map: events, map_full, perf_full (common.h)
FAMILY_BY_INDEX = {f.index: f.name for f in FAMILIES.values()}


# ---------------------------------------------------------------------------------------------
# Program text
# ---------------------------------------------------------------------------------------------
def _tracefs() -> Path | None:
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    return None


def tracepoint_present(category: str, event: str) -> bool | None:
    """Whether tracefs lists the tracepoint; None when tracefs cannot be read (not root)."""
    tfs = _tracefs()
    if tfs is None:
        return None
    return (tfs / "events" / category / event).is_dir()


def _exit_has_group_dead() -> bool:
    """sched_process_exit gained a `bool group_dead` argument in 6.16; tracefs shows it."""
    tfs = _tracefs()
    if tfs is None:
        return False
    try:
        return "group_dead" in (tfs / "events/sched/sched_process_exit/format").read_text()
    except OSError:
        return False


def _select_families(families: Iterable[str] | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    wanted = [f.strip() for f in families if f and f.strip()]
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    # Keep the concatenation order of FAMILIES.
    return [f for f in FAMILIES if f in wanted]


def generate_program(options: dict | None = None) -> str:
    """The complete C text of the bcc program for ``options`` (no root needed).

    Option keys: bucket_ms, families, filter ("tree" | "cgroup" | "host"), and for tests /
    callers that already probed the kernel: task_offsets ({OFF_TASK_*: int}), defines (extra
    macros, e.g. {"HAVE_TP_KSWAPD_WAKE": 1}), group_dead (bool).
    """
    opts = dict(options or {})
    fams = _select_families(opts.get("families"))
    bucket_ns = int(float(opts.get("bucket_ms", DEFAULT_BUCKET_MS)) * 1_000_000)
    if bucket_ns <= 0:
        raise ValueError("bucket_ms must be positive")
    mode = opts.get("filter", "tree")
    if mode not in FILTER_MODES:
        raise ValueError(f"filter must be one of {', '.join(FILTER_MODES)}")
    offsets = opts.get("task_offsets")
    lines = [
        "/* autoglm-trace kernel probes: generated by autoglm_trace.probes.kernel.generate_program */",
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
    group_dead = opts.get("group_dead")
    if group_dead is None:
        group_dead = _exit_has_group_dead()
    if group_dead:
        lines.append("#define HAVE_EXIT_GROUP_DEAD 1")
    parts = ["\n".join(lines), (BPF_DIR / "common.h").read_text()]
    for fam in fams:
        parts.append((BPF_DIR / FAMILIES[fam].source).read_text())
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Capability checks (doctor, start)
# ---------------------------------------------------------------------------------------------
def _import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - optional system package

        return bcc
    except ImportError:
        return None


def _headers_present() -> bool:
    return headers_mod.present()


def _base_problem() -> str | None:
    """Why no probe can run here at all (None: the basics are in place)."""
    if os.geteuid() != 0:
        return "kernel probes need root: run 'sudo autoglm-trace record ...'"
    if _import_bcc() is None:
        return "the bcc Python module is missing: install python3-bpfcc (or run 'sudo make setup')"
    if not _headers_present():
        return (
            f"{headers_mod.find().detail}: run 'sudo make setup' (unpacks the nearest headers into "
            f"{headers_mod.CACHE}; installs no package)"
        )
    if _tracefs() is None:
        return "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing"
    try:
        btf_mod.task_offsets()
    except btf_mod.BTFError as e:
        return f"{e}"
    return None


def _family_problem(fam: Family, bcc: Any) -> str | None:
    missing = []
    for cat, ev in fam.required:
        exists = bcc.BPF.tracepoint_exists(cat, ev) if bcc is not None else tracepoint_present(cat, ev)
        if not exists:
            missing.append(f"{cat}:{ev}")
    if missing:
        return f"tracepoint {', '.join(missing)} not in this kernel"
    if fam.raw and bcc is not None and not bcc.BPF.support_raw_tracepoint():
        return "raw tracepoints unsupported (kernel older than 4.17)"
    return None


def feature_report() -> list[tuple[str, bool, str]]:
    """(family, available, reason or fix) for ``doctor``."""
    base = _base_problem()
    bcc = _import_bcc()
    out = []
    for fam in FAMILIES.values():
        if base is not None:
            out.append((fam.name, False, base))
            continue
        problem = _family_problem(fam, bcc)
        if problem:
            out.append((fam.name, False, problem))
        else:
            tps = ", ".join(f"{c}:{e}" for c, e in fam.required)
            out.append((fam.name, True, f"{'raw ' if fam.raw else ''}tracepoints {tps}"))
    return out


# ---------------------------------------------------------------------------------------------
# Perf-buffer event layouts (mirror the structs in probes/bpf/*.c)
# ---------------------------------------------------------------------------------------------
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


def decode_exit_code(code: int) -> tuple[int | None, int | None]:
    """task->exit_code -> (exit status, terminating signal); include/linux/sched.h / wait(2)."""
    sig = code & 0x7F
    if sig:
        return None, sig
    return (code >> 8) & 0xFF, None


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _dev_name(dev: int) -> str:
    # Kernel-internal dev_t (include/linux/kdev_t.h): MINORBITS = 20.
    return f"{dev >> 20}:{dev & 0xFFFFF}"


# ---------------------------------------------------------------------------------------------
# memcg numbers for OOM events
# ---------------------------------------------------------------------------------------------
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


def _cgroup2_ids(path: str) -> list[int]:
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


# ---------------------------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------------------------
def ctypes_dtype(cls: type) -> np.dtype:
    """numpy dtype with the exact layout of a ctypes Structure (bcc's map Key / Leaf classes);
    numpy's own conversion guesses when the PEP 3118 format and the size disagree."""
    names, formats, offsets = [], [], []
    for fname, ftype, *_ in cls._fields_:
        if fname.startswith("__pad"):
            continue
        desc = getattr(cls, fname)
        if issubclass(ftype, ct.Array):
            base = ftype._type_
            fmt: Any = f"S{ftype._length_}" if base in (ct.c_char, ct.c_byte, ct.c_ubyte) and \
                fname == "comm" else (np.dtype(base), (ftype._length_,))
        elif issubclass(ftype, ct.Structure):
            fmt = ctypes_dtype(ftype)
        else:
            fmt = np.dtype(ftype)
        names.append(fname)
        formats.append(fmt)
        offsets.append(desc.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(cls)})


class _MapDrainer:
    """Reads a BPF hash map with BPF_MAP_LOOKUP_BATCH into preallocated arrays, viewed as numpy
    structured arrays, and deletes the selected keys with BPF_MAP_DELETE_BATCH."""

    def __init__(self, table: Any, lib: Any) -> None:
        self.table = table
        self.lib = lib
        self.n = table.max_entries
        self.keys = (table.Key * self.n)()
        self.vals = (table.Leaf * self.n)()
        self.key_dtype = ctypes_dtype(table.Key)
        self.val_dtype = ctypes_dtype(table.Leaf)
        self.batch_ok = True

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        total = self._read_batch() if self.batch_ok else None
        if total is None:
            self.batch_ok = False
            items = list(self.table.items())
            total = len(items)
            for i, (k, v) in enumerate(items[: self.n]):
                self.keys[i] = k
                self.vals[i] = v
        k = np.frombuffer(ct.string_at(self.keys, total * self.key_dtype.itemsize), self.key_dtype)
        v = np.frombuffer(ct.string_at(self.vals, total * self.val_dtype.itemsize), self.val_dtype)
        return k, v

    def _read_batch(self) -> int | None:
        ksz, vsz = ct.sizeof(self.table.Key), ct.sizeof(self.table.Leaf)
        in_b, out_b, cnt = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
        total, first = 0, True
        while total < self.n:
            cnt.value = self.n - total
            res = self.lib.bpf_lookup_batch(
                self.table.map_fd,
                None if first else ct.byref(in_b),
                ct.byref(out_b),
                ct.byref(self.keys, ksz * total),
                ct.byref(self.vals, vsz * total),
                ct.byref(cnt),
            )
            err = ct.get_errno()
            total += cnt.value
            if res != 0:
                if err == errno.ENOENT:
                    break
                return None if first else total
            in_b.value = out_b.value
            first = False
            if cnt.value == 0:
                break
        return total

    def delete(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        keys = np.ascontiguousarray(keys)
        if self.batch_ok:
            cnt = ct.c_uint32(len(keys))
            if self.lib.bpf_delete_batch(self.table.map_fd, keys.ctypes.data, ct.byref(cnt)) == 0:
                return
        raw = keys.tobytes()
        size = ct.sizeof(self.table.Key)
        for i in range(len(keys)):
            k = self.table.Key.from_buffer_copy(raw[i * size : (i + 1) * size])
            try:
                del self.table[k]
            except KeyError:
                pass


class KernelProbes(Collector):
    """bcc probes for the target: sched, faults, io, memory, oom, proc (see module docstring)."""

    name = "kernel"
    tables = ("sched", "preemptions", "faults", "block_io", "reclaim", "oom_kills", "proc_events",
              "probe_stats")

    def __init__(self, options: dict | None = None) -> None:
        super().__init__()
        self.options = dict(options or {})
        self.bucket_ns = int(float(self.options.get("bucket_ms", DEFAULT_BUCKET_MS)) * 1_000_000)
        pages = int(self.options.get("perf_pages", DEFAULT_PERF_PAGES))
        if pages < 1 or pages & (pages - 1):
            raise ValueError("perf_pages must be a power of two >= 1")
        self.perf_pages = pages
        self.requested = _select_families(self.options.get("families"))
        self.enabled: list[str] = []
        self.skipped: dict[str, str] = {}
        self.bpf: Any = None
        self.filter_mode = "tree"
        self.major_faults = False
        self._drainers: dict[str, _MapDrainer] = {}
        self._pushed: set[int] = set()
        self._cg_cache: dict[int, str] = {}
        self._cg_refreshed_ns = 0
        self._perf_lost = dict.fromkeys(FAMILIES, 0)  # PERF_RECORD_LOST, for info()
        self._user_drops = dict.fromkeys(FAMILIES, 0)
        self._stats_prev = np.zeros(NR_FAMILIES * NR_STATS, dtype=np.int64)
        self._events_total = 0
        self._lost_total = 0
        self._proc_rows: list[dict[str, Any]] = []
        self._oom_rows: list[dict[str, Any]] = []
        self._reclaim_rows: list[dict[str, Any]] = []
        self._stopped = False

    # Start ------------------------------------------------------------------------------------
    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        base = _base_problem()
        if base:
            raise CollectorUnavailable(base)
        bcc = _import_bcc()
        self.filter_mode = getattr(ctx.target, "mode", "tree") or "tree"
        if self.filter_mode not in FILTER_MODES:
            self.filter_mode = "tree"
        for name in self.requested:
            problem = _family_problem(FAMILIES[name], bcc)
            if problem:
                self.skipped[name] = problem
                ctx.note(f"kernel probe '{name}' skipped: {problem}")
            else:
                self.enabled.append(name)
        if not self.enabled:
            raise CollectorUnavailable(
                "no kernel probe family can run here: "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            )
        if "proc" not in self.enabled and self.filter_mode != "host":
            ctx.note("kernel probes: fork tracking unavailable; children join the filter only when "
                     "user space sees them")
        defines: dict[str, int] = {}
        for name in self.enabled:
            for macro, (cat, ev) in FAMILIES[name].optional.items():
                if bcc.BPF.tracepoint_exists(cat, ev):
                    defines[macro] = 1
        text = generate_program({
            "bucket_ms": self.bucket_ns / 1e6,
            "families": self.enabled,
            "filter": self.filter_mode,
            "defines": defines,
        })
        self.program_text = text
        try:
            # -w: the (nearest-version) kernel headers bcc includes produce warnings that say
            # nothing about this program.
            headers_mod.apply()
            self.bpf = bcc.BPF(text=text.encode(), cflags=["-w"])
        except Exception as e:  # bcc raises bare Exception on compile / load failures
            raise CollectorUnavailable(
                f"the BPF program did not compile or load ({str(e).strip().splitlines()[-1]}); "
                "print it with 'record --print-bpf' and check the kernel headers ('sudo make setup')"
            ) from None
        _release_compiler_heap()
        try:
            self._attach_extra(ctx)
            self._seed_filter(ctx)
            self._open_buffers()
            self._drainers = {
                m: _MapDrainer(self.bpf[m.encode()], bcc.libbcc.lib)
                for m, fam in (("sched_agg", "sched"), ("preempt_agg", "sched"), ("fault_agg", "faults"),
                               ("io_agg", "io"))
                if fam in self.enabled
            }
            self._stats_prev = self._read_stats()
        except Exception:
            self.bpf.cleanup()
            self.bpf = None
            raise

    def _attach_extra(self, ctx: SessionContext) -> None:
        if "faults" not in self.enabled:
            return
        try:
            self.bpf.attach_perf_event(
                ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_PAGE_FAULTS_MAJ,
                fn_name=b"on_major_fault", sample_period=1,
            )
            self.major_faults = True
        except Exception as e:
            ctx.note(f"kernel probes: major faults not counted (perf software event: {e})")

    def _seed_filter(self, ctx: SessionContext) -> None:
        if self.filter_mode == "host":
            return
        if self.filter_mode == "cgroup" and ctx.target.cgroup_path:
            table = self.bpf[b"target_cgroups"]
            for cg in _cgroup2_ids(ctx.target.cgroup_path)[: 1024]:
                table[ct.c_uint64(cg)] = ct.c_uint8(1)
        self._push_pids(ctx.target.pids())

    def _push_pids(self, pids: Iterable[int]) -> None:
        new = [p for p in pids if p not in self._pushed]
        if not new:
            return
        table = self.bpf[b"target_tgids"]
        for pid in new:
            try:
                table[ct.c_uint32(pid)] = ct.c_uint8(1)
            except Exception:
                self._user_drops["proc"] += 1  # filter map full: counted as loss
                continue
            self._pushed.add(pid)
            self._cache_cgroup(pid)

    def _open_buffers(self) -> None:
        handlers = {"proc_events": ("proc", self._on_proc), "oom_events": ("oom", self._on_oom),
                    "reclaim_events": ("memory", self._on_reclaim)}
        for buf, (fam, fn) in handlers.items():
            if fam not in self.enabled:
                continue

            def lost(n: int, fam: str = fam) -> None:
                self._perf_lost[fam] += n

            self.bpf[buf.encode()].open_perf_buffer(fn, page_cnt=self.perf_pages, lost_cb=lost)

    # Perf-buffer callbacks (rare events only) -------------------------------------------------
    def _on_proc(self, _cpu: int, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(ProcEvent)).contents
        event = PROC_EVENT_NAMES.get(e.type, "other")
        row: dict[str, Any] = {
            "ts_ns": e.ts, "event": event, "pid": e.pid, "tid": e.tid, "ppid": e.ppid or None,
            "comm": _comm(e.comm), "source": "bpf",
        }
        if event in ("exit", "thread_exit"):
            row["exit_code"], row["signal"] = decode_exit_code(e.exit_code)
            row.update(nvcsw=e.nvcsw, nivcsw=e.nivcsw, minflt=e.min_flt, majflt=e.maj_flt)
            if event == "exit" and self.ctx is not None and self.filter_mode != "host":
                self.ctx.target.discard(e.pid)
                self._pushed.discard(e.pid)
        elif self.ctx is not None and self.filter_mode != "host":
            if event == "fork":
                self.ctx.target.add(e.pid)
                self._pushed.add(e.pid)
            self._cache_cgroup(e.pid)
        self._proc_rows.append(row)

    def _on_oom(self, _cpu: int, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(OomEvent)).contents
        memcg = self._memcg_of(e.pid) or (self._memcg_of(e.trigger_tgid) if e.trigger_tgid else "")
        limit, usage, max_usage = memcg_numbers(memcg) if memcg else (None, None, None)
        in_target = bool(e.in_target) or (self.ctx is not None and self.ctx.target.contains(e.pid))
        self._oom_rows.append({
            "ts_ns": e.ts, "pid": e.pid, "comm": _comm(e.comm), "uid": e.uid, "in_target": in_target,
            "total_vm_bytes": e.total_vm_kb * 1024, "anon_rss_bytes": e.anon_rss_kb * 1024,
            "file_rss_bytes": e.file_rss_kb * 1024, "shmem_rss_bytes": e.shmem_rss_kb * 1024,
            "oom_score_adj": e.oom_score_adj, "memcg": memcg, "memcg_limit_bytes": limit,
            "memcg_usage_bytes": usage, "memcg_max_usage_bytes": max_usage,
        })

    def _on_reclaim(self, _cpu: int, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(ReclaimEvent)).contents
        in_target = bool(e.in_target) or (self.ctx is not None and self.ctx.target.contains(e.tgid))
        self._reclaim_rows.append({
            "ts_ns": e.ts, "pid": e.tgid, "tid": e.tid, "comm": _comm(e.comm), "in_target": in_target,
            "kind": RECLAIM_KINDS.get(e.kind, "other"), "duration_ns": e.duration_ns,
            "nr_reclaimed": e.nr_reclaimed,
        })

    def _memcg_of(self, pid: int) -> str:
        """The victim's cgroup: an exiting task is moved to the root css_set (kernel/cgroup/
        cgroup.c cgroup_exit), so a live read of '/' or of a zombie is not trusted over the
        path cached while the process lived."""
        cached = self._cg_cache.get(pid, "")
        try:
            raw = procfs.proc_path(pid, "stat").read_text()
            state = raw[raw.rindex(")") + 2]
        except (OSError, ValueError, IndexError):
            return cached
        if state in "ZXx":
            return cached
        live = procfs.read_pid_cgroup(pid)
        if live in ("", "/") and cached:
            return cached
        return live

    def _cache_cgroup(self, pid: int) -> None:
        cg = self._memcg_of(pid)
        if cg:
            self._cg_cache[pid] = cg

    # Sampling ---------------------------------------------------------------------------------
    def sample(self, now_ns: int) -> None:
        if self.bpf is None or self.ctx is None:
            return
        if self.filter_mode != "host":
            self._push_pids(self.ctx.target.pids())
            if now_ns - self._cg_refreshed_ns >= CGROUP_CACHE_REFRESH_NS:
                self._cg_refreshed_ns = now_ns
                alive = set(self.ctx.target.pids())
                for pid in list(self._cg_cache):
                    if pid not in alive:
                        del self._cg_cache[pid]
                for pid in alive:
                    self._cache_cgroup(pid)
        self._poll()
        cutoff = (time.monotonic_ns() - DRAIN_GRACE_NS) // self.bucket_ns
        self._drain_all(cutoff, now_ns)

    def _poll(self) -> None:
        if self.bpf.perf_buffers:
            self.bpf.perf_buffer_poll(timeout=0)
        self._flush_events()

    def _flush_events(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        for table, attr in (("proc_events", "_proc_rows"), ("oom_kills", "_oom_rows"),
                            ("reclaim", "_reclaim_rows")):
            rows = getattr(self, attr)
            if rows:
                setattr(self, attr, [])
                ctx.emit(table, rows)

    def _drain_all(self, cutoff: int | None, now_ns: int) -> None:
        if "sched_agg" in self._drainers:
            self._drain_sched(cutoff)
            self._drain_preempt(cutoff)
        if "fault_agg" in self._drainers:
            self._drain_faults(cutoff)
        if "io_agg" in self._drainers:
            self._drain_io(cutoff)
        self._emit_stats(now_ns)

    def _take(self, name: str, cutoff: int | None) -> tuple[np.ndarray, np.ndarray]:
        d = self._drainers[name]
        k, v = d.read()
        if cutoff is not None and len(k):
            mask = k["bucket"] < cutoff
            k, v = k[mask], v[mask]
        d.delete(k)
        return k, v

    def _emit(self, table: str, n: int, cols: dict[str, Any]) -> None:
        sch = schema.schema_for(table)
        arrays = []
        for f in sch:
            c = cols.get(f.name)
            if c is None:
                arrays.append(pa.nulls(n, f.type))
            elif isinstance(c, pa.Array):
                arrays.append(c.cast(f.type) if c.type != f.type else c)
            else:
                arrays.append(pa.array(c, type=f.type))
        assert self.ctx is not None
        self.ctx.emit_batch(table, pa.RecordBatch.from_arrays(arrays, schema=sch))

    def _hist(self, h: np.ndarray) -> pa.Array:
        n, width = h.shape
        offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(h.astype(np.uint32).ravel()))

    def _drain_sched(self, cutoff: int | None) -> None:
        k, v = self._take("sched_agg", cutoff)
        if not len(k):
            return
        self._emit("sched", len(k), {
            "ts_ns": k["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(len(k), self.bucket_ns, dtype=np.int64),
            "pid": k["tgid"].astype(np.int32), "tid": k["tid"].astype(np.int32),
            "comm": np.char.decode(v["comm"], "utf-8", "replace"),
            "switches_voluntary": v["vol"].astype(np.int64),
            "switches_involuntary": v["invol"].astype(np.int64),
            "oncpu_ns": v["oncpu_ns"].astype(np.int64),
            "runq_count": v["runq_count"].astype(np.int64),
            "runq_wait_ns": v["runq_wait_ns"].astype(np.int64),
            "runq_max_ns": v["runq_max_ns"].astype(np.int64),
            "runq_hist": self._hist(v["hist"]),
            "offcpu_sleep_ns": v["off_sleep_ns"].astype(np.int64),
            "offcpu_dstate_ns": v["off_dstate_ns"].astype(np.int64),
            "offcpu_preempted_ns": v["off_preempted_ns"].astype(np.int64),
            "migrations": v["migrations"].astype(np.int64),
        })

    def _drain_preempt(self, cutoff: int | None) -> None:
        k, v = self._take("preempt_agg", cutoff)
        if not len(k):
            return
        self._emit("preemptions", len(k), {
            "ts_ns": k["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(len(k), self.bucket_ns, dtype=np.int64),
            "pid": k["tgid"].astype(np.int32), "preemptor_pid": k["ptgid"].astype(np.int32),
            "preemptor_tid": k["ptid"].astype(np.int32),
            "preemptor_comm": np.char.decode(v["comm"], "utf-8", "replace"),
            "preemptor_in_target": v["in_target"] != 0, "cpu": k["cpu"].astype(np.int16),
            "count": v["count"].astype(np.int64), "wait_ns": v["wait_ns"].astype(np.int64),
        })

    def _drain_faults(self, cutoff: int | None) -> None:
        k, v = self._take("fault_agg", cutoff)
        if not len(k):
            return
        self._emit("faults", len(k), {
            "ts_ns": k["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(len(k), self.bucket_ns, dtype=np.int64),
            "pid": k["tgid"].astype(np.int32), "tid": k["tid"].astype(np.int32),
            "faults": v["faults"].astype(np.int64), "major": v["major"].astype(np.int64),
        })

    def _drain_io(self, cutoff: int | None) -> None:
        k, v = self._take("io_agg", cutoff)
        if not len(k):
            return
        # Keep every target row, and per bucket the top other issuers by bytes.
        in_t = v["in_target"] != 0
        keep = in_t.copy()
        others = np.flatnonzero(~in_t)
        if len(others):
            order = others[np.lexsort((-v["bytes"][others].astype(np.int64), k["bucket"][others]))]
            buckets = k["bucket"][order]
            starts = np.r_[0, np.flatnonzero(buckets[1:] != buckets[:-1]) + 1]
            rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            keep[order[rank < TOP_OTHER_IO_ISSUERS]] = True
        k, v = k[keep], v[keep]
        op_chars = [chr(int(c)) if int(c) else "O" for c in k["op"]]
        self._emit("block_io", len(k), {
            "ts_ns": k["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(len(k), self.bucket_ns, dtype=np.int64),
            "pid": k["tgid"].astype(np.int32),
            "comm": np.char.decode(v["comm"], "utf-8", "replace"),
            "in_target": v["in_target"] != 0,
            "dev": [_dev_name(int(d)) for d in k["dev"]],
            "op": op_chars, "count": v["count"].astype(np.int64), "bytes": v["bytes"].astype(np.int64),
            "lat_sum_ns": v["lat_sum_ns"].astype(np.int64), "lat_max_ns": v["lat_max_ns"].astype(np.int64),
            "lat_hist": self._hist(v["hist"]),
        })

    def _read_stats(self) -> np.ndarray:
        out = np.zeros(NR_FAMILIES * NR_STATS, dtype=np.int64)
        table = self.bpf[b"stats"]
        for i in range(NR_FAMILIES * NR_STATS):
            out[i] = sum(table[ct.c_int(i)])
        return out

    def _emit_stats(self, now_ns: int) -> None:
        cur = self._read_stats()
        delta = cur - self._stats_prev
        self._stats_prev = cur
        rows = []
        for name in self.enabled:
            idx = FAMILIES[name].index
            events = int(delta[idx * NR_STATS])
            map_full = int(delta[idx * NR_STATS + 1]) + self._user_drops[name]
            self._user_drops[name] = 0
            # Counted in the kernel where bpf_perf_event_output() refuses a record: exact and
            # immediate. (The PERF_RECORD_LOST count bcc reports through lost_cb only arrives
            # once the buffer has room again, so it can miss the last overrun of a recording.)
            perf_lost = int(delta[idx * NR_STATS + 2])
            reasons = [f"perf_buffer={perf_lost}" if perf_lost else "", f"map_full={map_full}" if map_full else ""]
            lost = perf_lost + map_full
            self._events_total += events
            self._lost_total += lost
            rows.append({"ts_ns": now_ns, "probe": f"kernel.{name}", "events": events, "lost": lost,
                         "reason": ",".join(r for r in reasons if r) or None})
        assert self.ctx is not None
        self.ctx.emit("probe_stats", rows)

    # Stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.bpf is None or self._stopped:
            return
        self._stopped = True
        try:
            self._poll()
            self._drain_all(None, time.monotonic_ns())
        finally:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    def status(self) -> dict[str, Any]:
        return {"events": self._events_total, "lost": self._lost_total}

    def info(self) -> dict[str, Any]:
        return {
            "families": list(self.enabled),
            "skipped": dict(self.skipped),
            "bucket_ns": self.bucket_ns,
            "perf_pages": self.perf_pages,
            "filter": self.filter_mode,
            "major_faults": self.major_faults,
            "struct_offsets": "btf",
            "perf_records_lost": dict(self._perf_lost),
        }


def _release_compiler_heap() -> None:
    """Give the heap clang/LLVM used for the compile back to the kernel (glibc keeps freed arenas
    mapped): it is most of the recorder's RSS otherwise, and it is never needed again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
