"""The kernel-probe collector: one BPF program built from the families in probes/bpf/*.c.

``KernelProbes`` is the collector ``record`` attaches when it runs as root. Everything high-rate
(scheduler switches, page faults, block I/O) is aggregated in the kernel per thread / issuer per
time bucket; user space drains finished buckets every interval with batched map operations and
numpy, so the Python cost scales with (threads x buckets), never with events. Rare events
(process lifecycle, OOM kills, reclaim stalls) come through perf buffers, whose lost-sample
counts -- and every refused map update -- are stored in ``probe_stats`` each interval.

Filtering happens in the kernel: a hash of target tgids seeded from user space and extended at
fork (proc.c), plus cgroup v2 ids in cgroup mode. See docs/format-kernel.md for the tables.

Rooms: bpf_program (program text), kernel_features (what can run, for doctor), kernel_events
(perf-buffer structs), cgroups (memcg / cgroup v2 readers), bpf_maps (bulk map reads).
"""

from __future__ import annotations

import ctypes as ct
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from autoglm_trace import procfs, schema
from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext
from autoglm_trace.probes import bpf_loader, libbpf
from autoglm_trace.probes.bpf_maps import MapDrainer
from autoglm_trace.probes.bpf_program import (
    DEFAULT_BUCKET_MS,
    FAMILIES,
    FILTER_MODES,
    NR_FAMILIES,
    NR_STATS,
    generate_program,
    missing_needs,
    select_families,
    tracepoint_present,
)
from autoglm_trace.probes.cgroups import cgroup2_ids, memcg_numbers
from autoglm_trace.probes.kernel_events import (
    PROC_EVENT_NAMES,
    RECLAIM_KINDS,
    WAKE_CONTEXT_NAMES,
    OomEvent,
    ProcEvent,
    ReclaimEvent,
    comm_str,
    decode_exit_code,
    dev_name,
)
from autoglm_trace.probes.kernel_features import base_problem, family_degraded, family_problem, typed_note

DEFAULT_PERF_PAGES = 64
# Per-bucket block-I/O rows kept for issuers outside the target (the top ones by bytes).
TOP_OTHER_IO_ISSUERS = 10
# Buckets are drained once they ended this long ago, so updates racing the bucket edge land.
DRAIN_GRACE_NS = 5_000_000
CGROUP_CACHE_REFRESH_NS = 1_000_000_000

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS_MAJ = 6
# The maps the recorder reads or seeds (the loader hands over those the program has).
MAPS = ("target_tgids", "target_cgroups", "target_gen", "stats", "sched_agg", "preempt_agg", "waker_agg",
        "fault_agg", "io_agg", "proc_events", "oom_events", "reclaim_events")


