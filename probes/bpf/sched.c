/* sched.c -- scheduler family: per target thread per bucket switch counts, on-CPU time,
 * run-queue latency (log2 histogram + sum + max), off-CPU time by state, migrations; and who
 * took the CPU (preemptions).
 *
 * tp_btf programs where the kernel has them (common.h, HAVE_TASK_STORAGE), raw tracepoints
 * elsewhere: either way the handlers see tasks that are not `current` (the one switched in).
 * Arguments are the TP_PROTOs of include/trace/events/sched.h:
 *   sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
 *                unsigned int prev_state)                                   (5.18+)
 *   sched_migrate_task(struct task_struct *p, int dest_cpu)
 *
 * Counting rule (kernel/sched/core.c __schedule): the kernel bumps prev->nivcsw unless the switch
 * is not a preemption and prev_state != TASK_RUNNING, in which case it bumps prev->nvcsw. We use
 * the same test, so the counts compare with /proc/PID/status voluntary/nonvoluntary_ctxt_switches.
 *
 * Cost per switch (measured by bench/bench_sched_profile.py): counters are plain adds, not atomics.
 * Each field has one writer at a time: a thread's state and its bucket are written on the CPU it
 * leaves / enters under that runqueue's lock (or by the thread itself at exit), its migrations
 * under the task's pi_lock (kernel/sched/core.c set_task_cpu); and a preempt_agg entry is keyed by
 * the CPU that writes it. Task ids are read once per task per switch. The clock is read only when
 * a target thread is involved (bpf_ktime_get_ns is the dearest call in these programs: 30-85 ns on a
 * KVM guest, as much as the rest of a switch together), once per switch.
 *
 * A thread's state (struct thread_state) is task storage where the kernel has it: found from the
 * task in a few ns, freed with the task, never confused by a reused tid. A task outside the target
 * gets a state too, saying so: a switch between two untraced tasks then costs two storage reads and
 * no hash lookup. In tree mode that verdict is kept while `target_gen` is unchanged (user space bumps
 * it whenever it adds tgids to the filter; the kernel adds a forked child's tgid before the child
 * ever runs, so no verdict on it exists yet). Elsewhere the state is a hash entry keyed by tid,
 * created for target threads only and deleted at exit.
 *
 * No program runs at wakeup. The run-queue wait is the kernel's own: sched_info_enqueue() stamps
 * the enqueue (wakeup or preemption) and sched_info_arrive() adds enqueue-to-run to
 * task->sched_info.run_delay and bumps pcount (kernel/sched/stats.h, CONFIG_SCHED_INFO), in
 * prepare_task_switch() -- after sched_switch fired. So the stretch off CPU that ended at a
 * switch-in is settled at the thread's next switch-out (or exit): its wait is the growth of
 * run_delay, the rest of the stretch (switch-out to switch-in, our clock) was sleep or preemption.
 * One task read at switch-out replaces a program run and a clock read on every wakeup of the host.
 */
#define TASK_RUNNING 0x0000
#define TASK_UNINTERRUPTIBLE 0x0002
#define TASK_NOLOAD 0x0400

#define OUT_NONE 0
#define OUT_SLEEP 1
#define OUT_DSTATE 2
#define OUT_PREEMPTED 3
#define OUT_WOKEN 4

