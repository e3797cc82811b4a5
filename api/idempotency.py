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


def claim(conn: psycopg.Connection[Any], *, user_id: str, key: str, fingerprint: str) -> Replay | None:
    """Claim the key inside the caller's transaction; return the stored reply if it was used."""
    return finish_claim(conn, send_claim(conn, user_id=user_id, key=key, fingerprint=fingerprint),
                        user_id=user_id, key=key, fingerprint=fingerprint)


# Takes the key when it is new or its record expired (then starts it afresh): one statement, so a
# caller can put it in front of its own reads. A live key is left alone and nothing is returned.
CLAIM_SQL = (
    "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES (%s, %s, %s)"
    " ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status_code = NULL,"
    " response = NULL, created_at = now()"
    " WHERE idempotency_keys.created_at < now() - make_interval(hours => %s)"
    " RETURNING key"
)


def claim_params(*, user_id: str, key: str, fingerprint: str) -> tuple[str, str, str, int]:
    return user_id, key, fingerprint, KEY_TTL_HOURS


def send_claim(conn: psycopg.Connection[Any], *, user_id: str, key: str, fingerprint: str) -> bool:
    """Whether this request took the key (False: it was used, see `finish_claim`)."""
    return conn.execute(CLAIM_SQL, claim_params(user_id=user_id, key=key, fingerprint=fingerprint)).fetchone() \
        is not None


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


def record(conn: psycopg.Connection[Any], *, user_id: str, key: str, status: int, body: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE idempotency_keys SET status_code = %s, response = %s WHERE user_id = %s AND key = %s",
        (status, json.dumps(body), user_id, key),
    )
