"""Keyset pagination: `?limit=` and an opaque `?cursor=` encoding the last row's sort key."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import request

from common.errors import BadRequest, ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[datetime, str] | None


def page_args() -> Page:
    raw_limit = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError as exc:
        raise ValidationFailed("limit must be an integer", details={"limit": "expected an integer"}) from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be 1..{MAX_LIMIT}", details={"limit": f"1..{MAX_LIMIT}"})
    cursor = request.args.get("cursor")
    return Page(limit=limit, after=decode_cursor(cursor) if cursor else None)


def keyset_query(select: str, where: list[str], params: list[Any], page: Page) -> tuple[str, list[Any]]:
    """`select` filtered by `where`, newest first, from the page's cursor, one row past the limit.

    Rows sort on (created_at, id) descending; the cursor is the last row's pair, so pages stay
    stable while new rows arrive.
    """
    where, params = list(where), list(params)
    if page.after is not None:
        where.append("(created_at, id) < (%s, %s)")
        params.extend(page.after)
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
    return sql, [*params, page.limit + 1]


def encode_cursor(created_at: datetime, row_id: Any) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(moment), str(row_id)
    except (ValueError, TypeError) as exc:
        raise BadRequest("cursor is not one this API issued", details={"cursor": "invalid"}) from exc


def page_body(rows: list[dict[str, Any]], items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """`rows` were fetched with limit + 1 so we know whether another page exists."""
    more = len(rows) > limit
    next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if more else None
    return {"items": items[:limit], "next_cursor": next_cursor}
