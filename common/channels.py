"""Channel names and their parsing; imports no I/O library so the gateway's protocol stays pure."""

from __future__ import annotations

import re
import uuid

from common.errors import DmsError

ADMIN_CHANNELS = ("orders", "drivers", "admin:connections")
_CHANNEL = re.compile(r"^(restaurant|order|driver):([0-9a-fA-F-]{36})$")


class InvalidChannel(DmsError):
    status, code = 400, "invalid_channel"


def parse_channel(channel: str) -> tuple[str, str | None]:
    """`restaurant:RID` -> ("restaurant", RID); `orders` -> ("orders", None); else InvalidChannel.

    `orders`, `drivers` and `admin:connections` have no key and are for admins only:
    `common.visibility.check_subscribe` lets admins through before any per-kind rule, so every other
    role falls through to Forbidden.
    """
    if channel in ADMIN_CHANNELS:
        return channel, None
    match = _CHANNEL.match(channel)
    if match is None:
        raise InvalidChannel(f"unknown channel {channel[:100]!r}")
    try:
        return match.group(1), str(uuid.UUID(match.group(2)))
    except ValueError as exc:
        raise InvalidChannel(f"unknown channel {channel[:100]!r}") from exc
