-- Event ids in commit order: a transaction's outbox rows get their ids as the last step of its
-- commit, so an open transaction holds back nobody but itself (docs/PROTOCOL.md, "Event ids").
--
-- A row is inserted with id NULL. A deferred constraint trigger numbers every unnumbered row of
-- the transaction at commit, in insertion order, holding a transaction-level advisory lock in
-- shared mode from just before it draws until the transaction has ended (PostgreSQL releases
-- locks after the commit is visible). Numbering transactions do not wait for each other, so
-- commits still group their WAL flushes. Two of them may become visible in the other order for
-- a commit instant: the relay, seeing id n missing while n+1 is visible, waits only for the
-- transactions that hold the lock at that moment (they are mid-commit), then reads again; an id
-- still missing was rolled back after numbering (a later deferred check failed).

-- The insert-time number stays as draft_id: the primary key, and the order of a transaction's own
-- rows. `id` is the event id subscribers see; existing rows keep theirs.
ALTER TABLE events RENAME COLUMN id TO draft_id;
ALTER TABLE events ADD COLUMN id bigint;
UPDATE events SET id = draft_id;
CREATE UNIQUE INDEX events_id ON events (id);
-- Rows of transactions still running, and nothing else: how the trigger finds its own rows.
CREATE INDEX events_unnumbered ON events (xid) WHERE id IS NULL;

-- CACHE 1: ids come from the shared counter in draw order, never from a session's cache.
CREATE SEQUENCE events_commit_id AS bigint CACHE 1 OWNED BY events.id;
DO $$
DECLARE
    drafted bigint;
BEGIN
    -- Above every id ever drawn or published, so no id is reused after the switch.
    EXECUTE format('SELECT last_value FROM %s', pg_get_serial_sequence('events', 'draft_id')) INTO drafted;
    PERFORM setval('events_commit_id', greatest(drafted, (SELECT max(id) FROM events),
                                                (SELECT max(last_id) FROM relay_cursor), 1));
END
$$;
-- Only the numbering function draws ids (it runs as the owner): an id drawn anywhere else would
-- escape the lock that tells the relay who may still be committing one.
REVOKE USAGE, UPDATE ON SEQUENCE events_commit_id FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dms_app') THEN
        REVOKE USAGE, UPDATE ON SEQUENCE events_commit_id FROM dms_app;
    END IF;
END
$$;

-- One key for "numbering event ids"; the relay's leader lock is another (gateway/relay.py).
CREATE FUNCTION events_number_lock_key() RETURNS bigint LANGUAGE sql IMMUTABLE
    AS $$ SELECT 28267839960806765::bigint $$;  -- 0x646D735F6E756D, "dms_num"

CREATE FUNCTION number_events() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public AS $$
DECLARE
    row_key bigint;
    last_id bigint;
BEGIN
    -- Held until the transaction ends, i.e. after its commit is visible: while a transaction
    -- holds it, an id it drew may still be on its way (the relay looks the holders up in
    -- pg_locks). Shared: numberers never wait for each other. Fires once per inserted row at
    -- commit: the first firing numbers every row of the transaction, the others find nothing
    -- through the small partial index (rows inserted by later deferred triggers queue firings of
    -- their own).
    PERFORM pg_advisory_xact_lock_shared(events_number_lock_key());
    FOR row_key IN
        SELECT draft_id FROM events WHERE xid = pg_current_xact_id() AND id IS NULL ORDER BY draft_id
    LOOP
        last_id := nextval('events_commit_id');
        -- created_at becomes the commit time the contract promises in `ts` (and the relay's lag).
        UPDATE events SET id = last_id, created_at = clock_timestamp() WHERE draft_id = row_key;
    END LOOP;
    -- Only a wake-up for the relay; the table is the truth. Notifications are sent at commit.
    IF last_id IS NOT NULL THEN
        PERFORM pg_notify('dms_events', last_id::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER events_notify ON events;  -- it sent the insert-time id; the numbering notifies now
CREATE CONSTRAINT TRIGGER events_number AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION number_events();
