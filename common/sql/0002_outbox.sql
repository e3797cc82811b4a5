-- The outbox: every realtime event is a row here, written in the transaction that causes it.
-- NOTIFY carries only the id (payloads are capped at 8000 bytes); the relay reads the row.
CREATE TABLE events (
    -- The writing transaction, so the relay can tell a gap left by an in-flight transaction from
    -- one left by a rollback. It is the first column on purpose: defaults are evaluated in column
    -- order, so the transaction holds an xid before it draws its event id.
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channels    text[] NOT NULL CHECK (cardinality(channels) BETWEEN 1 AND 16),
    event       text NOT NULL CHECK (length(event) BETWEEN 1 AND 100),
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_channels ON events USING gin (channels);
CREATE INDEX events_created_at ON events (created_at);

-- Where the relay has published up to; survives restarts and failover.
CREATE TABLE relay_cursor (
    name        text PRIMARY KEY,
    last_id     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dms_events', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION notify_event();
