-- Indexes the read paths need: the live board, the active-order set, the catalogue.
-- Board and order lists: one restaurant's orders by status, newest first.
CREATE INDEX orders_restaurant_status_created ON orders (restaurant_id, status, created_at DESC);
-- Active orders are a small slice of history; a partial index keeps it small and hot.
CREATE INDEX orders_active ON orders (restaurant_id, created_at DESC)
    WHERE status IN ('pending', 'confirmed', 'preparing', 'ready', 'delivering');
-- Covering index so the board list is an index-only scan; id is a key column (not only INCLUDE)
-- because keyset pagination orders by (created_at, id).
CREATE INDEX orders_board_covering ON orders (restaurant_id, created_at DESC, id DESC)
    INCLUDE (status, total_amount, customer_name);
CREATE INDEX orders_driver ON orders (driver_id, created_at DESC) WHERE driver_id IS NOT NULL;
CREATE INDEX orders_created ON orders (created_at DESC, id DESC);
CREATE INDEX products_category_active_created ON products (category, active, created_at DESC);
CREATE INDEX products_search ON products
    USING gin (to_tsvector('simple', name || ' ' || description));
CREATE INDEX profiles_staff ON profiles (role) WHERE role IN ('admin', 'driver');
CREATE INDEX driver_locations_driver_recorded ON driver_locations (driver_id, recorded_at DESC);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
