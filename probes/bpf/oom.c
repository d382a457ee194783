/* oom.c -- every OOM-killer victim on the host: oom:mark_victim (include/trace/events/oom.h;
 * mm/oom_kill.c __oom_kill_process -> mark_oom_victim). Sizes are in kB as the tracepoint gives
 * them (PAGES_TO_KB / K()). The memcg's limit and usage are read by user space on arrival.
 */

struct oom_event {
    u64 ts;
    u64 total_vm_kb;
    u64 anon_rss_kb;
    u64 file_rss_kb;
    u64 shmem_rss_kb;
    u32 pid;
    u32 uid;
    u32 trigger_tgid;   /* the task whose allocation invoked the OOM killer */
    u32 in_target;
    s32 oom_score_adj;
    u32 pad;
    char comm[TASK_COMM_LEN];
};

BPF_PERF_OUTPUT(oom_events);

TRACEPOINT_PROBE(oom, mark_victim)
{
    struct oom_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = args->pid;
    e.uid = args->uid;
    e.total_vm_kb = args->total_vm;
    e.anon_rss_kb = args->anon_rss;
    e.file_rss_kb = args->file_rss;
    e.shmem_rss_kb = args->shmem_rss;
    e.oom_score_adj = args->oom_score_adj;
    e.trigger_tgid = bpf_get_current_pid_tgid() >> 32;
    /* The victim is a thread-group leader found by select_bad_process (pid == tgid) in the
     * common case; find_lock_task_mm may pick another thread, which user space then resolves. */
    e.in_target = tgid_in_target(e.pid);
    TP_DATA_LOC_READ_CONST(&e.comm, comm, TASK_COMM_LEN);
    count_event(FAM_OOM);
    if (oom_events.perf_submit(args, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_OOM);
    return 0;
}
