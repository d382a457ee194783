/* sched.c -- scheduler family: per target thread per bucket switch counts, on-CPU time,
 * run-queue latency (log2 histogram + sum + max), off-CPU time by state, migrations; and who
 * took the CPU (preemptions).
 *
 * Raw tracepoints, because the handlers need the tgid and comm of tasks that are not `current`
 * (the woken task, the task switched in). Arguments are the TP_PROTOs of
 * include/trace/events/sched.h:
 *   sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
 *                unsigned int prev_state)                                   (5.18+)
 *   sched_wakeup(struct task_struct *p), sched_wakeup_new(struct task_struct *p)
 *   sched_migrate_task(struct task_struct *p, int dest_cpu)
 *
 * Counting rule (kernel/sched/core.c __schedule): the kernel bumps prev->nivcsw unless the switch
 * is not a preemption and prev_state != TASK_RUNNING, in which case it bumps prev->nvcsw. We use
 * the same test, so the counts compare with /proc/PID/status voluntary/nonvoluntary_ctxt_switches.
 *
 * Cost per switch (measured by bench/bench_sched_profile.py): counters are plain adds, not atomics.
 * Each field has one writer at a time: a thread's switch-out and switch-in fields are written on
 * the CPU it leaves / enters under that runqueue's lock, its sleep fields by the one wakeup that
 * ends the sleep, its migrations under the task's pi_lock (kernel/sched/core.c set_task_cpu); and a
 * preempt_agg entry is keyed by the CPU that writes it. Task ids are read once per task per switch.
 * The clock is read only when a target thread is involved (bpf_ktime_get_ns is the dearest call in
 * these programs: ~30 ns on a KVM guest's TSC, as much as the rest of a switch's lookups together),
 * the bucket is divided out once per program run, and a wakeup writes only the thread's state: the
 * sleep it ends is added to the thread's bucket at its switch-in, where that bucket is looked up
 * anyway for the run-queue wait.
 */

#define TASK_RUNNING 0x0000
#define TASK_UNINTERRUPTIBLE 0x0002
#define TASK_NOLOAD 0x0400

#define OUT_NONE 0
#define OUT_SLEEP 1
#define OUT_DSTATE 2
#define OUT_PREEMPTED 3
#define OUT_WOKEN 4

/* Per target thread: where it is in its on-CPU / off-CPU / runnable cycle. */
struct thread_state {
    u64 ts_in;   /* switched in at (0: not on CPU / unknown) */
    u64 ts_out;  /* switched out at */
    u64 ts_wait; /* runnable since (wakeup or preemption); 0: not waiting */
    u32 out;     /* OUT_* */
    u32 tgid;    /* whose thread this state is (a reused tid of another process does not match) */
    u64 pend_sleep_ns;   /* sleep (S) ended by the last wakeup, added to the bucket at switch-in */
    u64 pend_dstate_ns;  /* same, D state */
    /* The waker seen at sched_waking (wakeups.c), charged at the sched_wakeup that follows, which
     * reads the clock anyway (kernel/sched/core.c try_to_wake_up: sched_waking, then
     * ttwu_runnable() or the activation fire sched_wakeup for the same wakeup). */
    u64 wk_task;         /* waker's task_struct (0: none pending) */
    u64 wk_since;        /* waker on CPU since (its ts_in; 0 when not a target thread) */
    u32 wk_tid;          /* 0 in interrupt context */
    u32 wk_tgid;
    u32 wk_ctx;          /* WCTX_* mask */
    u32 wk_in_target;
};

struct sched_val {
    u64 vol;
    u64 invol;
    u64 oncpu_ns;
    u64 runq_count;
    u64 runq_wait_ns;
    u64 runq_max_ns;
    u64 off_sleep_ns;
    u64 off_dstate_ns;
    u64 off_preempted_ns;
    u64 migrations;
    u32 hist[LOG2_SLOTS];
    char comm[TASK_COMM_LEN];
};

struct preempt_key {
    u64 bucket;
    u32 tgid;       /* target tgid that lost / waited for the CPU */
    u32 ptid;       /* task switched in (preemptor) */
    u32 ptgid;
    u32 cpu;
};

