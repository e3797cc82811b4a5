"""How a server frame's bytes become a dict: plain JSON, or JSON once per distinct event in a process."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["Frame", "SharedDecoder", "decode_json"]

Frame = dict[str, Any]
# Frames the gateway encodes once and sends, the same bytes, to every subscriber of a channel.
SHARED_PREFIXES = (b'{"type":"event"', b'{"type":"batch"')


def decode_json(payload: bytes) -> Frame:
    """One frame, parsed on its own (DmsClient's default)."""
    frame = json.loads(payload)
    if not isinstance(frame, dict):
        raise ValueError("a frame is a JSON object")
    return frame


class SharedDecoder:
    """Parses each distinct event (or batch) frame once for all the clients of a process that share it.

    With thousands of clients in one process, most of them subscribed to the same channels, parsing
    every copy of an event is most of the clients' CPU; give every DmsClient the same instance
    (`decode=`). The frames it hands out are shared, so handlers must not change them. Other frames
    (welcome, subscribed, errors) differ per connection and are parsed each time. Bounded: past
    `limit` distinct frames it forgets them all and starts over."""

    __slots__ = ("_frames", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._frames: dict[bytes, Frame] = {}
        self.limit = limit

    def __call__(self, payload: bytes) -> Frame:
        if not payload.startswith(SHARED_PREFIXES):
            return decode_json(payload)
        frame = self._frames.get(payload)
        if frame is None:
            frame = decode_json(payload)
            if len(self._frames) >= self.limit:
                self._frames.clear()
            self._frames[payload] = frame
        return frame
