/* common.h -- shared by every probe family; probes/bpf_program.py concatenates it first.
 *
 * The generated prologue (probes/bpf_program.py: generate_program) defines, before this file:
 *   BUCKET_NS        aggregation bucket length in ns (ts / BUCKET_NS = bucket index)
 *   FILTER_MODE      0 = whole host, 1 = process tree (tgid set), 2 = cgroup (tgid set + v2 cgroup ids)
 *   MAX_TARGETS, MAX_THREADS, MAX_AGG   map sizes (bounded memory in the kernel)
 *   OFF_TASK_*       task_struct member offsets taken from the running kernel's BTF
 *                    (probes/btf.py): the installed headers may not match the kernel, so no
 *                    kernel struct is ever dereferenced through a header definition.
 *   HAVE_<FAMILY>    for each enabled family (SCHED, WAKEUPS, FAULTS, IO, MEMORY, OOM, PROC)
 */

#define TASK_COMM_LEN 16
#define LOG2_SLOTS 32

/* Family indexes into `stats` (kept in sync with probes/bpf_program.py FAMILIES). */
#define FAM_PROC 0
#define FAM_SCHED 1
#define FAM_FAULTS 2
#define FAM_IO 3
#define FAM_MEMORY 4
#define FAM_OOM 5
#define FAM_WAKEUPS 6
#define NR_FAMILIES 7

/* The target filter: tgids of the traced tree, seeded from user space and extended in the
 * kernel at fork (proc.c), so a child that lives a millisecond is still attributed. */
BPF_HASH(target_tgids, u32, u8, MAX_TARGETS);
/* cgroup v2 ids (kernfs inode numbers) of the traced cgroup and its descendants. */
BPF_HASH(target_cgroups, u64, u8, 1024);

/* Per family: stats[fam * 3] = events handled, stats[fam * 3 + 1] = map updates refused (map
 * full), stats[fam * 3 + 2] = perf-buffer writes refused (buffer full: the sample is lost). */
#define NR_STATS 3
BPF_PERCPU_ARRAY(stats, u64, NR_FAMILIES * NR_STATS);

static __always_inline void count_stat(u32 fam, u32 which, u64 n)
{
    u32 idx = fam * NR_STATS + which;
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

#define count_event(fam) count_stat(fam, 0, 1)
/* n events at once: one lookup per program run, not per task it handled. */
#define count_events(fam, n) count_stat(fam, 0, n)
#define count_drop(fam) count_stat(fam, 1, 1)
/* A perf-buffer write refused (buffer full): counted here, at the source, as a lost event. */
#define count_perf_drop(fam) count_stat(fam, 2, 1)

/* Reading task_struct members by BTF offset (see the prologue). */
static __always_inline u32 task_u32(void *task, u32 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)task + off);
    return v;
}

static __always_inline u64 task_u64(void *task, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)task + off);
    return v;
}

/* pid and tgid of a task that is not `current`: one read when they are adjacent, as they are in
 * every task_struct (include/linux/sched.h: pid_t pid; pid_t tgid;) -- a helper call saved on
 * every context switch. */
static __always_inline void task_ids(void *task, u32 *tid, u32 *tgid)
{
#if OFF_TASK_TGID == OFF_TASK_PID + 4
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)task + OFF_TASK_PID);
    *tid = (u32)v;
    *tgid = v >> 32;
#else
    *tid = task_u32(task, OFF_TASK_PID);
    *tgid = task_u32(task, OFF_TASK_TGID);
#endif
}

static __always_inline void task_comm(void *task, char *dst)
{
    bpf_probe_read_kernel(dst, TASK_COMM_LEN, (char *)task + OFF_TASK_COMM);
}

/* Typed access. With HAVE_TASK_STORAGE (probes/btf.py typed_problem(): BTF-typed tracepoints, task
 * storage and bpf_get_current_task_btf, 5.11+) the scheduler's hot programs are tp_btf programs:
 * their arguments are kernel pointers of a type the verifier knows, so reading a task member is a
 * plain load (made fault-safe by the JIT) instead of a bpf_probe_read_kernel call, about 40 ns each
 * here, and a thread's state lives in its task (task storage: a pointer chase, not a hash lookup).
 * Only pointers the verifier types may be loaded from this way: tracepoint arguments and
 * CURRENT_TASK(); a task pointer kept in a map is a number again (task_* above). Without them:
 * raw tracepoints and probe reads. */