struct preempt_val {
    u64 count;      /* involuntary switches of target threads in favour of ptid */
    u64 wait_ns;    /* run-queue wait of target threads that ended when ptid left the CPU */
    u32 in_target;
    char comm[TASK_COMM_LEN];
};

BPF_HASH(thread_states, u32, struct thread_state, MAX_THREADS);
BPF_HASH(sched_agg, struct thread_bucket, struct sched_val, MAX_AGG);
BPF_HASH(preempt_agg, struct preempt_key, struct preempt_val, MAX_AGG);

static __always_inline struct sched_val *sched_slot(u64 bucket, u32 tid, u32 tgid, void *task)
{
    struct thread_bucket key = {.bucket = bucket, .tid = tid, .tgid = tgid};
    struct sched_val *v = sched_agg.lookup(&key);
    if (v)
        return v;
    struct sched_val zero = {};
    task_comm(task, zero.comm);
    if (sched_agg.update(&key, &zero) != 0) {
        count_drop(FAM_SCHED);
        return NULL;
    }
    return sched_agg.lookup(&key);
}

/* The state of a target thread, or NULL for a thread outside the target. States are created for
 * target threads only (and deleted at thread exit, proc.c), so a state with the same tgid means
 * "in the target" without a second lookup in target_tgids: one hash lookup per task per switch. */
static __always_inline struct thread_state *target_thread(u32 tid, u32 tgid, int is_current)
{
    struct thread_state *st = thread_states.lookup(&tid);
    if (st && st->tgid == tgid)
        return st;
    if (!(is_current ? current_in_target(tgid) : tgid_in_target(tgid)))
        return NULL;
    struct thread_state zero = {.tgid = tgid};
    if (st) {  /* the tid was reused by another target process */
        *st = zero;
        return st;
    }
    if (thread_states.update(&tid, &zero) != 0) {
        count_drop(FAM_SCHED);
        return NULL;
    }
    return thread_states.lookup(&tid);
}

