/* wakeups.c -- who woke the target's sleeping threads (off-CPU sleep attribution).
 *
 * Needs sched.c (concatenated before it): the sleep a waking ends -- the wakee's switch-out in S or
 * D state to its enqueue -- is settled by sched.c at the wakee's next switch-out (see its top).
 *
 * sched_waking is a tp_btf program where sched_switch is one (common.h). The waker is `current`
 * there: kernel/sched/core.c try_to_wake_up() fires it in the waker's context once the wakee's
 * state matched. (sched_wakeup is no substitute: with TTWU_QUEUE the wakee's CPU activates it from
 * an IPI, where `current` is whatever ran there, often idle.)
 * A wakeup from interrupt context (a timer expiring, a softirq delivering a packet, a device
 * interrupt) is not the interrupted task's doing: the irq/softirq/hrtimer tracepoints below keep a
 * per-CPU mask of the contexts being run, and such wakeups are stored with waker tid 0 and the
 * context as `ctx` instead of the task that happened to be interrupted.
 *
 *   sched_waking(struct task_struct *p)
 *   softirq_entry/exit(unsigned int vec_nr), irq_handler_entry/exit(int irq, ...),
 *   hrtimer_expire_entry(struct hrtimer *, ktime_t *now), hrtimer_expire_exit(struct hrtimer *)
 */

#define WCTX_TASK 0
#define WCTX_HARDIRQ 1
#define WCTX_SOFTIRQ 2
#define WCTX_HRTIMER 4

#define WSTATE_SLEEP 1
#define WSTATE_DSTATE 2

struct waker_key {
    u64 bucket;
    u32 tid;        /* wakee: a target thread */
    u32 pid;        /* its tgid */
    u32 waker_tid;  /* 0 in interrupt context */
    u32 waker_pid;
    u32 ctx;        /* WCTX_* mask of the waking context (0: a task) */
    u32 state;      /* WSTATE_*: the sleep the wakee was in */
};

struct waker_val {
    u64 count;          /* wakeups */
    u64 sleep_ns;       /* sleep they ended (wakee's switch-out -> this wakeup) */
    u64 sleep_max_ns;
    u64 waker_oncpu_ns; /* part of that sleep the waker had been on CPU, without a break, since */
    u32 waker_in_target;
    u32 pad;
    char comm[TASK_COMM_LEN];  /* the waker's */
};

BPF_HASH(waker_agg, struct waker_key, struct waker_val, MAX_AGG);
BPF_PERCPU_ARRAY(wake_ctx, u32, 1);

static __always_inline void wake_ctx_set(u32 bit, int on)
{
    u32 zero = 0;
    u32 *m = wake_ctx.lookup(&zero);
    if (!m)
        return;
    if (on)
        *m |= bit;
    else
        *m &= ~bit;
}

#ifdef HAVE_TP_SOFTIRQ
RAW_TRACEPOINT_PROBE(softirq_entry) { wake_ctx_set(WCTX_SOFTIRQ, 1); return 0; }
RAW_TRACEPOINT_PROBE(softirq_exit) { wake_ctx_set(WCTX_SOFTIRQ, 0); return 0; }
#endif
#ifdef HAVE_TP_IRQ_HANDLER
RAW_TRACEPOINT_PROBE(irq_handler_entry) { wake_ctx_set(WCTX_HARDIRQ, 1); return 0; }
RAW_TRACEPOINT_PROBE(irq_handler_exit) { wake_ctx_set(WCTX_HARDIRQ, 0); return 0; }
#endif
#ifdef HAVE_TP_HRTIMER_EXPIRE
RAW_TRACEPOINT_PROBE(hrtimer_expire_entry) { wake_ctx_set(WCTX_HRTIMER, 1); return 0; }
RAW_TRACEPOINT_PROBE(hrtimer_expire_exit) { wake_ctx_set(WCTX_HRTIMER, 0); return 0; }
#endif

/* At sched_waking: note the waker in the wakee's state, without reading the clock; the wakee's
 * settlement (sched.c settle(), at its next switch-out) knows the sleep this waking ended and
 * calls charge_waker(). The waker's comm is copied now: a waker that is exiting (a child waking
 * its parent's wait4) may be gone by then. */
