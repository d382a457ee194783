-- What the dataset holds inside the --since/--until window: hosts, recordings, requests, time range.
SELECT COUNT(DISTINCT r.host) AS hosts,
       COUNT(*) AS recordings,
       MIN(r.ts) AS first_ts,
       MAX(r.end_ts) AS last_ts,
       SUM(r.requests) AS requests,
       SUM(r.incidents) AS incidents,
       SUM(r.oom_kills) AS oom_kills,
       ROUND(SUM(r.duration_s), 3) AS recorded_s
FROM recordings r
CROSS JOIN fleet_params p
WHERE r.ts < p.until_ts AND r.end_ts >= p.since_ts
