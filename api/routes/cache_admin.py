"""`GET /api/cache/{key}`: one entry of the application's own cache, personal fields redacted (admin).

A key is either the full Redis key (`dms:{api}:cache:<namespace>:g<generation>:<key>`) or
`<namespace>:<key>`, read in the namespace's current generation. Anything else that lives in
Redis (rate-limit windows, counters, generations, rebuild locks, other apps' keys) is 404: this is
a window onto the cache, not onto Redis.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from flask import Blueprint, jsonify

from api import keys
from api.context import require, services
from api.routes.orders import CACHE_NAMESPACE as ORDERS
from api.routes.products import NAMESPACE as PRODUCTS
from common.errors import NotFound

bp = Blueprint("cache_admin", __name__, url_prefix="/api/cache")

NAMESPACES = (PRODUCTS, ORDERS)
PERSONAL_FIELDS = frozenset({"customer_name", "notes", "display_name", "phone", "address"})
REDACTED = "[redacted]"
# An entry key as api/keys.py builds it, its three parts replaced by patterns.
_FULL_KEY = re.compile("^" + re.escape(keys.entry_key("\x01", "\x02", "\x03")).replace(
    "\x01", f"(?P<ns>{'|'.join(NAMESPACES)})").replace("\x02", r"\d+").replace("\x03", "(?P<rest>.+)") + "$")
_SHORT_KEY = re.compile(rf"^(?P<ns>{'|'.join(NAMESPACES)}):(?P<rest>.+)$")
_MAX_KEY_CHARS = 512


def resolve(client: redis.Redis, key: str) -> str | None:
    """The Redis key of a cache entry named by `key`, or None when it names no cache entry."""
    if len(key) > _MAX_KEY_CHARS or key.endswith(":lock"):
        return None
    if _FULL_KEY.match(key):
        return key
    short = _SHORT_KEY.match(key)
    if short is None:
        return None
    generation = int(client.get(keys.generation_key(short["ns"])) or 0)
    return keys.entry_key(short["ns"], str(generation), short["rest"])


def redact(value: Any) -> Any:
    """`value` with every personal field (at any depth) replaced; nulls stay null."""
    if isinstance(value, dict):
        return {k: (REDACTED if k in PERSONAL_FIELDS and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def count_keys(client: redis.Redis) -> dict[str, int]:
    """Stored entries per namespace, every generation (old ones use memory until they expire)."""
    counts = {}
    for namespace in NAMESPACES:
        counts[namespace] = sum(1 for key in client.scan_iter(match=keys.entry_key(namespace, "*", "*"), count=1000)
                                if not key.endswith(":lock"))
    return counts


@bp.get("/<path:key>")
@require("admin")
def cache_entry(key: str) -> Any:
    """Read with plain Redis calls, so looking does not move the hit and miss counters."""
    client = services().redis
    full_key = resolve(client, key)
    if full_key is None:
        raise NotFound("no such cache key; cache keys are dms:{api}:cache:<namespace>:g<n>:<key> or <namespace>:<key>",
                       details={"namespaces": list(NAMESPACES)})
    pipe = client.pipeline(transaction=False)
    pipe.get(full_key)
    pipe.ttl(full_key)
    raw, ttl = pipe.execute()
    if raw is None:
        return jsonify({"key": full_key, "hit": False, "value": None, "ttl": None})
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return jsonify({"key": full_key, "hit": True, "value": redact(value), "ttl": ttl if ttl >= 0 else None})