TP_BTF(sched_waking)
{
    ktask p = (ktask)TP_ARG(0);
    u32 tid, tgid;
    kt_ids(p, &tid, &tgid);
    if (tid == 0)
        return 0;
    /* A target thread has a state saying so (sched.c target_thread()), made at its first switch:
     * no lookup in target_tgids here. */
    struct thread_state *st = state_of(p, tid, tgid);
    if (!st)
        return 0;
    u32 zero = 0;
    u32 *m = wake_ctx.lookup(&zero);
    u32 wctx = m ? *m : 0;
    st->wk_ctx = wctx;
    st->wk_tid = 0;
    st->wk_tgid = 0;
    st->wk_since = 0;
    st->wk_in_target = 0;
    /* try_to_wake_up() fires sched_waking before it waits for p->on_cpu: the wakee may not have
     * switched out yet (its ts_in is still set); this waking then ends the sleep about to start. */
    st->wk_on_cpu = st->ts_in != 0;
    if (wctx == WCTX_TASK) {
        u64 id = bpf_get_current_pid_tgid();
        u32 wtid = (u32)id, wtgid = id >> 32;
        st->wk_tid = wtid;
        st->wk_tgid = wtgid;
        ktask cur = CURRENT_TASK();
        kt_comm(cur, st->wk_comm);
        /* One lookup says both whether the waker is in the target and since when it is on CPU. */
        struct thread_state *ws = wtid ? state_of(cur, wtid, wtgid) : NULL;
        if (ws) {
            st->wk_in_target = 1;
            st->wk_since = ws->ts_in;
        }
    }
    st->wk_task = bpf_get_current_task() | 1;  /* nonzero even for an interrupt-context waking */
    return 0;
}

/* Called by sched.c settle() for a settled sleep of `sleep` ns that this waker ended at woke_at: into
 * the wakee's own row (`sv`, sched.c INLINE_CHARGES) when the waker has a slot there or one is free,
 * else into waker_agg. */
static __always_inline void charge_waker(struct sched_val *sv, struct thread_state *st, u64 bucket, u64 sleep,
                                         u64 woke_at, u32 tid, u32 tgid, u32 state)
{
    count_event(FAM_WAKEUPS);
    u32 wstate = state == OUT_DSTATE ? WSTATE_DSTATE : WSTATE_SLEEP;
    u64 oncpu = 0;
    if (st->wk_since && woke_at > st->wk_since)
        oncpu = woke_at - st->wk_since < sleep ? woke_at - st->wk_since : sleep;
#pragma unroll
    for (int i = 0; i < INLINE_CHARGES; i++) {
        struct waker_slot *sl = &sv->wk[i];
        int free = sl->count == 0;
        if (free || (sl->waker_tid == st->wk_tid && sl->waker_pid == st->wk_tgid && sl->ctx == st->wk_ctx
                     && sl->state == wstate)) {
            if (free) {
                sl->waker_tid = st->wk_tid;
                sl->waker_pid = st->wk_tgid;
                sl->ctx = st->wk_ctx;
                sl->state = wstate;
                sl->waker_in_target = st->wk_in_target;
                if (st->wk_ctx == WCTX_TASK)
                    __builtin_memcpy(sl->comm, st->wk_comm, TASK_COMM_LEN);
            }
            sl->count += 1;
            sl->sleep_ns += sleep;
            sl->waker_oncpu_ns += oncpu;
            if (sleep > sl->sleep_max_ns)
                sl->sleep_max_ns = sleep;
            return;
        }
    }
    struct waker_key key = {
        .bucket = bucket, .tid = tid, .pid = tgid, .ctx = st->wk_ctx,
        .waker_tid = st->wk_tid, .waker_pid = st->wk_tgid, .state = wstate,
    };
    struct waker_val *v = waker_agg.lookup(&key);
    if (!v) {
        struct waker_val init = {};
        init.waker_in_target = st->wk_in_target;
        if (st->wk_ctx == WCTX_TASK)
            __builtin_memcpy(init.comm, st->wk_comm, TASK_COMM_LEN);
        if (waker_agg.update(&key, &init) != 0) {
            count_drop(FAM_WAKEUPS);
            return;
        }
        v = waker_agg.lookup(&key);
        if (!v)
            return;
    }
    /* Plain adds: the key holds the wakee, and its settlement runs on the CPU it leaves under that
     * runqueue's lock (or in the wakee itself at exit), so updates of one key never run at once. */
    v->count += 1;
    v->sleep_ns += sleep;
    v->waker_oncpu_ns += oncpu;
    if (sleep > v->sleep_max_ns)
        v->sleep_max_ns = sleep;
}