/* Per target thread: where it is in its on-CPU / off-CPU cycle. */
struct thread_state {
    u64 ts_in;    /* switched in at (0: not on CPU / unknown) */
    u64 ts_out;   /* switched out at */
    u64 off_ns;   /* the stretch off CPU that ended at the last switch-in, settled at the next switch-out */
    u64 pcount;   /* task->sched_info.pcount / run_delay when last read: the next read's growth is */
    u64 run_delay;/* the run-queue wait of the arrivals between (see the comment at the top) */
    u64 pre_task; /* the task switched out as this one got the CPU: charged with the wait that ended */
    u32 pre_tid;
    u32 pre_tgid;
    u32 out;      /* OUT_*: how it left the CPU last */
    u32 off_out;  /* how it was off CPU for off_ns (OUT_NONE: no stretch to settle) */
    u32 tgid;     /* whose thread this state is (a reused tid of another process does not match) */
    u32 in_target;/* 0: a task outside the target (task storage only; see the top) */
    u32 gen;      /* target_gen when in_target = 0 was decided (tree mode) */
    u32 pad;      /* no hole: a state built on the stack is copied into the map whole */
    char pre_comm[TASK_COMM_LEN];  /* read at switch-in: pre_task may be gone by the settlement */
    /* The waker seen at sched_waking (wakeups.c), charged when the sleep it ended is settled. */
    u64 wk_task;  /* waker's task_struct | 1 (0: none pending) */
    u64 wk_since; /* waker on CPU since (its ts_in; 0 when not a target thread) */
    u32 wk_tid;   /* 0 in interrupt context */
    u32 wk_tgid;
    u32 wk_ctx;   /* WCTX_* mask */
    u32 wk_in_target;
    u32 wk_on_cpu;/* the waking came while the thread was still on CPU: it ends the coming sleep */
    u32 wk_pad;
    char wk_comm[TASK_COMM_LEN];
};

/* The first INLINE_CHARGES preemptors and wakers of a thread in a bucket are kept in its sched_val
 * row, which the switch has looked up anyway: a busy pair (each the other's waker and preemptor)
 * then costs no preempt_agg / waker_agg lookup per switch. The rest go to those maps. User space
 * (probes/kernel.py) adds both into the same preemptions / wakeups rows. A slot is free while its
 * count and time are zero (a charge always adds one of them). */
#define INLINE_CHARGES 2

struct preempt_slot {   /* a preempt_agg row, for this thread */
    u32 ptid;
    u32 ptgid;
    u32 cpu;
    u32 in_target;
    u64 count;
    u64 wait_ns;
    char comm[TASK_COMM_LEN];
};

