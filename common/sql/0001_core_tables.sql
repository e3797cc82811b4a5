-- Core tables: restaurants, profiles, products, drivers, orders and their items.

CREATE TABLE restaurants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address     text CHECK (length(address) <= 500),
    phone       text CHECK (length(phone) <= 40),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profiles (
    id             uuid PRIMARY KEY,
    role           text NOT NULL CHECK (role IN ('admin', 'restaurant', 'driver', 'demo')),
    display_name   text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    restaurant_id  uuid REFERENCES restaurants (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (role NOT IN ('restaurant', 'demo') OR restaurant_id IS NOT NULL)
);

CREATE TABLE products (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    category     text NOT NULL CHECK (length(category) BETWEEN 1 AND 100),
    unit         text NOT NULL DEFAULT 'each' CHECK (length(unit) BETWEEN 1 AND 40),
    price        numeric(12, 2) NOT NULL CHECK (price >= 0),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE drivers (
    id                    uuid PRIMARY KEY REFERENCES profiles (id),
    status                text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline', 'on_break')),
    lat                   double precision CHECK (lat BETWEEN -90 AND 90),
    lng                   double precision CHECK (lng BETWEEN -180 AND 180),
    heading               double precision CHECK (heading >= 0 AND heading < 360),
    speed                 double precision CHECK (speed >= 0),
    accuracy              double precision CHECK (accuracy >= 0),
    location_recorded_at  timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((lat IS NULL) = (lng IS NULL))
);

CREATE TABLE driver_locations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    driver_id    uuid NOT NULL REFERENCES drivers (id),
    lat          double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lng          double precision NOT NULL CHECK (lng BETWEEN -180 AND 180),
    heading      double precision CHECK (heading >= 0 AND heading < 360),
    speed        double precision CHECK (speed >= 0),
    accuracy     double precision CHECK (accuracy >= 0),
    recorded_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    restaurant_id  uuid NOT NULL REFERENCES restaurants (id),
    created_by     uuid NOT NULL REFERENCES profiles (id),
    driver_id      uuid REFERENCES drivers (id),
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN (
                       'pending', 'confirmed', 'preparing', 'ready', 'delivering', 'delivered', 'cancelled')),
    total_amount   numeric(12, 2) NOT NULL CHECK (total_amount >= 0),
    notes          text CHECK (length(notes) <= 2000),
    customer_name  text CHECK (length(customer_name) <= 200),
    version        integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (status NOT IN ('delivering', 'delivered') OR driver_id IS NOT NULL)
);

CREATE TABLE order_items (
    order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no     smallint NOT NULL CHECK (line_no >= 1),
    product_id  uuid NOT NULL REFERENCES products (id),
    name        text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    unit_price  numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    line_total  numeric(14, 2) NOT NULL CHECK (line_total >= 0),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE idempotency_keys (
    user_id       uuid NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  text NOT NULL,
    status_code   smallint,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
