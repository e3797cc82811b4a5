-- Step 3 of 3: driver_locations becomes a table partitioned by day on recorded_at (UTC days).
-- Everything here is catalog work, so the ACCESS EXCLUSIVE locks it takes last milliseconds:
-- the old table is renamed and attached whole as the partition below the bound of 0010; its
-- validated CHECK constraint proves the partition range, so ATTACH does not scan it, and its
-- index and foreign key match the parent's, so they are attached rather than rebuilt. Old days
-- then leave by dropping whole partitions (common/housekeeping.py), never by DELETE.
-- lock_timeout: on a live database, fail fast rather than queue every GPS write behind us.
SET LOCAL lock_timeout = '5s';

ALTER TABLE driver_locations RENAME TO driver_locations_legacy;
ALTER INDEX driver_locations_driver_recorded RENAME TO driver_locations_driver_recorded_legacy;
ALTER INDEX driver_locations_pkey RENAME TO driver_locations_legacy_pkey;

CREATE TABLE driver_locations (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    driver_id    uuid NOT NULL,
    lat          double precision NOT NULL,
    lng          double precision NOT NULL,
    heading      double precision,
    speed        double precision,
    accuracy     double precision,
    recorded_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The old table's names: ATTACH matches a partition's constraints to the parent's by name.
    CONSTRAINT driver_locations_driver_id_fkey FOREIGN KEY (driver_id) REFERENCES drivers (id),
    CONSTRAINT driver_locations_lat_check CHECK (lat BETWEEN -90 AND 90),
    CONSTRAINT driver_locations_lng_check CHECK (lng BETWEEN -180 AND 180),
    CONSTRAINT driver_locations_heading_check CHECK (heading >= 0 AND heading < 360),
    CONSTRAINT driver_locations_speed_check CHECK (speed >= 0),
    CONSTRAINT driver_locations_accuracy_check CHECK (accuracy >= 0)
) PARTITION BY RANGE (recorded_at);
-- No primary key: a partitioned table's unique keys must contain recorded_at, nothing refers to
-- a point by id, and building one on the old rows would be the long lock this avoids. The old
-- partition keeps its own primary key on id.

-- The latest-position and row-security lookups: (driver_id, recorded_at DESC) in every partition.
-- ON ONLY: the old table's equal index is attached below instead of being built again.
CREATE INDEX driver_locations_driver_recorded ON ONLY driver_locations (driver_id, recorded_at DESC);

DO $$
DECLARE
    sequence_name text := pg_get_serial_sequence('driver_locations_legacy', 'id');
    next_id bigint;
    bound text;
BEGIN
    -- Ids go on from the old table's sequence, which DROP IDENTITY removes (a partition may not
    -- have an identity of its own).
    EXECUTE format('SELECT nextval(%L)', sequence_name) INTO next_id;
    ALTER TABLE driver_locations_legacy ALTER COLUMN id DROP IDENTITY;
    EXECUTE format('ALTER TABLE driver_locations ALTER COLUMN id RESTART WITH %s', next_id);
    SELECT substring(pg_get_constraintdef(oid) FROM '''([^'']+)''') INTO STRICT bound
        FROM pg_constraint WHERE conname = 'driver_locations_legacy_range'
        AND conrelid = 'driver_locations_legacy'::regclass;
    EXECUTE format('ALTER TABLE driver_locations ATTACH PARTITION driver_locations_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
END
$$;

-- One day's partition, built beside the table and then attached: ATTACH takes SHARE UPDATE
-- EXCLUSIVE on the parent, which GPS inserts and reads do not wait for (CREATE TABLE ...
-- PARTITION OF would take ACCESS EXCLUSIVE). Returns the partition's name, or NULL when the day
-- is already covered. The relay leader's housekeeping calls it for the days ahead.
CREATE FUNCTION dms_create_location_partition(day date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    name text := 'driver_locations_p' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM driver_locations_partitions() p WHERE coalesce(p.low_bound, '-infinity') < high
               AND p.high_bound > low) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE driver_locations INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('CREATE INDEX %I ON %I (driver_id, recorded_at DESC)',
                   'driver_locations_driver_recorded_p' || to_char(day, 'YYYYMMDD'), name);
    EXECUTE format('ALTER TABLE driver_locations ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, low, high);
    RETURN name;
END
$$;

-- The partitions with their ranges (low_bound NULL for MINVALUE), for housekeeping and tests.
CREATE FUNCTION driver_locations_partitions()
    RETURNS TABLE (name text, low_bound timestamptz, high_bound timestamptz, detach_pending boolean)
    LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz,
           i.inhdetachpending
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'driver_locations'::regclass
    ORDER BY 2 NULLS FIRST
$$;

-- Today's and the next days' partitions, so writes never find no partition while the relay
-- leader has not run its housekeeping yet. Yesterday is inside the old table's range.
SELECT dms_create_location_partition((now() AT TIME ZONE 'UTC')::date + n) FROM generate_series(0, 7) AS n;

-- Row-level security as on the old table (0007): policies on the parent govern every query
-- through it.
ALTER TABLE driver_locations ENABLE ROW LEVEL SECURITY;
CREATE POLICY driver_locations_self ON driver_locations FOR ALL
    USING (driver_id = dms_driver_self()) WITH CHECK (driver_id = dms_driver_self());
CREATE POLICY driver_locations_of_my_orders ON driver_locations FOR SELECT
    USING (driver_id = ANY (ARRAY(SELECT dms_drivers_of_my_active_orders())));
GRANT SELECT, INSERT, UPDATE, DELETE ON driver_locations TO dms_app;
