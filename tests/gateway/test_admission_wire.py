"""Admission on a real gateway (contract section 6): 503, `Retry-After` and the error body at either limit.

The checks come before the token's: a refused handshake costs no signature check, and a plain
`GET /ws` without a token learns the same answer (a browser cannot read a refused WebSocket
handshake's status, so its client asks this way).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import websocket

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET
from tests.gateway.test_metrics import scrape, value
from tests.helpers import WsClient, http_json, wait_for


def _token() -> str:
    return mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4()))


def _refused(url: str) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        WsClient.connect(url, token=_token(), timeout_s=5)
    return refused.value


def _admitted(url: str) -> WsClient | None:
    try:
        client = WsClient.connect(url, token=_token(), timeout_s=5)
    except websocket.WebSocketBadStatusException:
        return None
    assert client.recv()["type"] == "welcome"
    return client


def test_a_full_gateway_answers_503_with_retry_after_until_a_connection_leaves(start_gateway: Any) -> None:
    _, gw = start_gateway(name="full", WS_MAX_CONNECTIONS="2")
    first, second = _admitted(gw["url"]), _admitted(gw["url"])
    assert first is not None and second is not None
    refused = _refused(gw["url"])
    assert refused.status_code == 503
    assert int(refused.resp_headers["retry-after"]) >= 1
    # No token: the answer is the same, and a page's fetch from an allowed origin may read it.
    status, headers, body = http_json("GET", f"{gw['http']}/ws", headers={"Origin": "http://page.example"})
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert body["error"]["code"] == "unavailable"
    assert headers["Access-Control-Allow-Origin"] == "http://page.example"
    assert headers["Access-Control-Expose-Headers"] == "Retry-After"
    first.close()
    third = wait_for(lambda: _admitted(gw["url"]), timeout_s=10, message="a place after one connection left")
    samples = scrape(gw["http"])
    assert value(samples, "dms_gateway_handshakes_total", outcome="refused_full") >= 2
    assert value(samples, "dms_gateway_handshakes_total", outcome="admitted") >= 3
    second.close()
    third.close()


def test_handshakes_past_the_accept_rate_are_refused_then_admitted(start_gateway: Any) -> None:
    _, gw = start_gateway(name="rate", WS_ACCEPT_RATE="1")
    first = _admitted(gw["url"])
    assert first is not None
    refused = _refused(gw["url"])  # the bucket holds one handshake and refills one a second
    assert refused.status_code == 503 and int(refused.resp_headers["retry-after"]) >= 1
    second = wait_for(lambda: _admitted(gw["url"]), timeout_s=10, message="the bucket to refill")
    assert value(scrape(gw["http"]), "dms_gateway_handshakes_total", outcome="refused_rate") >= 1
    first.close()
    second.close()
