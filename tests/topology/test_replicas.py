"""A real streaming replica (pg_basebackup -R): reads spread to it, read-your-writes, outage tolerated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common.auth import mint_token
from devstack import embedded
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World
from tests.helpers import http_json, wait_for

LIST_QUERY = "%FROM orders WHERE restaurant_id%ORDER BY created_at DESC%"


@pytest.fixture
def replica(infra: Infra, tmp_path: Path) -> Iterator[embedded.ServerProcess]:
    """A hot standby of the session's primary on a free port, run as the same unprivileged user."""
    data_dir = embedded.resolve_data_dir(tmp_path / "replica" / "data")
    data_dir.mkdir(parents=True)
    os.chmod(data_dir, 0o700)
    ids = embedded.unprivileged_ids()
    if ids is not None:
        os.chmod(data_dir.parent, 0o755)  # noqa: S103 - the unprivileged server must reach its data
        os.chown(data_dir, *ids)
    # initdb --auth=trust allows replication connections from 127.0.0.1 ("host replication all").
    subprocess.run([str(embedded.postgres_bin_dir() / "pg_basebackup"), "-D", str(data_dir), "-R", "-X", "stream",
                    "-c", "fast", "-h", "127.0.0.1", "-p", str(infra.postgres.port), "-U", "postgres"],
                   check=True, capture_output=True, preexec_fn=embedded.as_user(ids), timeout=60)
    server = embedded.start_postgres(tmp_path / "replica" / "data", port=embedded.free_port(), durable=False)
    yield server
    server.stop()
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def _list_calls(port: int) -> int:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/dms_test", autocommit=True) as conn:
        row = conn.execute("SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
                           (LIST_QUERY,)).fetchone()
    return int(row[0]) if row else 0


def test_replica_serves_reads_keeps_read_your_writes_and_survives_its_stop(
        infra: Infra, world: World, replica: embedded.ServerProcess, start_api: Any) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{replica.port}/postgres") as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row is not None and row[0] is True
    replica_url = f"postgresql://postgres@127.0.0.1:{replica.port}/dms_test"
    _, api = start_api(DATABASE_REPLICA_URLS=replica_url)
    product = world.products[0]["id"]
    # The router starts using the replica once a check found it caught up.
    def replica_in_use() -> bool:
        assert http_json("GET", f"{api}/api/orders?restaurant_id={world.restaurant_id}", token=world.admin)[0] == 200
        return _list_calls(replica.port) > 0

    wait_for(replica_in_use, timeout_s=10, interval_s=0.1, message="a first read served by the replica")

    primary_before, replica_before = _list_calls(infra.postgres.port), _list_calls(replica.port)
    failures: list[str] = []
    stale: list[str] = []
    written: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        token = mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4()))
        while not stop.is_set():
            status, _, body = http_json("GET", f"{api}/api/orders?restaurant_id={world.restaurant_id}&limit=5",
                                        token=token)
            if status != 200:
                failures.append(f"read {status} {body}")

    def writer() -> None:
        """Read-your-writes: the writer's list right after its own POST must show the new order."""
        while not stop.is_set():
            status, _, order = http_json("POST", f"{api}/api/orders",
                                         {"items": [{"product_id": product, "quantity": 1}]}, token=world.restaurant)
            if status != 201:
                failures.append(f"write {status} {order}")
                continue
            status, _, page = http_json("GET", f"{api}/api/orders?limit=5", token=world.restaurant)
            if status != 200:
                failures.append(f"read-after-write {status} {page}")
            elif order["id"] not in {item["id"] for item in page["items"]}:
                stale.append(order["id"])
            written.append(order["id"])
            time.sleep(0.05)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for thread in threads:
        thread.start()
    try:
        # Counted in work done, not in seconds: a loaded machine gets there later, not differently.
        wait_for(lambda: len(written) >= 20 and _list_calls(replica.port) - replica_before >= 60, timeout_s=60,
                 interval_s=0.1, message="reads on the replica and writes on the primary")
        replica_reads = _list_calls(replica.port) - replica_before
        primary_reads = _list_calls(infra.postgres.port) - primary_before
        share = replica_reads / max(replica_reads + primary_reads, 1)
        replica.stop(sig=signal.SIGINT)  # fast shutdown: its sessions are cut mid-stream
        after = len(written)
        wait_for(lambda: len(written) >= after + 20, timeout_s=60, interval_s=0.1,
                 message="writes and reads going on with the replica gone")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    print(f"\nreplica: {replica_reads} of {replica_reads + primary_reads} list reads ({share:.0%}); "
          f"read-your-writes misses {len(stale)}; failed requests {len(failures)} (replica stopped midway)")
    assert failures == []
    assert stale == []
    assert share >= 0.5
