"""The fault suite's results, collected by each test and rendered as a table by the conftest."""

from __future__ import annotations

from tests.faults.harness import FaultResult

# Every fault test, in the order of the table; the table is written only when all of them ran.
FAULTS = (
    "kill -9 a gateway with clients attached",
    "restart Redis",
    "restart PostgreSQL",
    "kill -9 the active relay",
    "stalled subscriber closed with 4008",
    "Redis drops a gateway's pub/sub connection (output buffer limit)",
    "random connection drops through a TCP proxy",
)
RESULTS: dict[str, FaultResult] = {}


def record(result: FaultResult) -> None:
    assert result.fault in FAULTS, result.fault
    RESULTS[result.fault] = result
