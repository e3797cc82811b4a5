-- What operators watch, sampled with the rest once a minute per API process (the history behind
-- /admin's charts): connections in all and per gateway, deliveries, orders, the API's own latency.
ALTER TABLE performance_samples
    ADD COLUMN connections      integer,
    ADD COLUMN gateways         jsonb,             -- {"gateway id": connections, ...}
    ADD COLUMN deliveries_per_s double precision,  -- frames out per second, summed over gateways
    ADD COLUMN delivery_p95_ms  double precision,  -- the worst gateway's commit-to-fan-out p95
    ADD COLUMN orders_per_min   integer,           -- orders created in the minute before the sample
    ADD COLUMN api_p95_ms       double precision,  -- this API process, last minute
    ADD COLUMN api_requests     integer,           -- this API process, last minute
    ADD COLUMN api_errors       integer;           -- of those, answered 5xx
