/* io.c -- block requests, issue to completion, host-wide and aggregated per bucket per issuer.
 *
 * block:block_rq_complete runs in IRQ / softirq context, so the issuer is remembered before,
 * keyed by (dev, sector) as the tracepoints give no request pointer. block:block_rq_issue is not
 * always in the issuer's context: a request the driver bounced (BLK_STS_RESOURCE: a full virtio
 * ring, requeued) or one dispatched from a busy queue is issued again by kblockd (kworker/N:xH).
 * So the issuer is taken where the request is made, block:block_io_start (blk_account_io_start(),
 * called from blk_mq_bio_to_request() in the submitter's context; Linux >= 6.5, the tracepoint bcc's
 * biosnoop uses); block_rq_issue keeps it and stamps the issue time. A request with no start seen
 * (older kernel, iostats off, flushes, issued before we attached) is the issuing task's.
 * block:block_rq_requeue unstamps, so the latency is that of the dispatch that completed.
 * Field layouts come from tracefs (include/trace/events/block.h), which bcc reads at compile.
 */

struct io_inflight_key {
    u64 sector;
    u32 dev;
    u32 pad;
};

struct io_inflight {
    u64 ts;
    u32 tgid;
    u32 bytes;
    u32 in_target;
    char op;
    char comm[TASK_COMM_LEN];
};

struct io_key {
    u64 bucket;
    u32 tgid;
    u32 dev;
    u32 op;
    u32 pad;
};

struct io_val {
    u64 count;
    u64 bytes;
    u64 lat_sum_ns;
    u64 lat_max_ns;
    u32 hist[LOG2_SLOTS];
    u32 in_target;
    char comm[TASK_COMM_LEN];
};

/* LRU: an entry whose request never completes under its key (a front merge moved its start
 * sector, a partial completion advanced it) is evicted instead of filling the map. */
BPF_TABLE("lru_hash", struct io_inflight_key, struct io_inflight, io_inflight_map, MAX_THREADS);
BPF_HASH(io_agg, struct io_key, struct io_val, MAX_AGG);

/* rwbs: 'F' flush first, then one of R W D (discard) N (none), then modifiers. */
static __always_inline char io_op(const char *rwbs)
{
    char c0 = rwbs[0];
    char c = c0 == 'F' ? rwbs[1] : c0;
    if (c == 'R' || c == 'W' || c == 'D')
        return c;
    if (c0 == 'F')
        return 'F';
    return 'O';
}

/* A new in-flight entry owned by the current task; ts 0 until issued. */
static __always_inline void io_remember(struct io_inflight_key *key, u64 ts, u32 bytes, const char *rwbs)
{
    struct io_inflight v = {};
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    v.ts = ts;
    v.tgid = tgid;
    v.bytes = bytes;
    v.in_target = tgid != 0 && current_in_target(tgid);
    v.op = io_op(rwbs);
    bpf_get_current_comm(&v.comm, sizeof(v.comm));
    if (io_inflight_map.update(key, &v) != 0)
        count_drop(FAM_IO);
}

#ifdef HAVE_TP_BLOCK_IO_START
TRACEPOINT_PROBE(block, block_io_start)
{
    struct io_inflight_key key = {.sector = args->sector, .dev = args->dev};
    io_remember(&key, 0, args->bytes, args->rwbs);
    return 0;
}
#endif

TRACEPOINT_PROBE(block, block_rq_issue)
{
    struct io_inflight_key key = {.sector = args->sector, .dev = args->dev};
    u64 now = bpf_ktime_get_ns();
    struct io_inflight *in = io_inflight_map.lookup(&key);
    if (in && in->ts == 0) {  /* started (or requeued), not issued: the issuer is known */
        in->ts = now;
        in->bytes = args->bytes;
        return 0;
    }
    io_remember(&key, now, args->bytes, args->rwbs);
    return 0;
}

#ifdef HAVE_TP_BLOCK_RQ_REQUEUE
TRACEPOINT_PROBE(block, block_rq_requeue)
{
    struct io_inflight_key key = {.sector = args->sector, .dev = args->dev};
    struct io_inflight *in = io_inflight_map.lookup(&key);
    if (in)
        in->ts = 0;  /* back in the queue; kblockd's re-issue is still this issuer's request */
    return 0;
}
#endif

TRACEPOINT_PROBE(block, block_rq_complete)
{
    struct io_inflight_key ikey = {.sector = args->sector, .dev = args->dev};
    struct io_inflight *in = io_inflight_map.lookup(&ikey);
    if (!in)
        return 0;   /* issued before we attached */
    u64 now = bpf_ktime_get_ns();
    u64 lat = in->ts && now > in->ts ? now - in->ts : 0;
    struct io_key key = {.bucket = bucket_of(now), .tgid = in->tgid, .dev = args->dev, .op = in->op};
    struct io_val *v = io_agg.lookup(&key);
    if (!v) {
        struct io_val zero = {};
        zero.in_target = in->in_target;
        __builtin_memcpy(zero.comm, in->comm, TASK_COMM_LEN);
        if (io_agg.update(&key, &zero) != 0) {
            count_drop(FAM_IO);
            io_inflight_map.delete(&ikey);
            return 0;
        }
        v = io_agg.lookup(&key);
    }
    if (v) {
        count_event(FAM_IO);
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->bytes, in->bytes ? in->bytes : (u64)args->nr_sector * 512);
        __sync_fetch_and_add(&v->lat_sum_ns, lat);
        if (lat > v->lat_max_ns)
            v->lat_max_ns = lat;
        u32 slot = log2_slot_us(lat) & (LOG2_SLOTS - 1);
        __sync_fetch_and_add(&v->hist[slot], 1);
    }
    io_inflight_map.delete(&ikey);
    return 0;
}
