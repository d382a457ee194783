-- Per host: recordings, requests, incidents, the most frequent cause and culprit, the last incident.
WITH recs AS (
    SELECT r.host, r.recording_id, r.requests, r.duration_s
    FROM recordings r
    CROSS JOIN fleet_params p
    WHERE r.ts < p.until_ts AND r.end_ts >= p.since_ts
), inc AS (
    SELECT i.host, i.ts, i.cause, i.culprit_comm, i.latency_ms, i.requests
    FROM incidents i
    CROSS JOIN fleet_params p
    WHERE i.ts >= p.since_ts AND i.ts < p.until_ts
      AND i.recording_id IN (SELECT recording_id FROM recs)
), per_host AS (
    SELECT host, COUNT(*) AS incidents, SUM(requests) AS slow_requests, MAX(ts) AS last_incident,
           MAX(latency_ms) AS worst_p99_ms
    FROM inc
    GROUP BY host
), causes_ranked AS (
    SELECT host, cause, COUNT(*) AS n,
           ROW_NUMBER() OVER (PARTITION BY host ORDER BY COUNT(*) DESC, cause) AS rk
    FROM inc
    WHERE cause IS NOT NULL
    GROUP BY host, cause
), culprits_ranked AS (
    SELECT host, culprit_comm, COUNT(*) AS n,
           ROW_NUMBER() OVER (PARTITION BY host ORDER BY COUNT(*) DESC, culprit_comm) AS rk
    FROM inc
    WHERE culprit_comm IS NOT NULL
    GROUP BY host, culprit_comm
), hosts AS (
    SELECT host, COUNT(*) AS recordings, SUM(requests) AS requests, ROUND(SUM(duration_s), 3) AS recorded_s
    FROM recs
    GROUP BY host
)
SELECT h.host, h.recordings, h.requests, h.recorded_s,
       COALESCE(x.incidents, 0) AS incidents,
       COALESCE(x.slow_requests, 0) AS slow_requests,
       x.last_incident, x.worst_p99_ms,
       c.cause AS top_cause, c.n AS top_cause_incidents,
       k.culprit_comm AS top_culprit, k.n AS top_culprit_incidents
FROM hosts h
LEFT JOIN per_host x ON x.host = h.host
LEFT JOIN causes_ranked c ON c.host = h.host AND c.rk = 1
LEFT JOIN culprits_ranked k ON k.host = h.host AND k.rk = 1
ORDER BY incidents DESC, h.host
