"""Replication gauges read from the primary at scrape time: replica lag, streaming replicas, slots."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from loguru import logger
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.db import connect

# A scrape must not hang on a primary that is gone (failover): fail fast and report nothing.
CONNECT_TIMEOUT_S = 2


class ReplicationCollector(Collector):
    """What the primary knows about its standbys (pg_stat_replication, pg_replication_slots).

    Lag is given both in time (replay_lag: how long ago the replica had replayed what it now
    confirms; 0 when caught up) and in bytes of WAL not yet replayed, which keeps growing when a
    replica stops reporting at all. Read on demand so the numbers are never stale; one short
    connection per scrape.
    """

    def __init__(self) -> None:
        self.url: str | None = None

    def watch(self, url: str) -> None:
        self.url = url

    def describe(self) -> list[GaugeMetricFamily]:
        """The families without values (the registry and the metrics reference read them)."""
        return [
            GaugeMetricFamily("dms_db_replica_lag_seconds", "Replay lag of each streaming replica",
                              labels=["replica"]),
            GaugeMetricFamily("dms_db_replica_lag_bytes", "WAL the replica has not replayed yet", labels=["replica"]),
            GaugeMetricFamily("dms_db_replicas_streaming", "Replicas streaming from the primary"),
            GaugeMetricFamily("dms_db_replication_slot_active", "1 while a replica uses the slot", labels=["slot"]),
            GaugeMetricFamily("dms_db_replication_slot_retained_bytes", "WAL the primary keeps for the slot",
                              labels=["slot"]),
        ]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.url is None:
            return
        lag_s, lag_bytes, streaming, slot_active, slot_retained = self.describe()
        try:
            with connect(self.url + _timeout_suffix(self.url), autocommit=True) as conn:
                if conn.execute("SELECT pg_is_in_recovery() AS standby").fetchone() == {"standby": True}:
                    return  # a standby's view of replication says nothing about the primary's replicas
                replicas = conn.execute(
                    "SELECT application_name AS name, state,"
                    " coalesce(extract(epoch FROM replay_lag), 0)::float8 AS lag_s,"
                    " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8 AS lag_bytes"
                    " FROM pg_stat_replication"
                ).fetchall()
                slots = conn.execute(
                    "SELECT slot_name AS name, active,"
                    " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::float8 AS retained"
                    " FROM pg_replication_slots WHERE slot_type = 'physical'"
                ).fetchall()
        except psycopg.Error as exc:
            logger.debug("replication gauges unavailable: {}", exc)
            return
        for row in replicas:
            lag_s.add_metric([row["name"]], row["lag_s"])
            lag_bytes.add_metric([row["name"]], row["lag_bytes"])
        streaming.add_metric([], sum(1 for row in replicas if row["state"] == "streaming"))
        for row in slots:
            slot_active.add_metric([row["name"]], int(row["active"]))
            slot_retained.add_metric([row["name"]], row["retained"])
        yield from (lag_s, lag_bytes, streaming, slot_active, slot_retained)


def _timeout_suffix(url: str) -> str:
    if "connect_timeout=" in url:
        return ""
    return ("&" if "?" in url else "?") + f"connect_timeout={CONNECT_TIMEOUT_S}"


REPLICATION = ReplicationCollector()
REGISTRY.register(REPLICATION)