struct waker_slot {     /* a waker_agg row (wakeups.c), for this thread */
    u32 waker_tid;
    u32 waker_pid;
    u32 ctx;
    u32 state;
    u64 count;
    u64 sleep_ns;
    u64 sleep_max_ns;
    u64 waker_oncpu_ns;
    u32 waker_in_target;
    u32 pad;
    char comm[TASK_COMM_LEN];
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
    struct preempt_slot pre[INLINE_CHARGES];
    struct waker_slot wk[INLINE_CHARGES];
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

#ifdef HAVE_TASK_STORAGE
BPF_TASK_STORAGE(thread_states, struct thread_state);
#if FILTER_MODE == 1
BPF_ARRAY(target_gen, u32, 1);
#endif
#else
BPF_HASH(thread_states, u32, struct thread_state, MAX_THREADS);
#endif
BPF_HASH(sched_agg, struct thread_bucket, struct sched_val, MAX_AGG);
BPF_HASH(preempt_agg, struct preempt_key, struct preempt_val, MAX_AGG);
/* A row's initial value: zero, never written (a sched_val is too big for the 512-byte stack). */
BPF_ARRAY(sched_zero, struct sched_val, 1);

/* Insert, not update: an update of a key another CPU inserted meanwhile (a migration's entry, or the
 * thread's own) would replace that entry with zeros. */
static __always_inline struct sched_val *sched_slot(u64 bucket, u32 tid, u32 tgid, ktask task)
{
    struct thread_bucket key = {.bucket = bucket, .tid = tid, .tgid = tgid};
    struct sched_val *v = sched_agg.lookup(&key);
    if (v)
        return v;
    u32 idx = 0;
    struct sched_val *zero = sched_zero.lookup(&idx);
    if (!zero)
        return NULL;
    if (sched_agg.insert(&key, zero) != 0) {
        v = sched_agg.lookup(&key);
        if (!v)
            count_drop(FAM_SCHED);  /* full (a key inserted meanwhile fails the insert but is found) */
        return v;
    }
    v = sched_agg.lookup(&key);
    if (v)
        kt_comm(task, v->comm);
    return v;
}

/* task->sched_info.{pcount, run_delay}: one read when adjacent, as in every struct sched_info
 * (include/linux/sched.h: unsigned long pcount; unsigned long long run_delay;). */
static __always_inline void sched_info_read(ktask task, u64 *pcount, u64 *run_delay)
{
#ifndef OFF_TASK_SI_PCOUNT
    /* No CONFIG_SCHED_INFO: no wait is ever known (probes/kernel.py says so); stretches count as
     * sleep or preemption whole. */
    *pcount = 0;
    *run_delay = 0;
#elif defined(HAVE_TASK_STORAGE)
    *pcount = kt_u64(task, OFF_TASK_SI_PCOUNT);
    *run_delay = kt_u64(task, OFF_TASK_SI_RUN_DELAY);
#elif OFF_TASK_SI_RUN_DELAY == OFF_TASK_SI_PCOUNT + 8
    u64 v[2] = {};
    bpf_probe_read_kernel(v, sizeof(v), (char *)task + OFF_TASK_SI_PCOUNT);
    *pcount = v[0];
    *run_delay = v[1];
#else
    *pcount = task_u64(task, OFF_TASK_SI_PCOUNT);
    *run_delay = task_u64(task, OFF_TASK_SI_RUN_DELAY);
#endif
}

/* The state of a target thread that has one, or NULL (sched_waking: it creates none). */
static __always_inline struct thread_state *state_of(ktask task, u32 tid, u32 tgid)
{
#ifdef HAVE_TASK_STORAGE
    struct thread_state *st = thread_states.task_storage_get(task, 0, 0);
#else
    struct thread_state *st = thread_states.lookup(&tid);
#endif
    return st && st->in_target && st->tgid == tgid ? st : NULL;
}

/* The state of a target thread, created on first sight, or NULL for a thread outside the target.
 * A new state starts from the task's run-queue accounting as it is now -- from zero for a thread
 * that has never run (pcount 0: a new thread's first wait is its whole run_delay). */
static __always_inline struct thread_state *target_thread(ktask task, u32 tid, u32 tgid, int is_current)
{
#ifdef HAVE_TASK_STORAGE
    struct thread_state *st = thread_states.task_storage_get(task, 0, 0);
    if (st && st->tgid == tgid && st->in_target)
        return st;
#if FILTER_MODE == 1
    u32 gen_idx = 0;
    u32 *gen = target_gen.lookup(&gen_idx);  /* an array: inlined by the verifier, no hash */
    if (gen && st && st->tgid == tgid && st->gen == *gen)
        return NULL;  /* still outside: no hash lookup */
#endif
#else
    struct thread_state *st = thread_states.lookup(&tid);
    if (st && st->tgid == tgid)
        return st;
#endif
    if (!(is_current ? current_in_target(tgid) : tgid_in_target(tgid))) {
#if defined(HAVE_TASK_STORAGE) && FILTER_MODE == 1
        if (!gen)
            return NULL;
        if (st) {
            st->tgid = tgid;
            st->gen = *gen;
        } else {
            struct thread_state out = {.tgid = tgid, .gen = *gen};
            thread_states.task_storage_get(task, &out, BPF_LOCAL_STORAGE_GET_F_CREATE);
        }
#endif
        return NULL;
    }
    struct thread_state zero = {.tgid = tgid, .in_target = 1};
    sched_info_read(task, &zero.pcount, &zero.run_delay);
    if (zero.pcount == 0)
        zero.run_delay = 0;
    if (st) {  /* a reused tid (hash), or a verdict that no longer holds */
        *st = zero;
        return st;
    }
#ifdef HAVE_TASK_STORAGE
    st = thread_states.task_storage_get(task, &zero, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!st)
        count_drop(FAM_SCHED);
    return st;
#else
    if (thread_states.update(&tid, &zero) != 0) {
        count_drop(FAM_SCHED);
        return NULL;
    }
    return thread_states.lookup(&tid);
#endif
}

/* A new preemptor row or slot (`dst`): whether the preemptor is in the target, and its comm (kept at
 * switch-in in `pcomm`, or read from `ptask`, the task switched in now). */
#define preemptor_init(dst, ptid, ptgid, pcomm, ptask) do {                 \
        (dst)->in_target = (ptid) != 0 && tgid_in_target(ptgid);           \
        if (pcomm)                                                          \
            __builtin_memcpy((dst)->comm, pcomm, TASK_COMM_LEN);            \
        else                                                                \
            kt_comm(ptask, (dst)->comm);                                    \
    } while (0)

