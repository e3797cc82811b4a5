"""The WebSocket protocol's messages as JSON Schemas: one source for the gateway and /api/asyncapi.json.

Each `Message` is one frame type in one direction. The gateway's parser takes `MAX_REF_CHARS` from
here (a location's bounds are the GPS rule's, common.gps), the API publishes these schemas as an
AsyncAPI 3 document, and the tests validate every frame the gateway sends against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from common import gps

Schema = dict[str, Any]

MAX_REF_CHARS = 64
# name -> JSON Schema bounds of a location frame's numbers, from the one GPS rule.
LOCATION_BOUNDS: dict[str, Schema] = {
    "lat": {"minimum": gps.LAT_MIN, "maximum": gps.LAT_MAX},
    "lng": {"minimum": gps.LNG_MIN, "maximum": gps.LNG_MAX},
    "heading": {"minimum": gps.HEADING_MIN, "exclusiveMaximum": gps.HEADING_BELOW},
    "speed": {"minimum": 0, "maximum": gps.SPEED_MAX},
    "accuracy": {"minimum": 0, "maximum": gps.ACCURACY_MAX},
}
ERROR_CODES = ("bad_request", "unknown_type", "invalid_channel", "forbidden", "subscription_limit",
               "rate_limited", "invalid_token")
EVENT_NAMES = ("order.created", "order.status_changed", "order.assigned", "driver.status_changed",
               "driver.location", "connections.stats")
# Close codes the gateway sends, and what a client should do about each.
CLOSE_CODES: dict[int, str] = {
    1001: "going away (shutdown or drain): reconnect with backoff and `since`",
    1008: "policy: kept on sending past the rate limit",
    1009: "a frame over WS_MAX_MESSAGE_BYTES",
    1011: "internal error or no pong within WS_PING_TIMEOUT: reconnect",
    4001: "the token expired: get a new one, then reconnect",
    4008: "slow consumer: the outbound queue passed 1,000 frames or 1 MiB; reconnect with `since`",
}
CHANNEL_PATTERN = r"^(restaurant|order|driver):[0-9a-fA-F-]{36}$|^(orders|drivers|admin:connections)$"

Direction = Literal["send", "receive"]  # as the server sees it: it sends, it receives

_REF: Schema = {"type": ["string", "null"], "maxLength": MAX_REF_CHARS,
                "description": "optional, echoed in the reply"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_CHANNEL: Schema = {"type": "string", "pattern": CHANNEL_PATTERN}
# A position in a channel's id sequence: 0 when no event has been written yet.
_CURSOR: Schema = {"type": ["integer", "null"], "minimum": 0}
_EVENT_ID: Schema = {"type": ["integer", "null"], "minimum": 1,
                     "description": "null for ephemeral events (driver.location, connections.stats)"}


def _frame(kind: str, properties: Schema, required: tuple[str, ...] = (), *, closed: bool = True) -> Schema:
    return {
        "type": "object",
        "properties": {"type": {"const": kind}, **properties},
        "required": ["type", *required],
        "additionalProperties": not closed,
    }


def _number(name: str) -> Schema:
    return {"type": "number", **LOCATION_BOUNDS[name]}


EVENT: Schema = _frame("event", {
    "channel": _CHANNEL,
    "id": _EVENT_ID,
    # Known names in `examples`: a pattern, not an enum, so a newer server's events stay valid frames.
    "event": {"type": "string", "pattern": r"^[a-z_]+(\.[a-z_]+)+$", "examples": list(EVENT_NAMES)},
    "data": {"type": "object"},
    "ts": _TIME,
}, ("channel", "id", "event", "data", "ts"))


@dataclass(frozen=True)
class Message:
    name: str
    direction: Direction
    summary: str
    schema: Schema


MESSAGES: tuple[Message, ...] = (
    Message("welcome", "send", "First frame of every connection.", _frame("welcome", {
        "connection_id": {"type": "string"},
        "user": {"type": "object", "properties": {"id": {"type": "string"}, "role": {"type": "string"}},
                 "required": ["id", "role"]},
        "ping_interval": {"type": "number", "exclusiveMinimum": 0},
        "max_subscriptions": {"type": "integer", "minimum": 1},
        "server_time": _TIME,
    }, ("connection_id", "user", "ping_interval", "max_subscriptions", "server_time"))),
    Message("subscribe", "receive", "Subscribe to a channel; with `since`, replay every event after that id first.",
            _frame("subscribe", {"channel": {"type": "string"}, "since": {"type": "integer", "minimum": 0},
                                 "ref": _REF}, ("channel",))),
    Message("subscribed", "send", "A subscribe succeeded; replayed events (with `since`) follow, then live ones.",
            _frame("subscribed", {"channel": _CHANNEL, "ref": _REF, "last_event_id": _CURSOR,
                                  "recovered": {"type": "boolean"}},
                   ("channel", "ref", "last_event_id", "recovered"))),
    Message("unsubscribe", "receive", "Leave a channel.",
            _frame("unsubscribe", {"channel": {"type": "string"}, "ref": _REF}, ("channel",))),
    Message("unsubscribed", "send",
            "The subscription ended: the reply to `unsubscribe`, or (ref null, reason `forbidden`) the right ended.",
            _frame("unsubscribed", {"channel": _CHANNEL, "ref": _REF,
                                    "reason": {"type": "string", "enum": ["forbidden"]}}, ("channel", "ref"))),
    Message("location", "receive", "A driver's position; answered with `ack` once stored durably.",
            _frame("location", {**{name: _number(name) for name in LOCATION_BOUNDS},
                                "recorded_at": _TIME, "ref": _REF}, ("lat", "lng"))),
    Message("ack", "send", "A location frame was accepted for durable storage.",
            _frame("ack", {"ref": _REF}, ("ref",))),
    Message("ping", "receive", "Application-level ping.", _frame("ping", {"ref": _REF})),
    Message("pong", "send", "Answer to `ping`.", _frame("pong", {"ref": _REF, "server_time": _TIME},
                                                        ("ref", "server_time"))),
    Message("auth", "receive", "Replace the connection's token (same sub and role) before it expires.",
            _frame("auth", {"token": {"type": "string"}, "ref": _REF}, ("token",))),
    Message("authed", "send", "The new token is in force.", _frame("authed", {"ref": _REF, "expires_at": _TIME},
                                                                      ("ref", "expires_at"))),
    Message("event", "send", "One event of a subscribed channel, in id order per channel.", EVENT),
    Message("batch", "send", "Events that arrived within `batch_ms` (opt-in), each exactly an event frame, in order.",
            _frame("batch", {"events": {"type": "array", "items": EVENT, "minItems": 1}}, ("events",))),
    Message("error", "send", "A refused frame; the connection stays open.", _frame("error", {
        "code": {"type": "string", "enum": list(ERROR_CODES)},
        "message": {"type": "string"},
        "ref": _REF,
    }, ("code", "message", "ref"))),
)

BY_NAME: dict[str, Message] = {message.name: message for message in MESSAGES}


def server_frame_schema() -> Schema:
    """One schema that every frame the server sends satisfies (a `oneOf` over the `send` messages)."""
    return {"oneOf": [m.schema for m in MESSAGES if m.direction == "send"]}