class KernelProbes(Collector):
    """bcc probes for the target: sched, faults, io, memory, oom, proc (see module docstring)."""

    name = "kernel"
    tables = ("sched", "preemptions", "wakeups", "faults", "block_io", "reclaim", "oom_kills", "proc_events",
              "probe_stats")

    def __init__(self, options: dict | None = None) -> None:
        super().__init__()
        self.options = dict(options or {})
        self.bucket_ns = int(float(self.options.get("bucket_ms", DEFAULT_BUCKET_MS)) * 1_000_000)
        pages = int(self.options.get("perf_pages", DEFAULT_PERF_PAGES))
        if pages < 1 or pages & (pages - 1):
            raise ValueError("perf_pages must be a power of two >= 1")
        self.perf_pages = pages
        self.requested = select_families(self.options.get("families"))
        self.enabled: list[str] = []
        self.skipped: dict[str, str] = {}
        self.bpf: bpf_loader.Loaded | None = None
        self._buffers: list[libbpf.PerfBuffer] = []
        self.filter_mode = "tree"
        self.major_faults = False
        self._drainers: dict[str, MapDrainer] = {}
        self._pushed: set[int] = set()
        self._target_gen = 0  # the last value written to sched.c's target_gen
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
        base = base_problem()
        if base:
            raise CollectorUnavailable(base)
        self.filter_mode = getattr(ctx.target, "mode", "tree") or "tree"
        if self.filter_mode not in FILTER_MODES:
            self.filter_mode = "tree"
        for name in self.requested:
            problem = family_problem(FAMILIES[name])
            if problem:
                self.skipped[name] = problem
                ctx.note(f"kernel probe '{name}' skipped: {problem}")
            elif missing_needs(name, self.enabled):
                why = f"needs the {', '.join(missing_needs(name, self.enabled))} family"
                self.skipped[name] = why
                ctx.note(f"kernel probe '{name}' skipped: {why}")
            else:
                self.enabled.append(name)
                degraded = family_degraded(name)
                if degraded:
                    ctx.note(f"kernel probe '{name}': {degraded}")
                if name == "sched" and (why := typed_note()):
                    ctx.note(f"kernel probe 'sched': {why}")
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
                if tracepoint_present(cat, ev):
                    defines[macro] = 1
        text = generate_program({
            "bucket_ms": self.bucket_ns / 1e6,
            "families": self.enabled,
            "filter": self.filter_mode,
            "defines": defines,
        })
        self.program_text = text
        perf_events = []
        if "faults" in self.enabled:
            perf_events.append({"fn": "on_major_fault", "type": PERF_TYPE_SOFTWARE,
                                "config": PERF_COUNT_SW_PAGE_FAULTS_MAJ, "sample_period": 1})
        try:
            # -w: the (nearest-version) kernel headers bcc includes produce warnings that say
            # nothing about this program.
            self.bpf = bpf_loader.load(text, list(MAPS), perf_events, cflags=["-w"])
        except (bpf_loader.LoadError, OSError, ValueError) as e:
            raise CollectorUnavailable(
                f"the BPF program did not compile or load ({e}); "
                "print it with 'record --print-bpf' and check the kernel headers ('sudo make setup')"
            ) from None
        for note in self.bpf.notes:
            ctx.note(f"kernel probes: {note}")
        self.major_faults = "faults" in self.enabled and any(
            kind == "perf_event" for kind, _n, _fd in self.bpf.links)
        if "faults" in self.enabled and not self.major_faults:
            ctx.note("kernel probes: major faults not counted (perf software event refused)")
        try:
            self._seed_filter(ctx)
            self._open_buffers()
            self._drainers = {
                m: MapDrainer(self.bpf.maps[m])
                for m, fam in (("sched_agg", "sched"), ("preempt_agg", "sched"), ("waker_agg", "wakeups"),
                               ("fault_agg", "faults"), ("io_agg", "io"))
                if fam in self.enabled
            }
            self._stats_prev = self._read_stats()
        except Exception:
            self._release()
            raise

    def _seed_filter(self, ctx: SessionContext) -> None:
        if self.filter_mode == "host":
            return
        if self.filter_mode == "cgroup" and ctx.target.cgroup_path:
            table = self.bpf.maps["target_cgroups"]
            for cg in cgroup2_ids(ctx.target.cgroup_path)[: 1024]:
                table.update(cg, 1)
        self._push_pids(ctx.target.pids())

    def _push_pids(self, pids: Iterable[int]) -> None:
        new = [p for p in pids if p not in self._pushed]
        if not new:
            return
        table = self.bpf.maps["target_tgids"]
        for pid in new:
            try:
                table.update(pid, 1)
            except OSError:
                self._user_drops["proc"] += 1  # filter map full: counted as loss
                continue
            self._pushed.add(pid)
            self._cache_cgroup(pid)
        gen = self.bpf.maps.get("target_gen")
        if gen is not None:
            # sched.c keeps a "not in the target" verdict per task while this is unchanged: tasks of
            # the tgids just added are looked at again at their next switch. Only we write it.
            self._target_gen += 1
            gen.update(0, self._target_gen)

    def _open_buffers(self) -> None:
        handlers = {"proc_events": ("proc", self._on_proc), "oom_events": ("oom", self._on_oom),
                    "reclaim_events": ("memory", self._on_reclaim)}
        for buf, (fam, fn) in handlers.items():
            if fam not in self.enabled:
                continue

            def lost(n: int, fam: str = fam) -> None:
                self._perf_lost[fam] += n

            self._buffers.append(libbpf.PerfBuffer(self.bpf.maps[buf].fd, self.perf_pages, fn, lost))

    # Perf-buffer callbacks (rare events only) -------------------------------------------------
    def _on_proc(self, _cpu: int, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(ProcEvent)).contents
        event = PROC_EVENT_NAMES.get(e.type, "other")
        row: dict[str, Any] = {
            "ts_ns": e.ts, "event": event, "pid": e.pid, "tid": e.tid, "ppid": e.ppid or None,
            "comm": comm_str(e.comm), "source": "bpf",
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
            "ts_ns": e.ts, "pid": e.pid, "comm": comm_str(e.comm), "uid": e.uid, "in_target": in_target,
            "total_vm_bytes": e.total_vm_kb * 1024, "anon_rss_bytes": e.anon_rss_kb * 1024,
            "file_rss_bytes": e.file_rss_kb * 1024, "shmem_rss_bytes": e.shmem_rss_kb * 1024,
            "oom_score_adj": e.oom_score_adj, "memcg": memcg, "memcg_limit_bytes": limit,
            "memcg_usage_bytes": usage, "memcg_max_usage_bytes": max_usage,
        })

    def _on_reclaim(self, _cpu: int, data: Any, _size: int) -> None:
        e = ct.cast(data, ct.POINTER(ReclaimEvent)).contents
        in_target = bool(e.in_target) or (self.ctx is not None and self.ctx.target.contains(e.tgid))
        self._reclaim_rows.append({
            "ts_ns": e.ts, "pid": e.tgid, "tid": e.tid, "comm": comm_str(e.comm), "in_target": in_target,
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
        for pb in self._buffers:
            pb.consume()
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
            k, v = self._take("sched_agg", cutoff)
            self._drain_sched(k, v)
            self._drain_preempt(cutoff, k, v)
            if "waker_agg" in self._drainers:
                self._drain_wakers(cutoff, k, v)
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

    def _drain_sched(self, k: np.ndarray, v: np.ndarray) -> None:
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

    def _drain_preempt(self, cutoff: int | None, sk: np.ndarray, sv: np.ndarray) -> None:
        """preempt_agg's rows and the preemptors kept in the sched rows (sched.c INLINE_CHARGES),
        added into one row per key."""
        k, v = self._take("preempt_agg", cutoff)
        cols = {"bucket": k["bucket"], "tgid": k["tgid"], "ptid": k["ptid"], "ptgid": k["ptgid"], "cpu": k["cpu"],
                "count": v["count"], "wait_ns": v["wait_ns"], "in_target": v["in_target"], "comm": v["comm"]}
        if len(sk) and "pre" in (sv.dtype.names or ()):
            slots, rows = _used_slots(sv["pre"], ("count", "wait_ns"))
            cols = _concat(cols, {"bucket": sk["bucket"][rows], "tgid": sk["tgid"][rows], **{
                f: slots[f] for f in ("ptid", "ptgid", "cpu", "count", "wait_ns", "in_target", "comm")}})
            cols = _merge(cols, ("bucket", "tgid", "ptid", "ptgid", "cpu"), add=("count", "wait_ns"),
                          most=("in_target",))
        n = len(cols["bucket"])
        if not n:
            return
        self._emit("preemptions", n, {
            "ts_ns": cols["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(n, self.bucket_ns, dtype=np.int64),
            "pid": cols["tgid"].astype(np.int32), "preemptor_pid": cols["ptgid"].astype(np.int32),
            "preemptor_tid": cols["ptid"].astype(np.int32),
            "preemptor_comm": np.char.decode(cols["comm"], "utf-8", "replace"),
            "preemptor_in_target": cols["in_target"] != 0, "cpu": cols["cpu"].astype(np.int16),
            "count": cols["count"].astype(np.int64), "wait_ns": cols["wait_ns"].astype(np.int64),
        })

    def _drain_wakers(self, cutoff: int | None, sk: np.ndarray, sv: np.ndarray) -> None:
        """waker_agg's rows and the wakers kept in the sched rows, added into one row per key."""
        k, v = self._take("waker_agg", cutoff)
        keys = ("bucket", "tid", "pid", "waker_tid", "waker_pid", "ctx", "state")
        vals = ("count", "sleep_ns", "sleep_max_ns", "waker_oncpu_ns", "waker_in_target", "comm")
        cols = {**{f: k[f] for f in keys}, **{f: v[f] for f in vals}}
        if len(sk) and "wk" in (sv.dtype.names or ()):
            slots, rows = _used_slots(sv["wk"], ("count",))
            cols = _concat(cols, {"bucket": sk["bucket"][rows], "tid": sk["tid"][rows], "pid": sk["tgid"][rows],
                                  **{f: slots[f] for f in keys[3:] + vals}})
            cols = _merge(cols, keys, add=("count", "sleep_ns", "waker_oncpu_ns"),
                          most=("sleep_max_ns", "waker_in_target"))
        n = len(cols["bucket"])
        if not n:
            return
        contexts = [WAKE_CONTEXT_NAMES.get(int(c), "irq") for c in cols["ctx"]]
        comm = np.char.decode(cols["comm"], "utf-8", "replace").tolist()
        # Interrupt context: no task woke it; the context stands in as the waker's name.
        comm = [c if x == "task" else f"[{x}]" for c, x in zip(comm, contexts, strict=True)]
        self._emit("wakeups", n, {
            "ts_ns": cols["bucket"].astype(np.int64) * self.bucket_ns,
            "bucket_ns": np.full(n, self.bucket_ns, dtype=np.int64),
            "pid": cols["pid"].astype(np.int32), "tid": cols["tid"].astype(np.int32),
            "waker_pid": cols["waker_pid"].astype(np.int32), "waker_tid": cols["waker_tid"].astype(np.int32),
            "waker_comm": comm, "waker_in_target": cols["waker_in_target"] != 0,
            "waker_context": contexts,
            "state": np.where(cols["state"] == 2, "D", "S").tolist(),
            "count": cols["count"].astype(np.int64), "sleep_ns": cols["sleep_ns"].astype(np.int64),
            "sleep_max_ns": cols["sleep_max_ns"].astype(np.int64),
            "waker_oncpu_ns": cols["waker_oncpu_ns"].astype(np.int64),
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
            "dev": [dev_name(int(d)) for d in k["dev"]],
            "op": op_chars, "count": v["count"].astype(np.int64), "bytes": v["bytes"].astype(np.int64),
            "lat_sum_ns": v["lat_sum_ns"].astype(np.int64), "lat_max_ns": v["lat_max_ns"].astype(np.int64),
            "lat_hist": self._hist(v["hist"]),
        })

    def _read_stats(self) -> np.ndarray:
        out = np.zeros(NR_FAMILIES * NR_STATS, dtype=np.int64)
        table = self.bpf.maps["stats"]
        for i in range(NR_FAMILIES * NR_STATS):
            per_cpu = table.lookup(i)
            out[i] = int(per_cpu.sum()) if per_cpu is not None else 0
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
            self._release()

    def _release(self) -> None:
        """Free the perf buffers and close every descriptor: programs detach, maps are freed."""
        buffers, self._buffers = self._buffers, []
        for pb in buffers:
            pb.close()
        if self.bpf is not None:
            self.bpf.close()
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


# ---------------------------------------------------------------------------------------------
# Charges kept inline in the sched rows (sched.c INLINE_CHARGES)
# ---------------------------------------------------------------------------------------------
def _used_slots(slots: np.ndarray, marks: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The used slots of an (n, INLINE_CHARGES) array (a mark field non-zero), flattened, and the
    parent row of each."""
    used = np.zeros(slots.shape, dtype=bool)
    for m in marks:
        used |= slots[m] != 0
    return slots[used], np.nonzero(used)[0]


def _concat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f: np.concatenate([a[f], b[f]]) for f in a}


def _merge(cols: dict[str, np.ndarray], keys: tuple[str, ...], add: tuple[str, ...] = (),
           most: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One row per distinct key: ``add`` columns summed, ``most`` the largest, the rest the first."""
    n = len(cols[keys[0]])
    if n < 2:
        return cols
    kk = np.rec.fromarrays([cols[k] for k in keys], names=list(keys))
    uniq, first, inv = np.unique(kk, return_index=True, return_inverse=True)
    if len(uniq) == n:
        return cols
    inv = inv.ravel()
    out = {}
    for name, arr in cols.items():
        if name in add or name in most:
            r = np.zeros(len(uniq), dtype=arr.dtype)
            (np.add if name in add else np.maximum).at(r, inv, arr)
        else:
            r = arr[first]
        out[name] = r
    return out