/* Charged to the thread's own row (`v`) when the preemptor has a slot there or one is free, else
 * to preempt_agg, keyed by the CPU that runs it (sched_switch's): one writer per entry either way. */
static __always_inline void charge_preemptor(struct sched_val *v, u64 bucket, u32 tgid, ktask ptask,
                                             const char *pcomm, u32 ptid, u32 ptgid, u64 count, u64 wait)
{
    u32 cpu = bpf_get_smp_processor_id();
#pragma unroll
    for (int i = 0; i < INLINE_CHARGES; i++) {
        struct preempt_slot *sl = &v->pre[i];
        int free = sl->count == 0 && sl->wait_ns == 0;
        if (free || (sl->ptid == ptid && sl->ptgid == ptgid && sl->cpu == cpu)) {
            if (free) {
                sl->ptid = ptid;
                sl->ptgid = ptgid;
                sl->cpu = cpu;
                preemptor_init(sl, ptid, ptgid, pcomm, ptask);
            }
            sl->count += count;
            sl->wait_ns += wait;
            return;
        }
    }
    struct preempt_key key = {
        .bucket = bucket,
        .tgid = tgid,
        .ptid = ptid,
        .ptgid = ptgid,
        .cpu = cpu,
    };
    struct preempt_val *pv = preempt_agg.lookup(&key);
    if (!pv) {
        struct preempt_val zero = {};
        preemptor_init(&zero, ptid, ptgid, pcomm, ptask);
        if (preempt_agg.update(&key, &zero) != 0) {
            count_drop(FAM_SCHED);
            return;
        }
        pv = preempt_agg.lookup(&key);
        if (!pv)
            return;
    }
    pv->count += count;
    pv->wait_ns += wait;
}

#ifdef HAVE_WAKEUPS
static __always_inline void charge_waker(struct sched_val *sv, struct thread_state *st, u64 bucket, u64 sleep,
                                         u64 woke_at, u32 tid, u32 tgid, u32 state);
#endif

/* Settle the stretch off CPU that ended at the thread's last switch-in (see the top): called at
 * its switch-out, with its bucket, and at its exit. `task` is the thread (current at both). */
static __always_inline void settle(struct thread_state *st, ktask task, struct sched_val *v, u64 bucket,
                                   u32 tid, u32 tgid)
{
    u64 pcount = 0, run_delay = 0, wait = 0;
    sched_info_read(task, &pcount, &run_delay);
    int arrived = pcount > st->pcount;
    if (arrived && run_delay > st->run_delay)
        wait = run_delay - st->run_delay;
    st->pcount = pcount;
    st->run_delay = run_delay;
    u32 how = st->off_out;
    st->off_out = OUT_NONE;
    if (how != OUT_NONE && wait > st->off_ns)
        wait = st->off_ns;  /* two clocks (the rq clock, ours): never more than the stretch */
    if (arrived) {
        v->runq_count += 1;
        v->runq_wait_ns += wait;
        if (wait > v->runq_max_ns)
            v->runq_max_ns = wait;
        u32 slot = log2_slot_us(wait) & (LOG2_SLOTS - 1);
        v->hist[slot] += 1;
        /* The task that held the CPU until this thread got it is charged with the wait. */
        if (wait && st->pre_task)
            charge_preemptor(v, bucket, tgid, 0, st->pre_comm, st->pre_tid, st->pre_tgid, 0, wait);
    }
    int slept = how == OUT_SLEEP || how == OUT_DSTATE;
    u64 sleep = slept ? st->off_ns - wait : 0;
    if (how == OUT_PREEMPTED)
        v->off_preempted_ns += st->off_ns;
    else if (how == OUT_DSTATE)
        v->off_dstate_ns += sleep;
    else if (how == OUT_SLEEP)
        v->off_sleep_ns += sleep;
#ifdef HAVE_WAKEUPS
    /* The waker of this stretch's sleep. One noted while the thread was still on CPU (the waking
     * raced its switch-out, or try_to_wake_up() found it still queued and it never slept) is kept
     * for the sleep that starts now; the next waking replaces it if it was not that sleep's. */
    if (st->wk_task && !st->wk_on_cpu) {
        if (slept)
            charge_waker(v, st, bucket, sleep, st->ts_in - wait, tid, tgid, how);
        st->wk_task = 0;
    }
    st->wk_on_cpu = 0;
#endif
}

