/* memory.c -- direct-reclaim stalls (one event per stall, host-wide, flagged when in the target)
 * and kswapd wakeups. Tracepoints of include/trace/events/vmscan.h; begin/end pairs run in the
 * stalling task's context (mm/vmscan.c try_to_free_pages / try_to_free_mem_cgroup_pages /
 * mem_cgroup_shrink_node), kswapd_wake in kswapd itself.
 */

#define RECLAIM_DIRECT 1
#define RECLAIM_MEMCG 2
#define RECLAIM_MEMCG_SOFTLIMIT 3
#define RECLAIM_KSWAPD_WAKE 4

struct reclaim_event {
    u64 ts;            /* stall begin */
    u64 duration_ns;
    u64 nr_reclaimed;
    u32 tgid;
    u32 tid;
    u32 kind;
    u32 in_target;
    char comm[TASK_COMM_LEN];
};

struct reclaim_start {
    u64 ts;
    u32 kind;
    u32 pad;
};

BPF_HASH(reclaim_starts, u32, struct reclaim_start, MAX_THREADS);
BPF_PERF_OUTPUT(reclaim_events);

static __always_inline int reclaim_begin(void *ctx, u32 kind)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct reclaim_start s = {.ts = bpf_ktime_get_ns(), .kind = kind};
    if (reclaim_starts.update(&tid, &s) != 0)
        count_drop(FAM_MEMORY);
    return 0;
}

static __always_inline int reclaim_end(void *ctx, u64 nr_reclaimed)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct reclaim_start *s = reclaim_starts.lookup(&tid);
    if (!s)
        return 0;
    struct reclaim_event e = {};
    u64 now = bpf_ktime_get_ns();
    e.ts = s->ts;
    e.duration_ns = now > s->ts ? now - s->ts : 0;
    e.nr_reclaimed = nr_reclaimed;
    e.tgid = id >> 32;
    e.tid = tid;
    e.kind = s->kind;
    e.in_target = current_in_target(e.tgid);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    reclaim_starts.delete(&tid);
    count_event(FAM_MEMORY);
    if (reclaim_events.perf_submit(ctx, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_MEMORY);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_begin)
{
    return reclaim_begin(args, RECLAIM_DIRECT);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_end)
{
    return reclaim_end(args, args->nr_reclaimed);
}

#ifdef HAVE_TP_MEMCG_RECLAIM
TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin)
{
    return reclaim_begin(args, RECLAIM_MEMCG);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end)
{
    return reclaim_end(args, args->nr_reclaimed);
}
#endif

#ifdef HAVE_TP_MEMCG_SOFTLIMIT_RECLAIM
TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_softlimit_reclaim_begin)
{
    return reclaim_begin(args, RECLAIM_MEMCG_SOFTLIMIT);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_softlimit_reclaim_end)
{
    return reclaim_end(args, args->nr_reclaimed);
}
#endif

#ifdef HAVE_TP_KSWAPD_WAKE
TRACEPOINT_PROBE(vmscan, mm_vmscan_kswapd_wake)
{
    u64 id = bpf_get_current_pid_tgid();
    struct reclaim_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.tgid = id >> 32;
    e.tid = (u32)id;
    e.kind = RECLAIM_KSWAPD_WAKE;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    count_event(FAM_MEMORY);
    if (reclaim_events.perf_submit(args, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_MEMORY);
    return 0;
}
#endif
