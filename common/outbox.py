"""The wire format of a channel message in Redis: `id|frame`, `-` in place of the id when not stored.

The relay encodes stored events, `publish_ephemeral` encodes the rest, the gateway's hub decodes.
"""

from __future__ import annotations

EPHEMERAL = "-"


def encode(event_id: int | None, frame: str) -> str:
    return f"{EPHEMERAL if event_id is None else event_id}|{frame}"


def decode(raw: str) -> tuple[int | None, str]:
    """The event id (None for an ephemeral frame) and the frame text, passed on unread."""
    head, _, frame = raw.partition("|")
    return (None if head == EPHEMERAL else int(head)), frame

# Rows of relay_cursor: how far the relay has published, and up to which id events were purged.
RELAY_CURSOR = "relay"
PURGED_CURSOR = "purged"
