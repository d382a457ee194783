"""The recording format: every table's Arrow schema, defined once.

Both the writer (``tracer.writer``) and the reader (``analysis.reader``) import this module; nothing
else defines a column. docs/format.md documents the same contract for people who query a recording
with DuckDB, polars or plain pyarrow.

A recording ``REC/`` is a directory holding ``manifest.json`` and one Arrow IPC *stream* file per
table, ``REC/<table>.arrow``. Rules every table follows:

* ``ts_ns`` is CLOCK_MONOTONIC nanoseconds -- the clock of ``bpf_ktime_get_ns()`` and of Python's
  ``time.monotonic_ns()``. ``manifest.json``'s ``clock.monotonic_to_wall_ns`` converts to UNIX time.
* Counters are stored raw (cumulative as the kernel reports them); rates are computed when reading.
* Aggregated tables (``sched``, ``faults``, ``block_io`` ...) hold one row per key per time bucket;
  ``ts_ns`` is the bucket's start and ``bucket_ns`` its length.
* Every schema carries ``autoglm_trace.schema_version`` and ``autoglm_trace.table`` in its metadata.

Bump ``SCHEMA_VERSION`` when a column changes meaning or is removed; adding a table or a nullable
column keeps the version (readers ignore what they do not know).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
FORMAT_NAME = "autoglm-trace-recording"
MANIFEST_NAME = "manifest.json"
TABLE_SUFFIX = ".arrow"

# Log2 histogram buckets used by every in-kernel latency histogram: bucket i counts values v
# (in microseconds) with 2**(i-1) <= v < 2**i (bucket 0 counts v == 0), as bcc's
# ``bpf_log2l``-based histograms do.
LOG2_BUCKETS = 32

_ts = pa.field("ts_ns", pa.int64(), nullable=False,
               metadata={"doc": "CLOCK_MONOTONIC ns (event time, sample time, or bucket start)"})
_bucket = pa.field("bucket_ns", pa.int64(), nullable=False, metadata={"doc": "bucket length in ns"})
_hist = pa.list_(pa.uint32())


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


TABLES: dict[str, pa.Schema] = {}
TABLE_DOCS: dict[str, str] = {}


def _table(name: str, doc: str, fields: list[pa.Field]) -> None:
    TABLES[name] = pa.schema(
        fields,
        metadata={
            "autoglm_trace.schema_version": str(SCHEMA_VERSION),
            "autoglm_trace.table": name,
            "doc": doc,
        },
    )
    TABLE_DOCS[name] = doc


# --------------------------------------------------------------------------------------------
# psutil / procfs sampler (no root needed)
# --------------------------------------------------------------------------------------------
_table(
    "processes",
    "One row each time a process of the target tree is first seen (or execs): identity that does "
    "not change every sample.",
    [
        _ts,
        _f("pid", pa.int32(), "process id (tgid)", False),
        _f("ppid", pa.int32(), "parent pid"),
        _f("comm", pa.string(), "kernel comm (15 chars)"),
        _f("cmdline", pa.string(), "command line joined with spaces"),
        _f("uid", pa.int32(), "real uid"),
        _f("cgroup", pa.string(), "cgroup path (v2 path, else the memory controller's v1 path)"),
        _f("start_time_ns", pa.int64(), "process start on the monotonic clock"),
        _f("is_root", pa.bool_(), "true for the target's root process"),
    ],
)

_table(
    "process_identities",
    "Every process on the host, once when first seen (probes/identity.py, scanned each second): who "
    "it is as operators name it -- its user, cgroup path (container / pod / systemd unit), and the "
    "pod and container names the node has on disk -- so a culprit pid is named after it is gone.",
    [
        _ts,
        _f("pid", pa.int32(), "process id (tgid)", False),
        _f("comm", pa.string(), "kernel comm (15 chars)"),
        _f("uid", pa.int32(), "real uid"),
        _f("user", pa.string(), "user name of the uid on the recorded host (null when unknown)"),
        _f("cgroup", pa.string(), "cgroup path (the v1 memory controller's, else the v2 path)"),
        _f("pod_name", pa.string(), "Kubernetes pod name (the pod's /etc/hostname), null when unknown"),
        _f("container_name", pa.string(), "container name from the runtime's config on disk (Docker), null when unknown"),
    ],
)

_table(
    "proc_samples",
    "Raw per-process counters of every process in the target tree, sampled each interval.",
    [
        _ts,
        _f("pid", pa.int32(), "process id", False),
        _f("cpu_user_s", pa.float64(), "cumulative user CPU seconds (/proc/PID/stat utime)"),
        _f("cpu_system_s", pa.float64(), "cumulative system CPU seconds (stime)"),
        _f("rss_bytes", pa.int64(), "resident set size"),
        _f("vms_bytes", pa.int64(), "virtual size"),
        _f("shared_bytes", pa.int64(), "resident shared (file-backed + shmem) bytes"),
        _f("num_threads", pa.int32(), "threads"),
        _f("ctx_voluntary", pa.int64(), "cumulative voluntary context switches, all threads"),
        _f("ctx_involuntary", pa.int64(), "cumulative involuntary context switches, all threads"),
        _f("minflt", pa.int64(), "cumulative minor faults (/proc/PID/stat minflt)"),
        _f("majflt", pa.int64(), "cumulative major faults (majflt)"),
        _f("io_read_bytes", pa.int64(), "cumulative bytes read from storage (/proc/PID/io)"),
        _f("io_write_bytes", pa.int64(), "cumulative bytes written to storage"),
        _f("num_fds", pa.int32(), "open file descriptors"),
        _f("state", pa.string(), "scheduler state letter (R, S, D, Z ...)"),
    ],
)

_table(
    "host_samples",
    "Raw host counters each interval: memory, swap, load, PSI totals and vmstat counters.",
    [
        _ts,
        _f("mem_total_bytes", pa.int64(), "MemTotal"),
        _f("mem_available_bytes", pa.int64(), "MemAvailable"),
        _f("mem_free_bytes", pa.int64(), "MemFree"),
        _f("mem_cached_bytes", pa.int64(), "Cached + Buffers"),
        _f("swap_total_bytes", pa.int64(), "SwapTotal"),
        _f("swap_free_bytes", pa.int64(), "SwapFree"),
        _f("load1", pa.float64(), "1-minute load average"),
        _f("load5", pa.float64(), "5-minute load average"),
        _f("load15", pa.float64(), "15-minute load average"),
        _f("psi_cpu_some_us", pa.int64(), "cumulative /proc/pressure/cpu some total (us)"),
        _f("psi_mem_some_us", pa.int64(), "cumulative /proc/pressure/memory some total"),
        _f("psi_mem_full_us", pa.int64(), "cumulative /proc/pressure/memory full total"),
        _f("psi_io_some_us", pa.int64(), "cumulative /proc/pressure/io some total"),
        _f("psi_io_full_us", pa.int64(), "cumulative /proc/pressure/io full total"),
        _f("pgmajfault", pa.int64(), "cumulative /proc/vmstat pgmajfault"),
        _f("pgscan_direct", pa.int64(), "cumulative /proc/vmstat pgscan_direct"),
        _f("allocstall", pa.int64(), "cumulative /proc/vmstat allocstall_* summed"),
        _f("ctxt", pa.int64(), "cumulative /proc/stat ctxt (host context switches)"),
    ],
)

_table(
    "host_cpu",
    "Raw per-core CPU time (/proc/stat cpuN lines) each interval, cumulative seconds.",
    [
        _ts,
        _f("cpu", pa.int16(), "core number", False),
        _f("user_s", pa.float64(), "user + nice"),
        _f("system_s", pa.float64(), "system"),
        _f("idle_s", pa.float64(), "idle"),
        _f("iowait_s", pa.float64(), "iowait"),
        _f("irq_s", pa.float64(), "irq + softirq"),
        _f("steal_s", pa.float64(), "steal"),
    ],
)

# --------------------------------------------------------------------------------------------
# bcc kernel probes (root)
# --------------------------------------------------------------------------------------------
_table(
    "sched",
    "Per thread of the target tree per time bucket, aggregated in the kernel from sched_switch / "
    "sched_migrate_task. Run-queue latency is enqueue (wakeup or preemption) to run, the scheduler's own "
    "sched_info accounting; a stretch off CPU (its wait, sleep or preemption) is counted in the bucket of "
    "the thread's next switch-out or exit.",
    [
        _ts,
        _bucket,
        _f("pid", pa.int32(), "tgid of the thread", False),
        _f("tid", pa.int32(), "thread id", False),
        _f("comm", pa.string(), "thread comm"),
        _f("switches_voluntary", pa.int64(), "switches out while not runnable"),
        _f("switches_involuntary", pa.int64(), "switches out while runnable (preempted)"),
        _f("oncpu_ns", pa.int64(), "time on CPU"),
        _f("runq_count", pa.int64(), "run-queue waits ended in the bucket"),
        _f("runq_wait_ns", pa.int64(), "sum of run-queue waits"),
        _f("runq_max_ns", pa.int64(), "longest run-queue wait"),
        _f("runq_hist", _hist, "log2 histogram of run-queue waits in microseconds (LOG2_BUCKETS)"),
        _f("offcpu_sleep_ns", pa.int64(), "off-CPU time in interruptible sleep (S)"),
        _f("offcpu_dstate_ns", pa.int64(), "off-CPU time in uninterruptible sleep (D)"),
        _f("offcpu_preempted_ns", pa.int64(), "off-CPU time while runnable (waiting for a CPU)"),
        _f("migrations", pa.int64(), "CPU migrations"),
    ],
)

_table(
    "preemptions",
    "Who took the CPU from the target: per bucket, per (target thread's tgid, task switched in) "
    "pair, for involuntary switches of target threads and for tasks that ran while a target "
    "thread waited on the run queue.",
    [
        _ts,
        _bucket,
        _f("pid", pa.int32(), "target tgid that lost the CPU", False),
        _f("preemptor_pid", pa.int32(), "tgid of the task switched in", False),
        _f("preemptor_tid", pa.int32(), "tid of the task switched in"),
        _f("preemptor_comm", pa.string(), "comm of the task switched in"),
        _f("preemptor_in_target", pa.bool_(), "the preemptor belongs to the target tree"),
        _f("cpu", pa.int16(), "CPU of the switch"),
        _f("count", pa.int64(), "involuntary switches of target threads in favour of this task"),
        _f("wait_ns", pa.int64(), "run-queue wait of target threads charged to this task"),
    ],
)

_table(
    "wakeups",
    "Who woke the target's sleeping threads: per bucket, per (target thread, waker) pair, the "
    "wakeups at sched_waking (the waker is the task running try_to_wake_up, or an interrupt "
    "context) and the S- or D-state sleep they ended.",
    [
        _ts,
        _bucket,
        _f("pid", pa.int32(), "tgid of the woken target thread", False),
        _f("tid", pa.int32(), "the woken target thread", False),
        _f("waker_pid", pa.int32(), "tgid of the waker (0: interrupt context)", False),
        _f("waker_tid", pa.int32(), "thread id of the waker (0: interrupt context)", False),
        _f("waker_comm", pa.string(), "comm of the waker, or [hardirq] / [softirq] / [hrtimer]"),
        _f("waker_in_target", pa.bool_(), "the waker belongs to the target tree"),
        _f("waker_context", pa.string(), "task | hardirq | softirq | hrtimer"),
        _f("state", pa.string(), "S (interruptible sleep) | D (uninterruptible)"),
        _f("count", pa.int64(), "wakeups"),
        _f("sleep_ns", pa.int64(), "sleep the wakeups ended (switch-out to wakeup)"),
        _f("sleep_max_ns", pa.int64(), "longest of those sleeps"),
        _f("waker_oncpu_ns", pa.int64(), "part of those sleeps the waker (a target thread) had been on CPU "
           "without a break up to the wakeup"),
    ],
)

_table(
    "faults",
    "User page faults of the target tree per thread per bucket (exceptions:page_fault_user for all "
    "faults; major faults from the PERF_COUNT_SW_PAGE_FAULTS_MAJ software event).",
    [
        _ts,
        _bucket,
        _f("pid", pa.int32(), "tgid", False),
        _f("tid", pa.int32(), "thread id"),
        _f("faults", pa.int64(), "all user page faults (minor + major)"),
        _f("major", pa.int64(), "major faults (needed I/O)"),
    ],
)

_table(
    "block_io",
    "Block requests per bucket per issuer (target or not) per device and op: count, bytes, "
    "issue-to-complete latency sum / max / log2 histogram. The issuer is remembered at issue.",
    [
        _ts,
        _bucket,
        _f("pid", pa.int32(), "issuing tgid (0 = kernel / unknown)", False),
        _f("comm", pa.string(), "issuer comm"),
        _f("in_target", pa.bool_(), "issuer belongs to the target tree"),
        _f("dev", pa.string(), "major:minor of the device"),
        _f("op", pa.string(), "R, W, D (discard), F (flush) or O (other)"),
        _f("count", pa.int64(), "requests completed"),
        _f("bytes", pa.int64(), "bytes completed"),
        _f("lat_sum_ns", pa.int64(), "sum of issue-to-complete latency"),
        _f("lat_max_ns", pa.int64(), "longest latency"),
        _f("lat_hist", _hist, "log2 histogram of latency in microseconds"),
    ],
)

_table(
    "reclaim",
    "Direct-reclaim stalls (one row per stall, host-wide, flagged when in the target) and kswapd "
    "wakeups (kind = 'kswapd_wake', duration 0).",
    [
        _ts,
        _f("pid", pa.int32(), "tgid that stalled", False),
        _f("tid", pa.int32(), "thread id"),
        _f("comm", pa.string(), "comm"),
        _f("in_target", pa.bool_(), "belongs to the target tree"),
        _f("kind", pa.string(), "direct | memcg | memcg_softlimit | kswapd_wake"),
        _f("duration_ns", pa.int64(), "stall length (begin to end)"),
        _f("nr_reclaimed", pa.int64(), "pages reclaimed"),
    ],
)

_table(
    "oom_kills",
    "Every OOM-killer victim on the host (oom:mark_victim), with the memory cgroup's limit and "
    "usage read when the event arrived.",
    [
        _ts,
        _f("pid", pa.int32(), "victim pid", False),
        _f("comm", pa.string(), "victim comm"),
        _f("uid", pa.int32(), "victim uid"),
        _f("in_target", pa.bool_(), "victim belongs to the target tree"),
        _f("total_vm_bytes", pa.int64(), "total_vm"),
        _f("anon_rss_bytes", pa.int64(), "anon RSS"),
        _f("file_rss_bytes", pa.int64(), "file RSS"),
        _f("shmem_rss_bytes", pa.int64(), "shmem RSS"),
        _f("oom_score_adj", pa.int32(), "oom_score_adj"),
        _f("memcg", pa.string(), "memory cgroup path of the victim ('' when unknown)"),
        _f("memcg_limit_bytes", pa.int64(), "memcg limit at the event (null: none / unknown)"),
        _f("memcg_usage_bytes", pa.int64(), "memcg usage at the event"),
        _f("memcg_max_usage_bytes", pa.int64(), "memcg max usage at the event"),
    ],
)

_table(
    "proc_events",
    "Process lifecycle of the target tree: fork, exec and exit (exit with code / signal).",
    [
        _ts,
        _f("event", pa.string(), "fork | exec | exit (whole process) | thread_exit (bpf: one thread)", False),
        _f("pid", pa.int32(), "tgid", False),
        _f("tid", pa.int32(), "thread id"),
        _f("ppid", pa.int32(), "parent tgid (fork)"),
        _f("comm", pa.string(), "comm"),
        _f("exit_code", pa.int32(), "exit status (exit; null when killed by a signal)"),
        _f("signal", pa.int32(), "terminating signal (exit; null when it exited normally)"),
        _f("source", pa.string(), "bpf | psutil | waitpid"),
        _f("nvcsw", pa.int64(), "exit (bpf): the exiting thread's voluntary switches (task->nvcsw)"),
        _f("nivcsw", pa.int64(), "exit (bpf): the exiting thread's involuntary switches (task->nivcsw)"),
        _f("minflt", pa.int64(), "exit (bpf): the exiting thread's minor faults (task->min_flt)"),
        _f("majflt", pa.int64(), "exit (bpf): the exiting thread's major faults (task->maj_flt)"),
    ],
)

_table(
    "probe_stats",
    "Loss accounting: per probe per interval, events seen and events lost (perf/ring buffer "
    "overruns, map full). A recording never drops data without saying how much.",
    [
        _ts,
        _f("probe", pa.string(), "probe or collector name", False),
        _f("events", pa.int64(), "events handled in the interval"),
        _f("lost", pa.int64(), "events lost in the interval"),
        _f("reason", pa.string(), "what was lost (perf_buffer, map_full, queue_full ...)"),
    ],
)

# --------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------
_table(
    "gpu_devices",
    "Per GPU per sample, as NVML reports it (see docs/format.md for each counter's window).",
    [
        _ts,
        _f("gpu", pa.int16(), "NVML device index", False),
        _f("mem_total_bytes", pa.int64(), "memory total"),
        _f("mem_used_bytes", pa.int64(), "memory used (v2: excludes reserved)"),
        _f("mem_free_bytes", pa.int64(), "memory free"),
        _f("mem_reserved_bytes", pa.int64(), "driver-reserved memory (v2 only)"),
        _f("util_gpu_pct", pa.float32(), "a kernel ran during the driver's sample window (%)"),
        _f("util_mem_pct", pa.float32(), "memory controller busy (%)"),
        _f("sm_clock_mhz", pa.int32(), "SM clock"),
        _f("mem_clock_mhz", pa.int32(), "memory clock"),
        _f("power_mw", pa.int32(), "power draw (1 s average on Ampere+)"),
        _f("power_limit_mw", pa.int32(), "enforced power limit"),
        _f("energy_mj", pa.int64(), "cumulative energy since driver load"),
        _f("temp_c", pa.int16(), "GPU temperature"),
        _f("clocks_event_reasons", pa.uint64(), "clocks-event (throttle) reasons bitmask"),
        _f("pcie_tx_kbps", pa.int32(), "PCIe TX throughput (20 ms window)"),
        _f("pcie_rx_kbps", pa.int32(), "PCIe RX throughput (20 ms window)"),
        _f("ecc_corrected", pa.int64(), "volatile corrected ECC errors"),
        _f("ecc_uncorrected", pa.int64(), "volatile uncorrected ECC errors"),
    ],
)

_table(
    "gpu_processes",
    "Per GPU per compute process per sample: used memory, and SM / memory utilisation where the "
    "driver gives per-process samples.",
    [
        _ts,
        _f("gpu", pa.int16(), "device index", False),
        _f("pid", pa.int32(), "host pid", False),
        _f("in_target", pa.bool_(), "belongs to the target tree"),
        _f("used_bytes", pa.int64(), "GPU memory used by the process"),
        _f("sm_util_pct", pa.float32(), "per-process SM utilisation sample (null: unsupported)"),
        _f("mem_util_pct", pa.float32(), "per-process memory utilisation sample"),
    ],
)

_table(
    "gpu_events",
    "NVML events (Xid critical errors, ...) from a blocking event-set wait.",
    [
        _ts,
        _f("gpu", pa.int16(), "device index", False),
        _f("event", pa.string(), "xid | single_bit_ecc | double_bit_ecc | pstate | clock | lost | other"),
        _f("data", pa.int64(), "event data (the Xid number for xid)"),
        _f("pid", pa.int32(), "process the driver attributes it to, when given"),
    ],
)

# --------------------------------------------------------------------------------------------
# Request latency
# --------------------------------------------------------------------------------------------
_table(
    "spans",
    "Request timings from every source (span API, latency log, synthetic probe) on the "
    "recording's clock.",
    [
        _ts,
        _f("end_ns", pa.int64(), "span end (monotonic ns)", False),
        _f("name", pa.string(), "span name"),
        _f("source", pa.string(), "api | log | probe"),
        _f("pid", pa.int32(), "process that emitted it (api)"),
        _f("tid", pa.int32(), "thread that emitted it (api)"),
        _f("ttft_ns", pa.int64(), "time to first token from the start, when marked"),
        _f("prompt_tokens", pa.int32(), "prompt tokens"),
        _f("output_tokens", pa.int32(), "output tokens"),
        _f("ok", pa.bool_(), "false when the request failed"),
        _f("attrs", pa.string(), "other attributes as a JSON object"),
    ],
)

_table(
    "thread_names",
    "Python thread names reported by the span API (threading.current_thread().name), when they "
    "change: the kernel's comm of a Python thread is its process's name.",
    [
        _ts,
        _f("pid", pa.int32(), "process", False),
        _f("tid", pa.int32(), "thread id (native id)", False),
        _f("name", pa.string(), "the Python thread name (64 characters at most)"),
        _f("source", pa.string(), "api"),
    ],
)

_table(
    "scrape_samples",
    "Raw samples of a Prometheus /metrics endpoint (serving engine), cumulative as served; "
    "histogram deltas and windowed quantiles are derived when reading.",
    [
        _ts,
        _f("url", pa.string(), "scraped URL"),
        _f("metric", pa.string(), "sample name (e.g. vllm:e2e_request_latency_seconds_bucket)", False),
        _f("labels", pa.string(), "labels as canonical JSON (sorted keys), 'le' included"),
        _f("value", pa.float64(), "sample value"),
    ],
)

# --------------------------------------------------------------------------------------------
# Recorder-side findings
# --------------------------------------------------------------------------------------------
_table(
    "alerts",
    "What the recorder noticed while running (e.g. time-to-full memory extrapolation).",
    [
        _ts,
        _f("kind", pa.string(), "memory_growth | gpu_memory_growth | collector | ...", False),
        _f("subject", pa.string(), "what it is about (pid 123, GPU0 ...)"),
        _f("message", pa.string(), "human text"),
        _f("eta_s", pa.float64(), "seconds until the limit at the current growth (when relevant)"),
        _f("value", pa.float64(), "the measured value"),
        _f("limit", pa.float64(), "the limit it is compared with"),
    ],
)


def schema_for(table: str) -> pa.Schema:
    """The schema of ``table``; KeyError names the known tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def schema_version_of(schema: pa.Schema) -> int | None:
    meta = schema.metadata or {}
    raw = meta.get(b"autoglm_trace.schema_version")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def empty_table(table: str) -> pa.Table:
    return schema_for(table).empty_table()
