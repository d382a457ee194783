/* proc.c -- process lifecycle of the target and upkeep of the filter.
 *
 * Raw tracepoints (include/trace/events/sched.h):
 *   sched_process_fork(struct task_struct *parent, struct task_struct *child)
 *   sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
 *   sched_process_exit(struct task_struct *p[, bool group_dead])   (group_dead: 6.16+)
 * A child forked by a target process joins target_tgids here, in the kernel, before it runs.
 * At exit, kernel/exit.c do_exit has stored tsk->exit_code (code << 8, or the signal number in the
 * low 7 bits) before trace_sched_process_exit; the task's own nvcsw / nivcsw / min_flt / maj_flt
 * are final at that point too.
 */

#define PROC_FORK 1
#define PROC_EXEC 2
#define PROC_EXIT 3
#define PROC_THREAD_EXIT 4

struct proc_event {
    u64 ts;
    u64 nvcsw;
    u64 nivcsw;
    u64 min_flt;
    u64 maj_flt;
    u32 type;
    u32 pid;
    u32 tid;
    u32 ppid;
    s32 exit_code;
    u32 pad;
    char comm[TASK_COMM_LEN];
};

BPF_PERF_OUTPUT(proc_events);

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 ptgid = task_u32(parent, OFF_TASK_TGID);
    if (!current_in_target(ptgid))
        return 0;
    u32 ctid = task_u32(child, OFF_TASK_PID);
    u32 ctgid = task_u32(child, OFF_TASK_TGID);
    if (ctid != ctgid)
        return 0;   /* a new thread of a target process: already covered by its tgid */
#if FILTER_MODE != 0
    u8 one = 1;
    if (target_tgids.update(&ctgid, &one) != 0)
        count_drop(FAM_PROC);
#endif
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.type = PROC_FORK;
    e.pid = ctgid;
    e.tid = ctid;
    e.ppid = ptgid;
    task_comm(child, e.comm);
    count_event(FAM_PROC);
    if (proc_events.perf_submit(ctx, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_PROC);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!current_in_target(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.type = PROC_EXEC;
    e.pid = tgid;
    e.tid = (u32)id;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    count_event(FAM_PROC);
    if (proc_events.perf_submit(ctx, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_PROC);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    void *task = (void *)ctx->args[0];
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
#ifdef HAVE_SCHED
    sched_thread_exit(tid, tgid);
#endif
#ifdef HAVE_MEMORY
    reclaim_starts.delete(&tid);
#endif
    if (!current_in_target(tgid))
        return 0;
#ifdef HAVE_EXIT_GROUP_DEAD
    int group_dead = (bool)ctx->args[1];
#else
    int group_dead = tid == tgid;
#endif
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.type = group_dead ? PROC_EXIT : PROC_THREAD_EXIT;
    e.pid = tgid;
    e.tid = tid;
    e.exit_code = (s32)task_u32(task, OFF_TASK_EXIT_CODE);
    e.nvcsw = task_u64(task, OFF_TASK_NVCSW);
    e.nivcsw = task_u64(task, OFF_TASK_NIVCSW);
    e.min_flt = task_u64(task, OFF_TASK_MIN_FLT);
    e.maj_flt = task_u64(task, OFF_TASK_MAJ_FLT);
    void *parent = (void *)task_u64(task, OFF_TASK_REAL_PARENT);
    if (parent)
        e.ppid = task_u32(parent, OFF_TASK_TGID);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
#if FILTER_MODE != 0
    /* Keep the filter bounded; user space keeps every pid ever seen (TargetTree.ever). */
    if (group_dead)
        target_tgids.delete(&tgid);
#endif
    count_event(FAM_PROC);
    if (proc_events.perf_submit(ctx, &e, sizeof(e)) != 0)
        count_perf_drop(FAM_PROC);
    return 0;
}
