"""A real Redis Cluster on loopback (three primaries, three replicas) from Debian's `redis-server`.

tests/cluster/conftest.py starts one for the package; its tests carry `needs_system("redis-server")`,
so without the program they skip with one line (and fail under DMS_REQUIRE_ALL=1).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import wait_for

# Short enough that a killed primary's replica takes over in a second or two, long enough that a
# busy two-core machine does not see phantom failures.
NODE_TIMEOUT_MS = 1000
BUS_OFFSET = 10000  # Redis listens for its cluster bus 10000 above the client port


@dataclass
class ClusterNode:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def info(self, section: str) -> dict[str, object]:
        return dict(self.client().info(section))


@dataclass
class LocalCluster:
    """Six `redis-server` processes forming one cluster; `seeds` is the REDIS_CLUSTER_NODES value."""

    program: str
    tmp: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes if node.process is not None)

    def start_node(self, node: ClusterNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.process = subprocess.Popen(
            [self.program, "--port", str(node.port), "--bind", "127.0.0.1", "--dir", str(node.directory),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
             "--logfile", str(node.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _pings(node), message=f"redis-server on {node.port}")

    def kill(self, node: ClusterNode) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        node.process = None

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.live() if node.info("replication").get("role") == "master"]

    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process is not None]

    def by_port(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def slots(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary port) of every range, as the first live node sees them."""
        return _raw_slots(self.live()[0])

    def owner_of(self, key: str) -> ClusterNode:
        """The primary serving `key`'s slot, as the first live node sees it."""
        node = self.live()[0]
        slot = int(node.client().cluster("keyslot", key))
        for first, last, port in _raw_slots(node):
            if first <= slot <= last:
                return self.by_port(port)
        raise AssertionError(f"no owner for slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        return next(node for node in self.live() if node is not primary
                    and node.info("replication").get("master_port") == primary.port)

    def node_id(self, node: ClusterNode) -> str:
        return str(node.client().execute_command("CLUSTER MYID"))

    def move_slot(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """The resharding steps of the Redis Cluster specification, for one slot (keys and all)."""
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in (target, source, *[n for n in self.primaries() if n not in (source, target)]):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Every live node says the cluster is ok and they agree on who serves every slot."""
        def ok() -> bool:
            views = []
            for node in self.live():
                if node.client().cluster("info").get("cluster_state") != "ok":
                    return False
                views.append(sorted(_raw_slots(node)))
            return all(view == views[0] for view in views)
        wait_for(quietly(ok), message="cluster state ok on every node", timeout_s=timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.send_signal(signal.SIGKILL)
                node.process.wait(timeout=10)
                node.process = None


def _pings(node: ClusterNode) -> bool:
    try:
        return bool(node.client(socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _raw_slots(node: ClusterNode) -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary port) from CLUSTER SLOTS, without redis-py's reshaping."""
    conn = node.client().connection_pool.get_connection()
    try:
        conn.send_command("CLUSTER", "SLOTS")
        return [(int(entry[0]), int(entry[1]), int(entry[2][1])) for entry in conn.read_response()]
    finally:
        conn.disconnect()


def _free_port_with_bus() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if all(_bindable(candidate) for candidate in (port, port + BUS_OFFSET)):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def quietly(condition: Callable[[], bool]) -> Callable[[], bool]:
    """`condition`, false while a node refuses or is not up yet."""
    def check() -> bool:
        try:
            return condition()
        except (redis.RedisError, OSError):
            return False
    return check


def start_cluster(tmp: Path) -> LocalCluster:
    program = embedded.system_program("redis-server")
    cli = embedded.system_program("redis-cli")
    assert program is not None and cli is not None, "needs redis-server and redis-cli"
    cluster = LocalCluster(program, tmp)
    try:
        for n in range(6):
            node = ClusterNode(_free_port_with_bus(), tmp / f"node{n}")
            cluster.nodes.append(node)
            cluster.start_node(node)
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{node.port}" for node in cluster.nodes],
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        cluster.wait_ok()
        # Every replica has finished its first sync, so a failover promotes a replica that has the data.
        wait_for(quietly(lambda: all(node.info("replication").get("master_link_status") == "up"
                                     for node in cluster.live() if node.info("replication").get("role") == "slave")),
                 message="replicas in sync")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class ClusterInfra(Infra):
    """PostgreSQL as in `Infra`; Redis is the cluster (`Infra.redis` stays unused by the processes)."""

    cluster: LocalCluster | None = None

    def env(self, **extra: str) -> dict[str, str]:
        assert self.cluster is not None
        return super().env(REDIS_CLUSTER_NODES=self.cluster.seeds, **extra)