#ifdef HAVE_TASK_STORAGE
typedef struct task_struct *ktask;
#define TP_BTF(event) int tp_btf__##event(u64 *ctx)
#define TP_ARG(i) (ctx[i])
#define CURRENT_TASK() bpf_get_current_task_btf()
/* One load per member: the verifier refuses a load that spans two members (pid and tgid). */
#define kt_u32(t, off) (*(u32 *)((char *)(t) + (off)))
#define kt_u64(t, off) (*(u64 *)((char *)(t) + (off)))
#define kt_ids(t, tidp, tgidp) do { *(tidp) = kt_u32(t, OFF_TASK_PID); *(tgidp) = kt_u32(t, OFF_TASK_TGID); } while (0)
/* dst: a char[TASK_COMM_LEN] member of a map value or stack struct (8-byte aligned). */
#define kt_comm(t, dst) do { u64 w_[2] = {kt_u64(t, OFF_TASK_COMM), kt_u64(t, OFF_TASK_COMM + 8)}; \
                             __builtin_memcpy(dst, w_, TASK_COMM_LEN); } while (0)
#else
typedef void *ktask;
#define TP_BTF(event) RAW_TRACEPOINT_PROBE(event)
#define TP_ARG(i) (ctx->args[i])
#define CURRENT_TASK() ((void *)bpf_get_current_task())
#define kt_u32(t, off) task_u32(t, off)
#define kt_u64(t, off) task_u64(t, off)
#define kt_ids(t, tidp, tgidp) task_ids(t, tidp, tgidp)
#define kt_comm(t, dst) task_comm(t, dst)
#endif

static __always_inline int tgid_in_target(u32 tgid)
{
#if FILTER_MODE == 0
    return 1;
#else
    return target_tgids.lookup(&tgid) != NULL;
#endif
}

/* The current task belongs to the target. In cgroup mode a task found in a traced v2 cgroup is
 * added to the tgid set, so later non-current lookups (wakeups, switch-in) match it too. */
static __always_inline int current_in_target(u32 tgid)
{
#if FILTER_MODE == 0
    return 1;
#else
    if (target_tgids.lookup(&tgid))
        return 1;
#if FILTER_MODE == 2
    u64 cg = bpf_get_current_cgroup_id();
    if (target_cgroups.lookup(&cg)) {
        u8 one = 1;
        target_tgids.update(&tgid, &one);
        return 1;
    }
#endif
    return 0;
#endif
}

static __always_inline u64 bucket_of(u64 ts)
{
    return ts / BUCKET_NS;
}

/* Log2 slot of v (callers pass microseconds): slot 0 holds v == 0, slot i holds
 * 2^(i-1) <= v < 2^i (the LOG2_BUCKETS rule in autoglm_trace/schema.py); the top slot takes the rest. */
static __always_inline u32 log2_slot(u64 v)
{
    u32 r = 0;
    if (v == 0)
        return 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    r += 1;
    return r >= LOG2_SLOTS ? LOG2_SLOTS - 1 : r;
}

/* log2_slot(ns / 1000) without the division (a 64-bit DIV: tens of cycles on x86, and clang has no
 * multiply-high for BPF to replace it with). v = ns >> 10 is at most 2.4% below ns / 1000, so the
 * microsecond value u sits in v's slot s or the next: 2^(s-1) <= v <= u < 2^(s+1) (ns < 1024: v = 0,
 * u <= 1). u >= 2^s exactly when ns >= 1000 << s. */
static __always_inline u32 log2_slot_us(u64 ns)
{
    u32 s = log2_slot(ns >> 10);
    if (s < LOG2_SLOTS - 1 && ns >= (1000ULL << s))
        s += 1;
    return s;
}

/* Key of the per-thread, per-bucket aggregations (sched, faults). */
struct thread_bucket {
    u64 bucket;
    u32 tid;
    u32 tgid;
};
