-- dms:no-transaction
-- Built concurrently so that applying it to a live database does not block order writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_by ON orders (created_by, created_at DESC);
