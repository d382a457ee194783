-- Incidents per time bucket (fleet_params.bucket_unit: hour or day), host, cause and culprit.
SELECT date_trunc(p.bucket_unit, i.ts) AS bucket,
       i.host,
       COALESCE(i.cause, 'unexplained') AS cause,
       COALESCE(i.culprit_comm, '-') AS culprit,
       COUNT(*) AS incidents,
       SUM(i.requests) AS slow_requests,
       ROUND(MAX(i.latency_ms), 3) AS worst_p99_ms
FROM incidents i
CROSS JOIN fleet_params p
WHERE i.ts >= p.since_ts AND i.ts < p.until_ts
  AND i.recording_id IN (SELECT recording_id FROM recordings)
GROUP BY date_trunc(p.bucket_unit, i.ts), i.host, COALESCE(i.cause, 'unexplained'), COALESCE(i.culprit_comm, '-')
ORDER BY bucket, host, cause, culprit
