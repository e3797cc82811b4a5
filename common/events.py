"""Event names, channel names and the outbox writer shared by the API and the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import outbox
from common.clock import iso

if TYPE_CHECKING:  # the gateway's pure protocol core builds frames with this module, loading no driver
    import psycopg

ORDER_CREATED = "order.created"
ORDER_STATUS_CHANGED = "order.status_changed"
ORDER_ASSIGNED = "order.assigned"
DRIVER_STATUS_CHANGED = "driver.status_changed"
DRIVER_LOCATION = "driver.location"
CONNECTIONS_STATS = "connections.stats"

NOTIFY_CHANNEL = "dms_events"
REDIS_PREFIX = "dms:ch:"
RELAY_WATERMARK_KEY = "dms:relay:last_id"
ALL_ORDERS = "orders"
ALL_DRIVERS = "drivers"  # every driver's status changes and locations (admin)
ADMIN_CONNECTIONS = "admin:connections"


def restaurant_channel(restaurant_id: str) -> str:
    return f"restaurant:{restaurant_id}"


def order_channel(order_id: str) -> str:
    return f"order:{order_id}"


def driver_channel(driver_id: str) -> str:
    return f"driver:{driver_id}"


def order_channels(order: dict[str, Any]) -> list[str]:
    """Where an order event goes: its restaurant's board, the order itself, all orders, its driver."""
    channels = [ALL_ORDERS, restaurant_channel(str(order["restaurant_id"])), order_channel(str(order["id"]))]
    if order.get("driver_id"):
        channels.append(driver_channel(str(order["driver_id"])))
    return channels


# json.dumps(value, separators=(",", ":")) without building an encoder per call.
_compact = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class Event:
    """One event as subscribers see it; `id` is None for ephemeral events."""

    id: int | None
    channels: tuple[str, ...]
    event: str
    data: dict[str, Any]
    ts: str

    def frame(self, channel: str) -> str:
        """The contract's server-to-client frame for one channel, encoded once per channel."""
        return json.dumps(
            {"type": "event", "channel": channel, "id": self.id, "event": self.event, "data": self.data,
             "ts": self.ts},
            separators=(",", ":"),
        )

    def frames(self) -> list[tuple[str, str]]:
        """(channel, frame) for every channel, each the same text as `frame(channel)`.

        Only the channel differs between them, so the rest (the data above all) is encoded once:
        the relay's hottest line, three channels to an order event.
        """
        rest = (f',"id":{_compact(self.id)},"event":{_compact(self.event)},"data":{_compact(self.data)}'
                f',"ts":{_compact(self.ts)}}}')
        return [(channel, f'{{"type":"event","channel":{_compact(channel)}{rest}') for channel in self.channels]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(int(row["id"]), tuple(row["channels"]), row["event"], row["data"], iso(row["created_at"]))


def ephemeral_frame(channel: str, event: str, data: dict[str, Any], ts: str) -> str:
    """A server frame for an event that is not stored (`id` null, never replayed)."""
    return json.dumps({"type": "event", "channel": channel, "id": None, "event": event, "data": data, "ts": ts},
                      separators=(",", ":"))


def publish_ephemeral(client: Any, channel: str, frame: str) -> None:
    """Send a stored-nowhere frame to every gateway; `-` in place of an id marks it ephemeral."""
    from common.redis_client import publish_channel  # here, so that frame builders load no Redis driver

    publish_channel(client, REDIS_PREFIX + channel, outbox.encode(None, frame))


@dataclass(frozen=True)
class Draft:
    """An outbox row written in a transaction: its event id is only assigned when that commits."""

    key: int  # events.draft_id


def write_event(
    conn: psycopg.Connection[Any], *, event: str, channels: list[str], data: dict[str, Any]
) -> Draft:
    """Insert an outbox row inside the caller's transaction; it gets its event id at commit.

    Ids are drawn by a deferred trigger as the last step of the commit (sql/0008), so they follow
    commit order and an open transaction holds back no one else's events. The id is therefore
    not known here: read it after the commit with `committed_ids`.
    """
    row = conn.execute(
        "INSERT INTO events (channels, event, data) VALUES (%s, %s, %s) RETURNING draft_id",
        (channels, event, json.dumps(data, default=str)),
    ).fetchone()
    assert row is not None
    return Draft(int(row["draft_id"] if isinstance(row, dict) else row[0]))


def committed_ids(conn: psycopg.Connection[Any], drafts: list[Draft]) -> list[int | None]:
    """The event ids of committed drafts, in the drafts' order; None for one rolled back (or not yet
    committed: call this after the commit)."""
    rows = conn.execute("SELECT draft_id, id FROM events WHERE draft_id = ANY(%s)",
                        ([d.key for d in drafts],)).fetchall()
    found = {int(r["draft_id"] if isinstance(r, dict) else r[0]): (r["id"] if isinstance(r, dict) else r[1])
             for r in rows}
    return [found.get(d.key) for d in drafts]
