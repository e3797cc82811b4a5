"""common/sql/0008 on a database that already has events: old ids stay, new ids continue above every old one."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from common.db import connect
from common.events import committed_ids, write_event
from common.migrations import SQL_DIR, migrate
from devstack import embedded
from tests.fix_infra import Infra


def test_upgrading_keeps_published_ids_and_draws_new_ones_above_them(infra: Infra, tmp_path: Path) -> None:
    old_sql = tmp_path / "sql"
    old_sql.mkdir()
    for path in sorted(SQL_DIR.glob("*.sql")):
        if path.name < "0008":
            shutil.copy(path, old_sql / path.name)
    url = embedded.create_database(infra.postgres.port, f"dms_upgrade_{uuid.uuid4().hex[:8]}")
    migrate(url, old_sql)
    with connect(url) as conn:
        old = [conn.execute("INSERT INTO events (channels, event, data) VALUES ('{orders}', 'test.old', '{}')"
                            " RETURNING id").fetchone()["id"] for _ in range(3)]
        conn.commit()
        # A drawn id that never committed, and a relay cursor: neither may be reused after the switch.
        conn.execute("INSERT INTO events (channels, event, data) VALUES ('{orders}', 'test.lost', '{}')")
        conn.rollback()
        conn.execute("INSERT INTO relay_cursor (name, last_id) VALUES ('relay', %s)", (old[-1],))
        conn.commit()

    assert migrate(url) == [path.name for path in sorted(SQL_DIR.glob("*.sql")) if path.name >= "0008"]
    with connect(url) as conn:
        rows = conn.execute("SELECT id, event FROM events ORDER BY id").fetchall()
        assert [r["id"] for r in rows] == old
        draft = write_event(conn, event="test.new", channels=["orders"], data={})
        conn.commit()
        (new_id,) = committed_ids(conn, [draft])
        assert new_id is not None and new_id > old[-1] + 1  # above the rolled-back draw too
        conn.commit()


def test_an_uncommitted_row_has_no_id_and_reads_never_match_it(infra: Infra) -> None:
    with connect(infra.database_url) as writer:
        draft = write_event(writer, event="test.pending", channels=["orders"], data={})
        row = writer.execute("SELECT id FROM events WHERE draft_id = %s", (draft.key,)).fetchone()
        assert row is not None and row["id"] is None  # the writer sees its row, without an id
        assert committed_ids(writer, [draft]) == [None]
        assert writer.execute("SELECT count(*) AS n FROM events WHERE draft_id = %s AND id > 0",
                              (draft.key,)).fetchone()["n"] == 0
        writer.commit()
        assert committed_ids(writer, [draft])[0] is not None


def test_numberers_do_not_wait_for_each_other(infra: Infra) -> None:
    """The lock is shared: a transaction that numbered early (SET CONSTRAINTS ALL IMMEDIATE) and
    stays open does not block other commits (the relay waits for it instead: test_ordering)."""
    with connect(infra.database_url) as early, connect(infra.database_url) as other:
        early.execute("SET CONSTRAINTS ALL IMMEDIATE")
        draft = write_event(early, event="test.early", channels=["orders"], data={})
        early_id = early.execute("SELECT id FROM events WHERE draft_id = %s", (draft.key,)).fetchone()["id"]
        assert early_id is not None
        later = write_event(other, event="test.later", channels=["orders"], data={})
        other.execute("SET LOCAL lock_timeout = '1s'")
        other.commit()
        (later_id,) = committed_ids(other, [later])
        other.commit()
        assert later_id is not None and later_id > early_id
        early.commit()
