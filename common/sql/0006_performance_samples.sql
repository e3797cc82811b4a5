-- One row a minute per API process: the history behind GET /api/performance/database?timeRange=.
-- Kept 8 days (the sampler deletes older rows), so the 7-day range is always complete.
CREATE TABLE performance_samples (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    source         text NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    pool_size      integer NOT NULL,
    pool_in_use    integer NOT NULL,
    pool_waiting   integer NOT NULL,
    pool_max_size  integer NOT NULL,
    p50_ms         double precision,
    p95_ms         double precision,
    p99_ms         double precision,
    query_samples  integer NOT NULL,
    -- The shared Redis counters at sampling time (cumulative); null when Redis did not answer.
    cache_hits     bigint,
    cache_misses   bigint,
    relay_lag_s    double precision,
    alerts         text[] NOT NULL DEFAULT '{}'
);

CREATE INDEX performance_samples_at ON performance_samples (at);
