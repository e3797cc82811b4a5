"""Who a handshake is: a connect ticket (`?ticket=`), a JWT in `?token=`, or `Authorization: Bearer`."""

from __future__ import annotations

import redis

from common import tickets
from common.auth import Identity, TokenVerifier, bearer_token


def identify(query: dict[str, str], authorization: str, tokens: TokenVerifier, client: redis.Redis) -> Identity:
    """The handshake's identity, or `Unauthorized` (a used, expired or unknown ticket, a bad token)."""
    ticket = query.get("ticket")
    if ticket is not None:
        return tickets.redeem(client, ticket)
    return tokens.verify(query.get("token") or bearer_token(authorization))