TP_BTF(sched_switch)
{
    bool preempt = (bool)TP_ARG(0);
    ktask prev = (ktask)TP_ARG(1);
    ktask next = (ktask)TP_ARG(2);
    u32 prev_state = (u32)TP_ARG(3);

    u64 id = bpf_get_current_pid_tgid();   /* current == prev */
    u32 prev_tid = (u32)id, prev_tgid = id >> 32;
    u32 next_tid, next_tgid;
    kt_ids(next, &next_tid, &next_tgid);

    struct thread_state *pst = prev_tid != 0 ? target_thread(prev, prev_tid, prev_tgid, 1) : NULL;
    struct thread_state *nst = next_tid != 0 ? target_thread(next, next_tid, next_tgid, 0) : NULL;
    /* The clock is read once, by whichever side is traced first (neither: no read). */
    u64 now = 0, bucket = 0;
    u32 handled = 0;

    /* --- prev leaves the CPU --- */
    if (pst) {
        handled += 1;
        now = bpf_ktime_get_ns();
        bucket = bucket_of(now);
        int involuntary = preempt || prev_state == TASK_RUNNING;
        struct sched_val *v = sched_slot(bucket, prev_tid, prev_tgid, prev);
        if (v) {
            settle(pst, prev, v, bucket, prev_tid, prev_tgid);
            if (pst->ts_in && now > pst->ts_in)
                v->oncpu_ns += now - pst->ts_in;
            if (involuntary) {
                v->invol += 1;
                charge_preemptor(v, bucket, prev_tgid, next, 0, next_tid, next_tgid, 1, 0);
            } else {
                v->vol += 1;
            }
        }
        pst->out = involuntary ? OUT_PREEMPTED
                 : ((prev_state & TASK_UNINTERRUPTIBLE) && !(prev_state & TASK_NOLOAD)) ? OUT_DSTATE : OUT_SLEEP;
        pst->ts_in = 0;
        pst->ts_out = now;
    }

    /* --- next gets the CPU --- */
    if (nst) {
        handled += 1;
        if (now == 0)
            now = bpf_ktime_get_ns();
        /* The stretch that ends now, settled at the next switch-out with its wait. */
        if (nst->out != OUT_NONE && nst->ts_out && now > nst->ts_out) {
            nst->off_ns = now - nst->ts_out;
            nst->off_out = nst->out;
        } else {
            nst->off_out = OUT_NONE;
        }
        nst->out = OUT_NONE;
        nst->ts_in = now;
        nst->pre_task = (u64)prev;
        nst->pre_tid = prev_tid;
        nst->pre_tgid = prev_tgid;
        kt_comm(prev, nst->pre_comm);
    }
    if (handled)
        count_events(FAM_SCHED, handled);
    return 0;
}

/* At a target thread's exit (proc.c, in the exiting thread): settle its last stretch off CPU. A
 * hash state goes now (a task-storage state goes with the task, after its last switch-out). */
static __always_inline void sched_thread_exit(u32 tid, u32 tgid)
{
    ktask task = CURRENT_TASK();
    struct thread_state *st = state_of(task, tid, tgid);
    if (!st)
        return;
    u64 bucket = bucket_of(bpf_ktime_get_ns());
    struct sched_val *v = sched_slot(bucket, tid, tgid, task);
    if (v)
        settle(st, task, v, bucket, tid, tgid);
#ifndef HAVE_TASK_STORAGE
    thread_states.delete(&tid);
#endif
}

TP_BTF(sched_migrate_task)
{
    ktask p = (ktask)TP_ARG(0);
    u32 tid, tgid;
    kt_ids(p, &tid, &tgid);
    if (tid == 0 || !tgid_in_target(tgid))
        return 0;
    count_event(FAM_SCHED);
    struct sched_val *v = sched_slot(bucket_of(bpf_ktime_get_ns()), tid, tgid, p);
    if (v)
        v->migrations += 1;
    return 0;
}
