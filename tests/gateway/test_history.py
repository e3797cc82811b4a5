"""A channel's record of recent events: complete over (floor, newest], bounded, widened by reads."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.history import ChannelHistory


@dataclass
class Out:
    event_id: int | None


def ids(outs: list[Out]) -> list[int | None]:
    return [out.event_id for out in outs]


def test_nothing_is_complete_before_the_first_subscriber_anchors_it() -> None:
    history = ChannelHistory()
    history.append(Out(5))
    assert not history.covers(0) and not history.covers(10)
    history.anchor(5, generation=0)
    assert history.covers(5) and not history.covers(4)
    assert ids(history.after(5)) == []  # the event at the watermark is below the record


def test_events_after_a_since_come_oldest_first_without_ephemeral_or_repeated_ones() -> None:
    history = ChannelHistory()
    history.anchor(10, generation=0)
    for event_id in (11, None, 14, 14, 13, 20):
        history.append(Out(event_id))
    assert ids(history.after(10)) == [11, 14, 20]
    assert ids(history.after(14)) == [20]
    assert ids(history.after(20)) == []


def test_a_second_anchor_changes_nothing() -> None:
    history = ChannelHistory()
    history.anchor(10, generation=0)
    history.append(Out(12))
    history.anchor(15, generation=0)
    assert history.floor == 10 and ids(history.after(10)) == [12]


def test_the_record_is_bounded_and_its_floor_rises_with_what_it_drops() -> None:
    history = ChannelHistory(max_events=3)
    history.anchor(0, generation=0)
    for event_id in range(1, 6):
        history.append(Out(event_id))
    assert ids(history.after(0)) == [3, 4, 5]
    assert history.floor == 2 and not history.covers(1) and history.covers(2)


def test_a_read_widens_the_record_downwards() -> None:
    history = ChannelHistory()
    history.anchor(100, generation=0)
    history.append(Out(101))
    history.widen([Out(90), Out(80)], read_below=100, floor=70)
    assert history.covers(70) and not history.covers(69)
    assert ids(history.after(70)) == [80, 90, 101]
    assert ids(history.after(85)) == [90, 101]


def test_a_read_is_dropped_when_the_record_moved_meanwhile() -> None:
    """Trimmed or reset while the read was under way: joining it would leave a hole in the record."""
    history = ChannelHistory(max_events=2)
    history.anchor(100, generation=0)
    for event_id in (101, 102, 103):
        history.append(Out(event_id))  # the floor rose to 101
    history.widen([Out(90)], read_below=100, floor=80)
    assert history.floor == 101 and ids(history.after(0)) == [102, 103]
    history.reset()
    history.widen([Out(90)], read_below=101, floor=80)
    assert history.floor is None and not history.covers(1_000)


def test_an_anchor_read_before_a_reset_does_not_land_after_it() -> None:
    """A watermark read before Redis dropped says nothing of what was published while it was down."""
    history = ChannelHistory()
    seen = history.generation
    history.reset()
    history.anchor(10, generation=seen)
    assert history.floor is None
    history.anchor(12, generation=history.generation)
    assert history.floor == 12


def test_a_late_event_at_or_below_the_floor_is_left_to_the_store() -> None:
    """The hub may dispatch an event published before the watermark was read after the anchor: the
    shared read brings it, so the record must not hold it twice or out of order."""
    history = ChannelHistory()
    history.anchor(10, generation=0)
    history.append(Out(9))
    history.append(Out(10))
    history.append(Out(11))
    history.widen([Out(10), Out(9), Out(7)], read_below=10, floor=5)
    assert ids(history.after(5)) == [7, 9, 10, 11]
