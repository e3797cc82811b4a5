"""Two stacks starting at once may pick the same free port; the one that loses the bind must notice
that the server answering there is not its own, and not use the other stack's database."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import embedded
from devstack.stack import _on_a_free_port

# These start PostgreSQL and Redis servers of their own.
pytestmark = pytest.mark.servers


def test_postgres_refuses_a_port_answered_by_another_postgres(tmp_path: Path) -> None:
    port = embedded.free_port()
    theirs = embedded.start_postgres(tmp_path / "theirs" / "data", port=port, durable=False)
    try:
        with pytest.raises(embedded.EmbeddedError, match="exited during start-up"):  # either check, as for Redis
            embedded.start_postgres(tmp_path / "ours" / "data", port=port, durable=False)
        # What a stack does on that error: the port is taken, so it starts on another one.
        ours = _on_a_free_port(port, lambda p: embedded.start_postgres(tmp_path / "ours" / "data", port=p,
                                                                       durable=False))
        try:
            assert ours.port != port and ours.alive()
        finally:
            ours.stop(timeout_s=20)
    finally:
        theirs.stop(timeout_s=20)


def test_redis_refuses_a_port_answered_by_another_redis(tmp_path: Path) -> None:
    port = embedded.free_port()
    theirs = embedded.start_redis(tmp_path / "theirs", port=port, persist=False)
    try:
        # Ours fails its bind and exits; whether the start-up check sees that first or the other
        # Redis first depends on timing, and either way it refuses.
        with pytest.raises(embedded.EmbeddedError, match="exited during start-up"):
            embedded.start_redis(tmp_path / "ours", port=port, persist=False)
    finally:
        theirs.stop(timeout_s=10)
