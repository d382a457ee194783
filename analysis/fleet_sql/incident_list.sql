-- The largest incidents (slow requests x extra latency), each with its host, cause and culprit.
WITH inc AS (
    SELECT i.host, i.recording_id, i.incident_id, i.ts, i.end_ts, i.duration_s, i.requests, i.latency_ms,
           i.baseline_ms, i.extra_ms, i.cause, i.cause_score, i.culprit_pid, i.culprit_comm,
           i.culprit_container, i.culprit_pod, i.culprit_share, i.headline,
           ROW_NUMBER() OVER (ORDER BY COALESCE(i.extra_ms, 0) * COALESCE(i.requests, 0) DESC, i.ts, i.host,
                              i.recording_id, i.incident_id) AS rk
    FROM incidents i
    CROSS JOIN fleet_params p
    WHERE i.ts >= p.since_ts AND i.ts < p.until_ts
      AND i.recording_id IN (SELECT recording_id FROM recordings)
)
SELECT inc.host, inc.recording_id, inc.incident_id, inc.ts, inc.end_ts, inc.duration_s, inc.requests,
       inc.latency_ms, inc.baseline_ms, inc.extra_ms, inc.cause, inc.cause_score, inc.culprit_pid,
       inc.culprit_comm, inc.culprit_container, inc.culprit_pod, inc.culprit_share, inc.headline
FROM inc
CROSS JOIN fleet_params p
WHERE inc.rk <= p.top_n
ORDER BY inc.rk
