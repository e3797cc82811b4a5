"""`Event.frames` encodes an event once for all its channels; each frame must be `frame(channel)` exactly."""

from __future__ import annotations

import pytest

from common.events import Event

DATA = {
    "order_id": "6f1c0a52-8a8e-4a5c-9d7e-1f0b8f3a2c11", "status": "preparing", "driver_id": None,
    "total_amount": "42.50", "version": 3, "ratio": 0.1, "big": 10**20, "flag": False,
    "note": 'quotes " and \\ backslash, tab\t, newline\n, café, 東京, emoji \U0001f69a',
    "nested": {"items": [1, 2.5, None, {"k": []}], "empty": {}},
}


@pytest.mark.parametrize("event_id", [1, 9_007_199_254_740_993, None])
def test_each_channel_frame_is_the_single_channel_encoding(event_id: int | None) -> None:
    event = Event(event_id, ("orders", "restaurant:594c1df3", 'odd "channel" é'), "order.status_changed", DATA,
                  "2026-12-06T23:00:00.000000Z")
    assert event.frames() == [(channel, event.frame(channel)) for channel in event.channels]


def test_an_event_without_channels_has_no_frames() -> None:
    assert Event(1, (), "x", {}, "2026-12-06T23:00:00.000000Z").frames() == []
