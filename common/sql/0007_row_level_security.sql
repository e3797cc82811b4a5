-- Row-level security: the database itself enforces the contract's role rules, so a query that
-- forgets a filter still cannot read or change another restaurant's rows.
--
-- The application runs every transaction under a non-owner role with the caller's claims set by
-- set_config(..., true) (transaction-local, so it works through PgBouncer's transaction pooling):
-- dms.role, dms.user_id, dms.restaurant_id. Restaurant, demo and driver users (and requests with
-- no identity) run as dms_app, which the policies below filter. Admins, who may see and do
-- everything by the contract, and the gateway's own work ('service') run as dms_staff, which
-- bypasses row security; so every policy only has per-user arms, each an indexed equality.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dms_app') THEN
        CREATE ROLE dms_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dms_staff') THEN
        CREATE ROLE dms_staff NOLOGIN NOSUPERUSER BYPASSRLS;
    END IF;
END
$$;
GRANT dms_app TO dms_staff;  -- staff has every privilege the app role has

GRANT USAGE ON SCHEMA public TO dms_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO dms_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO dms_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO dms_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO dms_app;
DO $$
BEGIN
    GRANT pg_read_all_stats TO dms_app;  -- the slow-query endpoint reads pg_stat_statements
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'dms_app cannot read other roles'' query texts: grant pg_read_all_stats as a superuser';
END
$$;

-- Claims as STABLE SQL functions: inlined by the planner and evaluated once per query, so each
-- policy compares an indexed column with a constant. A function returns NULL when the caller's
-- role has no such relation (NULL matches no row).
CREATE FUNCTION dms_role() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT coalesce(nullif(current_setting('dms.role', true), ''), 'none') $$;
CREATE FUNCTION dms_user_id() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('dms.user_id', true), '')::uuid $$;
-- The restaurant whose rows a restaurant or demo user may read.
CREATE FUNCTION dms_member_restaurant() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT CASE WHEN dms_role() IN ('restaurant', 'demo')
                      THEN nullif(current_setting('dms.restaurant_id', true), '')::uuid END $$;
-- The restaurant whose rows a restaurant user may write (demo never writes).
CREATE FUNCTION dms_writer_restaurant() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT CASE WHEN dms_role() = 'restaurant'
                      THEN nullif(current_setting('dms.restaurant_id', true), '')::uuid END $$;
-- The driver id of a driver caller.
CREATE FUNCTION dms_driver_self() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT CASE WHEN dms_role() = 'driver' THEN dms_user_id() END $$;

-- Restaurants: members see their own.
ALTER TABLE restaurants ENABLE ROW LEVEL SECURITY;
CREATE POLICY restaurants_member_read ON restaurants FOR SELECT USING (id = dms_member_restaurant());

-- Profiles: everyone sees and may create their own (the first authenticated request does).
ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY profiles_self_read ON profiles FOR SELECT USING (id = dms_user_id());
CREATE POLICY profiles_self_insert ON profiles FOR INSERT
    WITH CHECK (id = dms_user_id() AND role = dms_role()
                AND restaurant_id IS NOT DISTINCT FROM nullif(current_setting('dms.restaurant_id', true), '')::uuid);

-- Products: every authenticated user reads the catalogue; only admins (staff) change it.
ALTER TABLE products ENABLE ROW LEVEL SECURITY;
CREATE POLICY products_user_read ON products FOR SELECT
    USING (dms_role() IN ('restaurant', 'driver', 'demo'));

-- Orders: a restaurant's (and its demo users') own; a driver's assigned ones.
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_member_read ON orders FOR SELECT USING (restaurant_id = dms_member_restaurant());
CREATE POLICY orders_driver_read ON orders FOR SELECT USING (driver_id = dms_driver_self());
CREATE POLICY orders_restaurant_insert ON orders FOR INSERT
    WITH CHECK (restaurant_id = dms_writer_restaurant() AND created_by = dms_user_id());
CREATE POLICY orders_restaurant_update ON orders FOR UPDATE
    USING (restaurant_id = dms_writer_restaurant()) WITH CHECK (restaurant_id = dms_writer_restaurant());
CREATE POLICY orders_driver_update ON orders FOR UPDATE
    USING (driver_id = dms_driver_self()) WITH CHECK (driver_id = dms_driver_self());

-- Order items follow their order: the subquery is itself filtered by the orders policies.
ALTER TABLE order_items ENABLE ROW LEVEL SECURITY;
CREATE POLICY order_items_read ON order_items FOR SELECT
    USING (order_id IN (SELECT o.id FROM orders o));
CREATE POLICY order_items_restaurant_insert ON order_items FOR INSERT
    WITH CHECK (order_id IN (SELECT o.id FROM orders o WHERE o.restaurant_id = dms_writer_restaurant()));

-- Drivers and positions: the driver, and a restaurant with an active order assigned to the
-- driver (the same rule as the driver:DID channel). `= ANY (ARRAY(...))` rather than `IN
-- (SELECT ...)`: the array is computed once, so the condition stays an index condition.
CREATE FUNCTION dms_drivers_of_my_active_orders() RETURNS SETOF uuid LANGUAGE sql STABLE AS $$
    SELECT o.driver_id FROM orders o
    WHERE o.restaurant_id = dms_member_restaurant() AND o.driver_id IS NOT NULL
      AND o.status IN ('pending', 'confirmed', 'preparing', 'ready', 'delivering')
$$;
ALTER TABLE drivers ENABLE ROW LEVEL SECURITY;
CREATE POLICY drivers_self ON drivers FOR ALL
    USING (id = dms_driver_self()) WITH CHECK (id = dms_driver_self());
CREATE POLICY drivers_of_my_orders ON drivers FOR SELECT
    USING (id = ANY (ARRAY(SELECT dms_drivers_of_my_active_orders())));
ALTER TABLE driver_locations ENABLE ROW LEVEL SECURITY;
CREATE POLICY driver_locations_self ON driver_locations FOR ALL
    USING (driver_id = dms_driver_self()) WITH CHECK (driver_id = dms_driver_self());
CREATE POLICY driver_locations_of_my_orders ON driver_locations FOR SELECT
    USING (driver_id = ANY (ARRAY(SELECT dms_drivers_of_my_active_orders())));

-- Idempotency keys belong to their user.
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY idempotency_keys_own ON idempotency_keys FOR ALL
    USING (user_id = dms_user_id()) WITH CHECK (user_id = dms_user_id());
