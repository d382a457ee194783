-- Request latency per host on each side of the comparison, as a log histogram (bucket b holds
-- latencies in [2^(b/8), 2^((b+1)/8)) ms, ~9 % wide): the regression check works on these
-- aggregates, never on raw spans, so it costs the same on one host or ten thousand.
-- Sides: fleet_params.compare = 'build' compares recordings labelled before_build / after_build;
-- 'period' compares requests that started in [before_start, before_end) / [after_start, after_end).
WITH req AS (
    SELECT s.host,
           CASE
               WHEN p.compare = 'build' AND r.build = p.before_build THEN 'before'
               WHEN p.compare = 'build' AND r.build = p.after_build THEN 'after'
               WHEN p.compare = 'period' AND s.ts >= p.before_start AND s.ts < p.before_end THEN 'before'
               WHEN p.compare = 'period' AND s.ts >= p.after_start AND s.ts < p.after_end THEN 'after'
           END AS side,
           CAST(FLOOR(LOG2(GREATEST(CAST(s.end_ns - s.ts_ns AS DOUBLE) / 1e6, 0.001)) * 8) AS INT) AS bucket
    FROM spans s
    JOIN recordings r ON r.recording_id = s.recording_id AND r.host = s.host
    CROSS JOIN fleet_params p
    WHERE s.ts >= p.since_ts AND s.ts < p.until_ts
      AND (s.ok IS NULL OR s.ok)
      AND s.end_ns >= s.ts_ns
)
SELECT host, side, bucket, COUNT(*) AS requests
FROM req
WHERE side IS NOT NULL
GROUP BY host, side, bucket
ORDER BY host, side, bucket
