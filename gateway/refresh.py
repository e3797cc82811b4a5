"""In-band token refresh (`auth` -> `authed`): verify the new token, move the expiry, re-check rights."""

from __future__ import annotations

from typing import Any

import gevent
import psycopg
import psycopg_pool

from common import visibility
from common.auth import TokenVerifier, claims_of
from common.channels import InvalidChannel
from common.db import claims
from common.errors import DmsError, Forbidden, Unauthorized
from common.logging import log_context
from gateway.connection import Connection
from gateway.hub import Hub
from gateway.protocol import Auth, authed, error, invalid_token, refresh_refusal
from gateway.rights import end_subscription


class TokenRefresh:
    def __init__(self, tokens: TokenVerifier, pool: psycopg_pool.ConnectionPool[Any], hub: Hub) -> None:
        self.tokens = tokens
        self.pool = pool
        self.hub = hub

    def refresh(self, conn: Connection, action: Auth) -> None:
        gevent.spawn(self._refresh, conn, action)  # the re-check reads PostgreSQL

    def _refresh(self, conn: Connection, action: Auth) -> None:
        """A refused token changes nothing: the old one and its 4001 deadline stay."""
        with log_context(connection_id=conn.id):
            try:
                who = self.tokens.verify(action.token)
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
            conn.own_restaurant = visibility.own_restaurant(who)
            conn.session.reauthenticated(who.expires_at)
            conn.log.info("token refreshed")
            conn.send_json(authed(action.ref, who.expires_at))
            self._recheck(conn)

    def _recheck(self, conn: Connection) -> None:
        """End the subscriptions the new claims no longer allow, as the rights loop does."""
        who = conn.identity
        ended: list[str] = []
        try:
            with claims(claims_of(who)), self.pool.connection() as db:
                for channel in list(conn.subscriptions):
                    try:
                        visibility.check_subscribe(db, who, channel)
                    except (Forbidden, InvalidChannel):
                        ended.append(channel)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            # Fails open for the moment: the rights loop and the next refresh re-check again.
            conn.log.warning("could not re-check subscriptions after a refresh: {}", exc)
            return
        for channel in ended:
            end_subscription(self.hub, conn, channel, "the refreshed token does not allow it")
