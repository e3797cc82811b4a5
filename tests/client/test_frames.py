"""dms_client.frames: a SharedDecoder hands every client the same event frame, parses the rest each time,
and stays bounded."""

from __future__ import annotations

import pytest

from dms_client.frames import SharedDecoder, decode_json

EVENT = b'{"type":"event","channel":"orders","id":7,"event":"order.created","data":{},"ts":"2026-01-01T00:00:00Z"}'
WELCOME = b'{"type":"welcome","connection_id":"c1"}'


def test_an_event_is_parsed_once_and_shared() -> None:
    decode = SharedDecoder()
    assert decode(EVENT) is decode(bytes(EVENT))  # equal bytes from another socket: the same frame
    assert decode(EVENT)["id"] == 7


def test_frames_of_one_connection_are_parsed_each_time() -> None:
    decode = SharedDecoder()
    assert decode(WELCOME) == decode(WELCOME) and decode(WELCOME) is not decode(WELCOME)


def test_it_forgets_past_its_limit() -> None:
    decode = SharedDecoder(limit=2)
    first = decode(EVENT)
    decode(EVENT.replace(b'"id":7', b'"id":8'))
    decode(EVENT.replace(b'"id":7', b'"id":9'))  # the third distinct frame: starts over
    assert decode(EVENT) is not first and decode(EVENT)["id"] == 7


def test_a_frame_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_json(b"[1, 2]")
