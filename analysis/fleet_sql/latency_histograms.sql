-- Request latency per host on each side of the comparison, as a log histogram (bucket b holds
-- latencies in [2^(b/8), 2^((b+1)/8)) ms, ~9 % wide), summed from the per-minute histograms of
-- latency_hist: the regression check works on these aggregates, never on raw spans, so its cost
-- grows with hosts x minutes, not with the request rate.
-- Sides: fleet_params.compare = 'build' compares recordings labelled before_build / after_build;
-- 'period' compares minutes that started in [before_start, before_end) / [after_start, after_end).
-- Failed requests are left out (a fast error is not a fast answer).
WITH req AS (
    SELECT l.host,
           CASE
               WHEN p.compare = 'build' AND r.build = p.before_build THEN 'before'
               WHEN p.compare = 'build' AND r.build = p.after_build THEN 'after'
               WHEN p.compare = 'period' AND l.ts >= p.before_start AND l.ts < p.before_end THEN 'before'
               WHEN p.compare = 'period' AND l.ts >= p.after_start AND l.ts < p.after_end THEN 'after'
           END AS side,
           l.bucket,
           l.requests - l.failed AS ok_requests
    FROM latency_hist l
    JOIN recordings r ON r.recording_id = l.recording_id AND r.host = l.host
    CROSS JOIN fleet_params p
    WHERE l.ts >= p.since_ts AND l.ts < p.until_ts
)
SELECT host, side, bucket, SUM(ok_requests) AS requests
FROM req
WHERE side IS NOT NULL
GROUP BY host, side, bucket
HAVING SUM(ok_requests) > 0
ORDER BY host, side, bucket
