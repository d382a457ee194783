-- The culprits blamed most often across the fleet (top culprit of each incident's top cause), by
-- program name and container: a pid means nothing across hosts, a comm or a container does.
WITH blamed AS (
    SELECT i.host, i.recording_id, i.incident_id, i.ts, i.cause, i.culprit_comm,
           COALESCE(i.culprit_container, '') AS container, i.culprit_share, i.culprit_in_target
    FROM incidents i
    CROSS JOIN fleet_params p
    WHERE i.ts >= p.since_ts AND i.ts < p.until_ts
      AND i.culprit_comm IS NOT NULL
      AND i.recording_id IN (SELECT recording_id FROM recordings)
), ranked AS (
    SELECT culprit_comm AS culprit, container, cause,
           COUNT(*) AS incidents,
           COUNT(DISTINCT host) AS hosts,
           ROUND(AVG(culprit_share), 4) AS mean_share,
           MAX(CASE WHEN culprit_in_target THEN 1 ELSE 0 END) AS in_target,
           MIN(ts) AS first_seen,
           MAX(ts) AS last_seen,
           MIN(host) AS example_host,
           ROW_NUMBER() OVER (ORDER BY COUNT(*) DESC, COUNT(DISTINCT host) DESC, culprit_comm, container, cause) AS rk
    FROM blamed
    GROUP BY culprit_comm, container, cause
)
SELECT r.culprit, r.container, r.cause, r.incidents, r.hosts, r.mean_share, r.in_target,
       r.first_seen, r.last_seen, r.example_host
FROM ranked r
CROSS JOIN fleet_params p
WHERE r.rk <= p.top_n
ORDER BY r.incidents DESC, r.hosts DESC, r.culprit, r.container, r.cause
