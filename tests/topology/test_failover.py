"""Failover: the primary dies, its synchronous replica is promoted, and the stack follows it.

The cluster is the arrangement deploy/postgresql/dms.conf describes, shrunk to one replica: a
physical replication slot, synchronous commit to the replica (so an acknowledged write is on its
disk), and every process given DATABASE_URL with both hosts and target_session_attrs=read-write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.auth import mint_token
from common.db import connect
from common.migrations import migrate
from devstack import embedded
from relay.loop import LEADER_LOCK_KEY
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import ROOT, http_json, seconds, wait_for
from tests.topology.support import Follower

SLOT = "dms_replica"
RULES = ROOT / "docs" / "deploy" / "prometheus-alerts.yml"


@dataclass
class Cluster:
    primary: embedded.ServerProcess
    replica: embedded.ServerProcess
    replica_dir: Path
    url: str  # both hosts, read-write wanted

    def on(self, server: embedded.ServerProcess, database: str = "dms") -> str:
        return f"postgresql://postgres@127.0.0.1:{server.port}/{database}"


def _as_postgres_user(path: Path) -> Any:
    ids = embedded.unprivileged_ids()
    if ids is not None:
        os.chmod(path.parent, 0o755)  # noqa: S103 - the unprivileged server must reach its data
        os.chown(path, *ids)
    return embedded.as_user(ids)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    primary = embedded.start_postgres(tmp_path / "primary" / "data", port=embedded.free_port(), durable=True,
                                      extra_settings={"wal_sender_timeout": "5s"})
    replica: embedded.ServerProcess | None = None
    replica_dir = embedded.resolve_data_dir(tmp_path / "replica" / "data")
    try:
        embedded.create_database(primary.port, "dms")
        replica_dir.mkdir(parents=True)
        os.chmod(replica_dir, 0o700)
        as_user = _as_postgres_user(replica_dir)
        # -C -S: the replica streams from its own slot, so the primary keeps the WAL it still needs.
        subprocess.run([str(embedded.postgres_bin_dir() / "pg_basebackup"), "-D", str(replica_dir), "-R",
                        "-X", "stream", "-c", "fast", "-C", "-S", SLOT,
                        "-d", f"host=127.0.0.1 port={primary.port} user=postgres application_name={SLOT}"],
                       check=True, capture_output=True, preexec_fn=as_user, timeout=120)
        replica = embedded.start_postgres(tmp_path / "replica" / "data", port=embedded.free_port(), durable=True,
                                          extra_settings={"wal_receiver_status_interval": "1s"})
        with connect(f"postgresql://postgres@127.0.0.1:{primary.port}/postgres", autocommit=True) as conn:
            wait_for(lambda: conn.execute("SELECT 1 FROM pg_stat_replication WHERE application_name = %s"
                                          " AND state = 'streaming'", (SLOT,)).fetchone(),
                     timeout_s=30, message="the replica streaming")
            # A commit is acknowledged only once the replica has flushed it.
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{SLOT}'")
            conn.execute("SELECT pg_reload_conf()")
            wait_for(lambda: conn.execute("SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone(),
                     message="synchronous replication")
        url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{replica.port}/dms"
               "?target_session_attrs=read-write&connect_timeout=2")
        migrate(url)
        yield Cluster(primary, replica, replica_dir, url)
    finally:
        if replica is not None:
            replica.stop()
        primary.stop(sig=signal.SIGKILL)
        shutil.rmtree(replica_dir.parent, ignore_errors=True)
        shutil.rmtree(embedded.resolve_data_dir(tmp_path / "primary" / "data").parent, ignore_errors=True)


@dataclass
class Writer:
    """Places orders one after another; a failed attempt is retried with the same Idempotency-Key,
    as a real client would, so every order the API acknowledged is counted exactly once."""

    api: str
    token: str
    product: str
    acked: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time of the 201, order id)
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            key = str(uuid.uuid4())
            while not self._stop.is_set():
                try:
                    status, _, body = http_json("POST", f"{self.api}/api/orders",
                                                {"items": [{"product_id": self.product, "quantity": 1}]},
                                                token=self.token, headers={"Idempotency-Key": key}, timeout_s=10)
                except OSError:
                    status, body = 0, None
                if status == 201:
                    self.acked.append((time.monotonic(), body["id"]))
                    break
                self.refused += 1
                time.sleep(0.05)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


def _order_ids(follower: Follower) -> set[str]:
    return {event["data"]["order_id"] for event in follower.events if event["event"] == "order.created"}


def _scrape(http: str) -> str:
    with urllib.request.urlopen(f"{http}/metrics", timeout=seconds(10)) as response:
        return response.read().decode()


@pytest.fixture
def cluster_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of the cluster's own: in the shared one, the relay of another test's database would
    set the same watermark key to its own (higher) ids, and this stack's events would look old."""
    server = embedded.start_redis(tmp_path / "redis", port=embedded.free_port(), persist=False)
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop(sig=signal.SIGTERM)


