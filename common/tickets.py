"""Connect tickets: opaque, single-use, short-lived stand-ins for a JWT in a WebSocket URL.

Browsers cannot put headers on a WebSocket, and URLs end up in proxies' error logs; a ticket
there is worth one handshake within seconds. Redis holds the caller's claims under a hash of the
ticket (its contents replay nothing), for at most the ticket's life and never past the token's
`exp`; GETDEL makes the redeem atomic, so two handshakes racing with one ticket get one identity.
Fails closed: without Redis no ticket is issued or redeemed (503).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable

import redis

from common.auth import Identity
from common.errors import Unauthorized, Unavailable

PREFIX = "dms:ticket:"
TTL_S = 30.0
MAX_TICKET_CHARS = 100


def _key(ticket: str) -> str:
    return PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


def issue(client: redis.Redis, who: Identity, *, ttl_s: float = TTL_S,
          wall: Callable[[], float] = time.time) -> tuple[str, float]:
    """A new ticket for `who` and its life in seconds (`ttl_s`, or less when the token ends sooner)."""
    life = min(ttl_s, who.expires_at - wall())
    if life <= 0:
        raise Unauthorized("token expired")
    ticket = secrets.token_urlsafe(32)
    body = json.dumps({"sub": who.user_id, "role": who.role, "restaurant_id": who.restaurant_id,
                       "exp": who.expires_at})
    try:
        client.set(_key(ticket), body, px=max(1, int(life * 1000)))
    except redis.RedisError as exc:
        raise Unavailable("connect tickets are unavailable") from exc
    return ticket, life


def redeem(client: redis.Redis, ticket: str, *, wall: Callable[[], float] = time.time) -> Identity:
    """The identity a ticket was issued to, once; `Unauthorized` when used, expired or unknown."""
    if not ticket or len(ticket) > MAX_TICKET_CHARS:
        raise Unauthorized("connect ticket is used, expired or unknown")
    try:
        raw = client.getdel(_key(ticket))
    except redis.RedisError as exc:
        raise Unavailable("connect tickets are unavailable") from exc
    if raw is None:
        raise Unauthorized("connect ticket is used, expired or unknown")
    data = json.loads(raw)
    who = Identity(user_id=data["sub"], role=data["role"], restaurant_id=data["restaurant_id"],
                   expires_at=float(data["exp"]))
    if who.expires_at <= wall():
        raise Unauthorized("the connect ticket's token has expired")
    return who


def expires_in(life_s: float) -> float | int:
    """The reply's `expires_in`: whole seconds as an integer, as the contract shows it."""
    return int(life_s) if float(life_s).is_integer() else round(life_s, 3)
