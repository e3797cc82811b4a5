"""Who a handshake is: a connect ticket (`?ticket=`), a JWT in `?token=`, or `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any

import redis

from common import tickets
from common.auth import Identity, TokenVerifier, bearer_token


def identify(request: Any, tokens: TokenVerifier, client: redis.Redis) -> Identity:
    """The handshake's identity, or `Unauthorized` (a used, expired or unknown ticket, a bad token)."""
    ticket = request.args.get("ticket")
    if ticket is not None:
        return tickets.redeem(client, ticket)
    return tokens.verify(request.args.get("token") or bearer_token(request.headers.get("Authorization", "")))