def test_failover_to_a_promoted_replica_loses_no_acknowledged_write(
        cluster: Cluster, cluster_redis: str, infra: Infra, start_api: Any, start_gateway: Any,
        tmp_path: Path) -> None:
    restaurant, user = str(uuid.uuid4()), str(uuid.uuid4())
    with connect(cluster.url) as conn:
        conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'failover')", (restaurant,))
        row = conn.execute("INSERT INTO products (name, category, price) VALUES ('crate', 'x', 3)"
                           " RETURNING id").fetchone()
        conn.commit()
    assert row is not None
    token = mint_token(JWT_SECRET, role="restaurant", sub=user, restaurant_id=restaurant)
    _, api = start_api(DATABASE_URL=cluster.url, REDIS_URL=cluster_redis)
    gateway_process, gateway = start_gateway(base=infra.env(DATABASE_URL=cluster.url, REDIS_URL=cluster_redis,
                                                            WS_PING_INTERVAL="2"))
    channel = f"restaurant:{restaurant}"
    staying = Follower(gateway["url"], token, channel).start()
    recovering = Follower(gateway["url"], token, channel).start()
    for follower in (staying, recovering):
        assert follower.subscribed.wait(seconds(10))

    # Before the fault: the replica is streaming from its slot and the lag gauges say so.
    def gauges() -> str | None:
        text = _scrape(gateway["http"])
        return text if f'replica="{SLOT}"' in text else None

    scrape = wait_for(gauges, message="the replica-lag gauge")
    assert "dms_db_replicas_streaming 1.0" in scrape
    assert f'dms_db_replication_slot_active{{slot="{SLOT}"}} 1.0' in scrape
    exposed = set(re.findall(r"^(dms_[a-z0-9_]+)", scrape, flags=re.MULTILINE))
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] if group["name"] == "dms-replication"
             for rule in group["rules"]]
    assert rules and all(set(re.findall(r"\bdms_[a-z0-9_]+", rule["expr"])) <= exposed for rule in rules)

    writer = Writer(api, token, str(row["id"])).start()
    wait_for(lambda: len(writer.acked) >= 20, timeout_s=20, message="orders before the fault")
    wait_for(lambda: len(_order_ids(staying)) >= 10, message="events before the fault")

    fault = time.monotonic()
    os.killpg(cluster.primary.pid, signal.SIGKILL)  # the whole primary at once, as a crashed host
    assert cluster.primary.process is not None
    cluster.primary.process.wait(timeout=10)
    if recovering._ws is not None:
        recovering._ws.shutdown()  # this subscriber must recover with `since`
    promote = subprocess.run([str(embedded.postgres_bin_dir() / "pg_ctl"), "promote", "-w", "-D",
                              str(cluster.replica_dir)], capture_output=True, text=True,
                             preexec_fn=embedded.as_user(embedded.unprivileged_ids()), timeout=60, check=False)
    assert promote.returncode == 0, promote.stderr
    promoted = time.monotonic()

    first_write = wait_for(lambda: next((at for at, _ in writer.acked if at > fault), None), timeout_s=30,
                           interval_s=0.01, message="an order accepted by the promoted primary")
    def after_fault() -> set[str]:
        return {order for at, order in writer.acked if at > fault}

    wait_for(lambda: bool(_order_ids(staying) & after_fault()), timeout_s=30, interval_s=0.01,
             message="an event of a post-failover order delivered")
    first_event = time.monotonic()
    wait_for(lambda: len(after_fault()) >= 20, timeout_s=30, message="orders after the fault")
    writer.stop()

    acked = {order for _, order in writer.acked}
    for follower in (staying, recovering):
        wait_for(lambda f=follower: acked <= _order_ids(f), timeout_s=30,
                 message="every acknowledged order's event at the subscriber")
    new_primary = cluster.on(cluster.replica)
    with connect(new_primary) as conn:
        stored = conn.execute("SELECT id::text FROM orders WHERE id = ANY(%s::uuid[])", (list(acked),)).fetchall()
        assert {r["id"] for r in stored} == acked  # no acknowledged write lost
        lock = conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
                            " AND ((classid::bigint << 32) | objid::bigint) = %s AND granted",
                            (LEADER_LOCK_KEY,)).fetchone()
        assert lock == {"n": 1}  # the relay leads on the new primary
        cursor = conn.execute("SELECT last_id FROM relay_cursor WHERE name = 'relay'").fetchone()
    leading = [int(n) for n in re.findall(r"relay leading from event (\d+)", gateway_process.log())]
    assert len(leading) >= 2 and leading[-1] > 0, leading  # took over from its cursor, not from 0
    assert cursor is not None and cursor["last_id"] >= max(staying.ids())
    for follower in (staying, recovering):
        assert follower.ids() == sorted(set(follower.ids()))
    assert recovering.connects >= 2
    staying.stop()
    recovering.stop()

    timeline = {"promote_s": round(promoted - fault, 3), "first_accepted_write_s": round(first_write - fault, 3),
                "first_delivered_event_s": round(first_event - fault, 3), "acknowledged_orders": len(acked),
                "refused_attempts": writer.refused, "relay_resumed_from_event": leading[-1]}
    (tmp_path / "failover.json").write_text(json.dumps(timeline))
    print(f"\nfailover timeline (seconds after the primary was killed): {json.dumps(timeline)}")
