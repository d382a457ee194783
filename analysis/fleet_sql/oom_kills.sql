-- Every OOM kill and CUDA OOM in the window, newest first.
SELECT o.host, o.recording_id, o.ts, o.pid, o.comm, o.kind, o.in_target, o.rss_bytes, o.gpu_bytes,
       o.limit_bytes, o.memcg, o.container, o.pod, o.verdict, o.verdict_reason
FROM oom_kills o
CROSS JOIN fleet_params p
WHERE o.ts >= p.since_ts AND o.ts < p.until_ts
  AND o.recording_id IN (SELECT recording_id FROM recordings)
ORDER BY o.ts DESC, o.host, o.pid
