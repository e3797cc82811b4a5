"""In-band token refresh (`auth` -> `authed`): verify the new token, move the expiry, re-check rights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
import psycopg_pool

from common.access import check_subscribe
from common.auth import claims_of
from common.channels import InvalidChannel
from common.db import claims
from common.errors import DmsError, Forbidden, Unauthorized
from common.logging import log_context
from common.roles import ROLES_WITH_RESTAURANT
from gateway.protocol import Auth, authed, error, invalid_token, refresh_refusal

if TYPE_CHECKING:
    from gateway.connection import Connection
    from gateway.server import Gateway


def refresh(gateway: Gateway, conn: Connection, action: Auth) -> None:
    """Runs in its own greenlet (the re-check reads PostgreSQL); a refused token changes nothing."""
    with log_context(connection_id=conn.id):
        try:
            who = gateway.tokens.verify(action.token)
        except Unauthorized as exc:
            conn.send_json(invalid_token(exc.message, action.ref).body)
            return
        except DmsError as exc:  # the identity provider's keys cannot be read
            conn.send_json(error(exc.code, exc.message, action.ref).body)
            return
        refusal = refresh_refusal(conn.identity, who)
        if refusal is not None:
            conn.send_json(invalid_token(refusal, action.ref).body)
            return
        conn.identity = who
        conn.own_restaurant = who.restaurant_id if who.role in ROLES_WITH_RESTAURANT else None
        conn.session.reauthenticated(who.expires_at)
        conn.log.info("token refreshed")
        conn.send_json(authed(action.ref, who.expires_at))
        _recheck(gateway, conn)


def _recheck(gateway: Gateway, conn: Connection) -> None:
    """End the subscriptions the new claims no longer allow, as the rights loop does."""
    who = conn.identity
    ended: list[str] = []
    try:
        with claims(claims_of(who)), gateway.pool.connection() as db:
            for channel in list(conn.subscriptions):
                try:
                    check_subscribe(db, who, channel)
                except (Forbidden, InvalidChannel):
                    ended.append(channel)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        # Fails open for the moment: the rights loop and the next refresh re-check again.
        conn.log.warning("could not re-check subscriptions after a refresh: {}", exc)
        return
    for channel in ended:
        if conn.subscriptions.pop(channel, None) is None:
            continue
        gateway.hub.remove(conn, channel)
        conn.session.subscriptions.discard(channel)
        conn.log.info("subscription to {} ended: the refreshed token does not allow it", channel)
        conn.send_json({"type": "unsubscribed", "channel": channel, "ref": None, "reason": "forbidden"})