/* Keyed by the CPU that runs it (sched_switch's): one writer per entry. */
static __always_inline void charge_preemptor(u64 bucket, u32 tgid, void *ptask, u32 ptid, u32 ptgid,
                                             u64 count, u64 wait)
{
    struct preempt_key key = {
        .bucket = bucket,
        .tgid = tgid,
        .ptid = ptid,
        .ptgid = ptgid,
        .cpu = bpf_get_smp_processor_id(),
    };
    struct preempt_val *v = preempt_agg.lookup(&key);
    if (!v) {
        struct preempt_val zero = {};
        zero.in_target = key.ptid != 0 && tgid_in_target(key.ptgid);
        task_comm(ptask, zero.comm);
        if (preempt_agg.update(&key, &zero) != 0) {
            count_drop(FAM_SCHED);
            return;
        }
        v = preempt_agg.lookup(&key);
        if (!v)
            return;
    }
    v->count += count;
    v->wait_ns += wait;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
    bool preempt = (bool)ctx->args[0];
    void *prev = (void *)ctx->args[1];
    void *next = (void *)ctx->args[2];
    u32 prev_state = (u32)ctx->args[3];

    u64 id = bpf_get_current_pid_tgid();   /* current == prev */
    u32 prev_tid = (u32)id, prev_tgid = id >> 32;
    u32 next_tid, next_tgid;
    task_ids(next, &next_tid, &next_tgid);

    struct thread_state *pst = prev_tid != 0 ? target_thread(prev_tid, prev_tgid, 1) : NULL;
    struct thread_state *nst = next_tid != 0 ? target_thread(next_tid, next_tgid, 0) : NULL;
    /* The clock is read once, by whichever side is traced first (neither: no read). */
    u64 now = 0, bucket = 0;
    u32 handled = 0;

    /* --- prev leaves the CPU --- */
    if (pst) {
        handled += 1;
        now = bpf_ktime_get_ns();
        bucket = bucket_of(now);
        struct sched_val *v = sched_slot(bucket, prev_tid, prev_tgid, prev);
        if (v) {
            if (pst->ts_in && now > pst->ts_in)
                v->oncpu_ns += now - pst->ts_in;
            pst->ts_in = 0;
            pst->ts_out = now;
            if (preempt || prev_state == TASK_RUNNING) {
                v->invol += 1;
                pst->out = OUT_PREEMPTED;
                pst->ts_wait = now;
                charge_preemptor(bucket, prev_tgid, next, next_tid, next_tgid, 1, 0);
            } else {
                v->vol += 1;
                pst->out = ((prev_state & TASK_UNINTERRUPTIBLE) && !(prev_state & TASK_NOLOAD))
                               ? OUT_DSTATE : OUT_SLEEP;
                pst->ts_wait = 0;
            }
        }
    }

    /* --- next gets the CPU --- */
    if (nst) {
        handled += 1;
        if (now == 0) {
            now = bpf_ktime_get_ns();
            bucket = bucket_of(now);
        }
        if (nst->ts_wait && now > nst->ts_wait) {
            u64 wait = now - nst->ts_wait;
            struct sched_val *v = sched_slot(bucket, next_tid, next_tgid, next);
            if (v) {
                v->runq_count += 1;
                v->runq_wait_ns += wait;
                if (wait > v->runq_max_ns)
                    v->runq_max_ns = wait;
                u32 slot = log2_slot(wait / 1000) & (LOG2_SLOTS - 1);
                v->hist[slot] += 1;
                if (nst->out == OUT_PREEMPTED && nst->ts_out && now > nst->ts_out)
                    v->off_preempted_ns += now - nst->ts_out;
                v->off_sleep_ns += nst->pend_sleep_ns;
                v->off_dstate_ns += nst->pend_dstate_ns;
                nst->pend_sleep_ns = 0;
                nst->pend_dstate_ns = 0;
            }
            /* The task that held the CPU until now is charged with the wait. */
            charge_preemptor(bucket, next_tgid, prev, prev_tid, prev_tgid, 0, wait);
        }
        nst->ts_in = now;
        nst->ts_wait = 0;
        nst->out = OUT_NONE;
    }
    if (handled)
        count_events(FAM_SCHED, handled);
    return 0;
}

#ifdef HAVE_WAKEUPS
static __always_inline void charge_waker(struct thread_state *st, u64 now, u32 tid, u32 tgid);
#endif

static __always_inline int on_wakeup(void *p)
{
    u32 tid, tgid;
    task_ids(p, &tid, &tgid);
    struct thread_state *st = tid != 0 ? target_thread(tid, tgid, 0) : NULL;
    if (!st)
        return 0;
    u64 now = bpf_ktime_get_ns();
    count_event(FAM_SCHED);
#ifdef HAVE_WAKEUPS
    if (st->wk_task) {   /* the waker seen at sched_waking, before st->out changes below */
        charge_waker(st, now, tid, tgid);
        st->wk_task = 0;
    }
#endif
    if (st->out == OUT_SLEEP || st->out == OUT_DSTATE) {
        if (st->ts_out && now > st->ts_out) {
            if (st->out == OUT_DSTATE)
                st->pend_dstate_ns += now - st->ts_out;
            else
                st->pend_sleep_ns += now - st->ts_out;
        }
        st->out = OUT_WOKEN;
        st->ts_wait = now;
    } else if (st->out == OUT_NONE && st->ts_in == 0) {
        /* A new thread (sched_wakeup_new) or one first seen asleep: wait from now. */
        st->out = OUT_WOKEN;
        st->ts_wait = now;
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup)
{
    return on_wakeup((void *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    return on_wakeup((void *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(sched_migrate_task)
{
    void *p = (void *)ctx->args[0];
    u32 tid, tgid;
    task_ids(p, &tid, &tgid);
    if (tid == 0 || !tgid_in_target(tgid))
        return 0;
    count_event(FAM_SCHED);
    struct sched_val *v = sched_slot(bucket_of(bpf_ktime_get_ns()), tid, tgid, p);
    if (v)
        v->migrations += 1;
    return 0;
}
