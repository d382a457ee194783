/* faults.c -- user page faults of the target per thread per bucket.
 *
 * exceptions:page_fault_user (arch/x86/mm/fault.c, trace_page_fault_entries) fires on every user
 * #PF, in the faulting task's context. Major faults come from the PERF_COUNT_SW_PAGE_FAULTS_MAJ
 * software event (mm/memory.c mm_account_fault: perf_sw_event(PERF_COUNT_SW_PAGE_FAULTS_MAJ) on
 * the same path that bumps task->maj_flt), sampled with period 1 and handled by on_major_fault,
 * which probes/kernel.py attaches on every CPU.
 */

struct fault_val {
    u64 faults;
    u64 major;
};

BPF_HASH(fault_agg, struct thread_bucket, struct fault_val, MAX_AGG);

static __always_inline struct fault_val *fault_slot(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!current_in_target(tgid))
        return NULL;
    struct thread_bucket key = {.bucket = bucket_of(bpf_ktime_get_ns()), .tid = (u32)id, .tgid = tgid};
    struct fault_val *v = fault_agg.lookup(&key);
    if (v)
        return v;
    struct fault_val zero = {};
    if (fault_agg.update(&key, &zero) != 0) {
        count_drop(FAM_FAULTS);
        return NULL;
    }
    return fault_agg.lookup(&key);
}

TRACEPOINT_PROBE(exceptions, page_fault_user)
{
    struct fault_val *v = fault_slot();
    if (v) {
        count_event(FAM_FAULTS);
        __sync_fetch_and_add(&v->faults, 1);
    }
    return 0;
}

int on_major_fault(struct bpf_perf_event_data *ctx)
{
    struct fault_val *v = fault_slot();
    if (v) {
        count_event(FAM_FAULTS);
        __sync_fetch_and_add(&v->major, 1);
    }
    return 0;
}
