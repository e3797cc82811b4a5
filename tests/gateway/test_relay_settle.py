"""The relay's ordering rule without a database: when a gap in event ids may be skipped."""

from __future__ import annotations

from gateway.relay import Gap, settle


def test_relay_settle_skips_a_gap_only_after_the_numbering_barrier() -> None:
    """Ids are drawn at commit under one lock (common/sql/0008): a gap is settled once the relay has passed
    that lock after seeing it (it used to wait for every older transaction, open ones included)."""
    rows = [{"id": 1}, {"id": 2}, {"id": 4}]
    ready, gap = settle(rows, last_id=0, gap=None)
    assert [r["id"] for r in ready] == [1, 2] and gap == Gap(3)  # a new gap needs the barrier first
    assert settle(rows[2:], last_id=2, gap=gap) == ([], gap)  # not passed yet: 3 may be committing
    ready, gap = settle(rows[2:], last_id=2, gap=Gap(3, barrier_passed=True))
    assert [r["id"] for r in ready] == [4] and gap is None  # still missing after it: rolled back
    ready, gap = settle([{"id": 3}, {"id": 4}], last_id=2, gap=Gap(3, barrier_passed=True))
    assert [r["id"] for r in ready] == [3, 4] and gap is None  # the id showed up
    # A second gap behind a settled one needs its own barrier: its ids may be drawn after it.
    ready, gap = settle([{"id": 4}, {"id": 6}], last_id=2, gap=Gap(3, barrier_passed=True))
    assert [r["id"] for r in ready] == [4] and gap == Gap(5)
