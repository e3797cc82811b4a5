"""`Idempotency-Key`: the first response again for a retried POST, never a second row.

The key row is inserted in the same transaction as the write it guards, so a racing twin blocks
on the unique index until the first commits and then replays its stored response.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from flask import request
from psycopg import sql

from common.errors import Conflict, ValidationFailed

KEY_TTL_HOURS = 24


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255:
        raise ValidationFailed("Idempotency-Key must be 1..255 characters",
                               details={"Idempotency-Key": "1..255 characters"})
    return key


def request_fingerprint(body: Any) -> str:
    canonical = json.dumps([request.method, request.path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# Takes the key when it is new or its record expired (then starts it afresh): one statement, so a
# caller can put it in front of its own reads (a CTE). A live key is left alone and nothing is
# returned; `finish_claim` then reads what it holds.
CLAIM_SQL = (
    "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES (%s, %s, %s)"
    " ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status_code = NULL,"
    " response = NULL, created_at = now()"
    " WHERE idempotency_keys.created_at < now() - make_interval(hours => %s)"
    " RETURNING key"
)


def claim_params(*, user_id: str, key: str, fingerprint: str) -> tuple[str, str, str, int]:
    return user_id, key, fingerprint, KEY_TTL_HOURS


def finish_claim(conn: psycopg.Connection[Any], claimed: bool, *, user_id: str, key: str,
                 fingerprint: str) -> Replay | None:
    """None when the claim took the key; else the stored reply, or Conflict."""
    if claimed:
        return None
    row = conn.execute(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE user_id = %s AND key = %s",
        (user_id, key),
    ).fetchone()
    if row is None or row["status_code"] is None:
        raise Conflict("a request with this Idempotency-Key is still in progress")
    if row["request_hash"] != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request",
                       details={"Idempotency-Key": "reused with a different body"})
    return Replay(status=row["status_code"], body=row["response"])


def record_statement(*, user_id: str, key: str, status: int, body: dict[str, Any]) -> sql.Composed:
    """The reply stored under the key, with its values bound client-side, so it can travel in one
    message with the write it guards (api/routes/orders.py)."""
    return sql.SQL(
        "UPDATE idempotency_keys SET status_code = {}, response = {}::jsonb WHERE user_id = {} AND key = {}"
    ).format(*map(sql.Literal, (status, json.dumps(body), user_id, key)))
