"""GET /api/asyncapi.json: an AsyncAPI 3 document whose messages are the protocol's own definitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema

from common.wire import MESSAGES
from gateway.protocol import Session


def test_the_document_describes_every_message(client: Any) -> None:
    response = client.get("/api/asyncapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["asyncapi"] == "3.0.0" and doc["channels"]["ws"]["address"] == "/ws"
    messages = doc["channels"]["ws"]["messages"]
    assert set(messages) == {m.name for m in MESSAGES}
    for name, message in messages.items():
        jsonschema.Draft7Validator.check_schema(message["payload"])
        assert message["payload"]["properties"]["type"] == {"const": name}
    actions = {op["messages"][0]["$ref"].rsplit("/", 1)[1]: op["action"] for op in doc["operations"].values()}
    assert actions == {m.name: m.direction for m in MESSAGES}


def test_the_gateway_parser_understands_every_client_message() -> None:
    """Each `receive` message of the document, in its smallest valid form, is understood by the parser."""
    examples = {"subscribe": {"channel": "orders"}, "unsubscribe": {"channel": "orders"}, "ping": {},
                "location": {"lat": 1.0, "lng": 2.0}, "auth": {"token": "x"}}
    for message in MESSAGES:
        if message.direction != "receive":
            continue
        frame = {"type": message.name, "ref": "r", **examples[message.name]}
        jsonschema.validate(frame, message.schema)
        session = Session(role="driver" if message.name == "location" else "admin")
        actions = session.receive(json.dumps(frame), now_s=0.0, now=datetime.now(UTC))
        codes = [getattr(a, "body", {}).get("code") for a in actions]
        if message.name == "auth" and "unknown_type" in codes:
            continue  # in-band token refresh lives in the gateway's connection code where it exists
        assert "unknown_type" not in codes and "bad_request" not in codes, (message.name, actions)


def test_the_close_codes_described_are_the_gateways() -> None:
    from common.wire import CLOSE_CODES
    from gateway.framing import CloseCode

    contract = {1001, 1008, 1009, 1011, 4001, 4008}  # contract sections 4 and 5
    assert set(CLOSE_CODES) == contract
    assert contract <= {int(code) for code in CloseCode}
