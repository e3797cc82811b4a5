"""Which read rows the relay may publish now, and the gap in event ids that holds back the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger


@dataclass
class Gap:
    first_missing: int
    # True once every transaction that was numbering after the read that showed the gap has ended.
    barrier_passed: bool = False
    # Those transactions (pg_locks virtualtransaction), and when the relay first listed them.
    holders: list[str] | None = field(default=None, compare=False)
    since: float = field(default=0.0, compare=False)


def settle(rows: list[dict[str, Any]], *, last_id: int, gap: Gap | None
           ) -> tuple[list[dict[str, Any]], Gap | None]:
    """Pick the rows that may be published now, in order, and the gap that blocks the rest.

    A new gap comes back with `barrier_passed` false; the caller waits for the transactions that
    were numbering and reads again. A gap still there after that was rolled back and is skipped.
    """
    ready: list[dict[str, Any]] = []
    expected = last_id + 1
    for row in rows:
        row_id = int(row["id"])
        if row_id != expected:
            if gap is None or gap.first_missing != expected:
                return ready, Gap(expected)
            if not gap.barrier_passed:
                return ready, gap
            logger.bind(first_missing=expected, next_id=row_id).debug(
                "relay skips ids {}..{}: rolled back after numbering", expected, row_id - 1)
            gap = None  # settled: every transaction that drew them has ended
        ready.append(row)
        expected = row_id + 1
    return ready, None  # every row was in order: no gap blocks anything
