"""Products: the catalogue, read by everyone through the Redis cache, written by admins."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api.cache import Prefetcher, cache, query_key
from api.context import require, services
from api.pagination import Page, keyset_query, page_args, page_body
from api.state import request_state
from api.validation import Field, Validator, json_body, uuid_arg
from common.errors import NotFound, ValidationFailed
from common.events import iso
from common.orders import money
from common.ttl_cache import TtlCache

bp = Blueprint("products", __name__, url_prefix="/api/products")

NAMESPACE = "products"
TTL_S = 3600
_ENTRIES: TtlCache[bytes, tuple[str, str]] = TtlCache(max_entries=1_000, ttl_s=TTL_S)
# Browsers and apps may show what they hold for a minute and keep showing it for up to the hour
# of the catalogue's revalidation while they ask again; asking again costs a 304 and no body.
CATALOGUE_CACHE_CONTROL = "private, max-age=60, stale-while-revalidate=3600"
PRODUCT_COLUMNS = "id, name, description, category, unit, price, active, created_at, updated_at"
_FIELDS = {
    "name": Field("string", min=1, max=200),
    "description": Field("string", required=False, max=2000),
    "category": Field("string", min=1, max=100),
    "unit": Field("string", required=False, min=1, max=40),
    "price": Field("money", min=0, max=9_999_999_999.99),
    "active": Field("boolean", required=False),
}
_create_body = Validator(_FIELDS)
_patch_body = Validator({name: Field(spec.kind, required=False, min=spec.min, max=spec.max)
                         for name, spec in _FIELDS.items()})


def product_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "description": row["description"],
        "category": row["category"],
        "unit": row["unit"],
        "price": money(row["price"]),
        "active": row["active"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


@bp.post("")
@require("admin", write=True)
def create_product() -> Any:
    clean = _create_body(json_body())
    columns = list(clean)
    with services().pool.connection() as conn:
        row = conn.execute(
            f"INSERT INTO products ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
            f" RETURNING {PRODUCT_COLUMNS}",
            [clean[name] for name in columns],
        ).fetchone()
    assert row is not None
    cache().invalidate(NAMESPACE)  # after the commit, so no reader can refill with the old list
    return jsonify(product_json(row)), 201, {"Location": f"/api/products/{row['id']}"}


def _active_arg() -> bool | None:
    raw = request.args.get("active")
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise ValidationFailed("active must be true or false", details={"active": "true or false"})
    return raw.lower() == "true"


@bp.get("")
@require()
def list_products() -> Any:
    _, key = _list_entry()  # validates the query string; a cached answer needs nothing more
    found = cache().get_or_load(NAMESPACE, key, _load_requested_list, ttl_s=TTL_S)
    return found.response(cache_control=CATALOGUE_CACHE_CONTROL)


def _load_requested_list() -> dict[str, Any]:
    return load_list(request.args.get("category"), _active_arg(), _search_arg(), page_args())


def _search_arg() -> str | None:
    q = (request.args.get("q") or "").strip() or None
    if q is not None and len(q) > 200:
        raise ValidationFailed("q is too long", details={"q": "at most 200 characters"})
    return q


def load_list(category: str | None, active: bool | None, q: str | None, page: Page) -> dict[str, Any]:
    """One catalogue page from PostgreSQL, as the list endpoint answers it."""
    where: list[str] = []
    params: list[Any] = []
    if category is not None:
        where.append("category = %s")
        params.append(category)
    if active is not None:
        where.append("active = %s")
        params.append(active)
    if q is not None:
        # The same expression as the products_search GIN index, so the index serves it.
        where.append("to_tsvector('simple', name || ' ' || description) @@ plainto_tsquery('simple', %s)")
        params.append(q)
    sql, params = keyset_query(f"SELECT {PRODUCT_COLUMNS} FROM products", where, params, page)
    # The primary, not a replica: a lagging replica would refill the new generation with old rows.
    with services().pool.connection() as conn:
        rows = conn.execute(sql, params).fetchall()
    return page_body(rows, [product_json(row) for row in rows[: page.limit]], page.limit)


def _list_entry() -> tuple[str, str]:
    """The list's cache entry from the query string alone (raises where the view would refuse).

    Remembered per query string in this process (parsing and hashing it cost as much as the rest
    of a cached read), and for the request: the rate limiter asks first, the view again.
    """
    state = request_state()
    entry = state.list_entry
    if entry is None:
        query = request.query_string
        entry = _ENTRIES.get(query)
        if entry is None:
            entry = _compute_list_entry()  # an invalid query raises every time; only valid ones are kept
            _ENTRIES.put(query, entry)
        state.list_entry = entry
    return entry


def _compute_list_entry() -> tuple[str, str]:
    page = page_args()
    return NAMESPACE, list_key(category=request.args.get("category"), active=_active_arg(), q=_search_arg(),
                               limit=page.limit, cursor=request.args.get("cursor"))


def _one_entry() -> tuple[str, str]:
    return NAMESPACE, f"one:{uuid_arg(request.view_args['product_id'] if request.view_args else '', what='product')}"


# The entries the rate limiter may read for these views before they run (registered by create_app).
PREFETCHERS: dict[str, Prefetcher] = {f"{bp.name}.list_products": _list_entry, f"{bp.name}.get_product": _one_entry}


def list_key(*, category: str | None, active: bool | None, q: str | None, limit: int, cursor: str | None) -> str:
    """The cache key of one catalogue list query (the warmer builds the same keys)."""
    return "list:" + query_key(category=category, active=active, q=q, limit=limit, cursor=cursor)


@bp.get("/<product_id>")
@require()
def get_product(product_id: str) -> Any:
    product_id = uuid_arg(product_id, what="product")

    def load() -> dict[str, Any] | None:
        with services().pool.connection() as conn:
            row = conn.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = %s", (product_id,)).fetchone()
        return None if row is None else product_json(row)

    # An unknown id is cached as {} too; creating a product moves to a new generation anyway.
    found = cache().get_or_load(NAMESPACE, f"one:{product_id}", lambda: load() or {}, ttl_s=TTL_S)
    if found.raw == "{}":
        raise NotFound("no such product")
    return found.response(cache_control=CATALOGUE_CACHE_CONTROL)


@bp.patch("/<product_id>")
@require("admin", write=True)
def update_product(product_id: str) -> Any:
    product_id = uuid_arg(product_id, what="product")
    clean = _patch_body(json_body())
    if not clean:
        raise ValidationFailed("nothing to change", details={"body": "name at least one field"})
    assignments = ", ".join(f"{name} = %s" for name in clean)
    with services().pool.connection() as conn:
        row = conn.execute(
            f"UPDATE products SET {assignments}, updated_at = now() WHERE id = %s RETURNING {PRODUCT_COLUMNS}",
            [*clean.values(), product_id],
        ).fetchone()
    if row is None:
        raise NotFound("no such product")
    cache().invalidate(NAMESPACE)
    return jsonify(product_json(row))
