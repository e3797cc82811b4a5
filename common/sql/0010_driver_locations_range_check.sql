-- GPS history becomes partitioned by day (0010..0012). Step 1 of 3: a range CHECK on the existing
-- table, added NOT VALID so this takes its ACCESS EXCLUSIVE lock only for a catalog update (no scan).
-- The bound is the start of the day after tomorrow (UTC): the writers accept points at most
-- 5 minutes ahead of the server's clock, so no new row can fail it before 0012 runs. 0012 attaches
-- this table, whole, as the partition for everything below the bound.
DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE driver_locations ADD CONSTRAINT driver_locations_legacy_range'
        ' CHECK (recorded_at < %L::timestamptz) NOT VALID',
        date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '2 days');
END
$$;
