"""nginx in front of real APIs and gateways: config check, REST and WebSocket through it, spread, failover."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.auth import mint_token
from devstack import embedded, nginx
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World, write_events
from tests.helpers import WsClient, http_json, wait_for
from tests.topology.support import Follower, port_of

pytestmark = pytest.mark.needs_system("nginx")


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    site = nginx.Site(api_ports=(9100, 9101), gateway_ports=(9102, 9103), listen_port=9180)
    text = nginx.render(site, tmp_path / "prefix").read_text()
    conf = "\n".join(line.split("#")[0] for line in text.splitlines())  # directives, not comments
    assert "syntax is ok" in nginx.check(tmp_path / "prefix")
    assert conf.count("least_conn;") == 2 and "server 127.0.0.1:9101 max_fails=2 fail_timeout=3s;" in conf
    # Gateways are never marked down: a refused handshake burst must not leave nginx with no upstream.
    assert "server 127.0.0.1:9103 max_fails=0 fail_timeout=3s;" in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf and "non_idempotent" not in conf
    assert "$request_uri" not in conf and "$args" not in conf and "$uri" in conf
    assert "daemon off;" in conf and str((tmp_path / "prefix").resolve()) + "/nginx.pid" in conf


def test_workers_are_sized_for_the_expected_clients(tmp_path: Path) -> None:
    # Two descriptors per proxied WebSocket: 9,900 per worker under a 20,000 limit, planned at 80%.
    assert nginx.clients_per_worker(20_000) == 9_900
    sizes = {clients: nginx.fleet_sizing(clients, fd_limit=20_000) for clients in (1, 4_000, 10_000, 20_000)}
    assert [size["worker_processes"] for size in sizes.values()] == [1, 1, 2, 3]
    assert all(size["worker_connections"] == 19_800 and size["worker_rlimit_nofile"] == 20_000
               for size in sizes.values())
    with pytest.raises(nginx.NginxError):
        nginx.fleet_sizing(0)
    site = nginx.fleet_site(expected_clients=20_000, fd_limit=20_000, api_ports=(9100,), gateway_ports=(9102,),
                            listen_port=9180)
    text = nginx.render(site, tmp_path / "prefix").read_text()
    conf = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "worker_processes 3;" in conf and "worker_rlimit_nofile 20000;" in conf
    assert "worker_connections 19800;" in conf and "reuseport backlog=4096;" in conf
    assert "syntax is ok" in nginx.check(tmp_path / "prefix")


def test_started_workers_get_their_descriptors(tmp_path: Path) -> None:
    # Workers drop to `nobody` when the master is root; worker_rlimit_nofile must still reach them.
    limit = min(nginx.descriptor_limit(), 8_192)
    site = nginx.fleet_site(expected_clients=nginx.clients_per_worker(limit), fd_limit=limit,
                            api_ports=(9100,), gateway_ports=(9102,), listen_port=embedded.free_port())
    server = nginx.start(site, tmp_path / "prefix")
    try:
        master = psutil.Process(server.pid)
        workers = wait_for(lambda: len(master.children()) == site.worker_processes and master.children(),
                           message="nginx workers started")
        assert len(workers) == site.worker_processes == 2
        for worker in workers:
            # /proc, not prlimit: reading another user's limits that way needs CAP_SYS_RESOURCE.
            line = next(row for row in Path(f"/proc/{worker.pid}/limits").read_text().splitlines()
                        if row.startswith("Max open files"))
            assert int(line.split()[3]) == limit, line
    finally:
        server.stop(sig=signal.SIGTERM, timeout_s=10)


def test_rest_and_websocket_end_to_end_through_nginx(infra: Infra, world: World, start_api: Any,
                                                     start_gateway: Any, start_nginx: Any) -> None:
    _, api = start_api()
    _, gateway = start_gateway(name="ngx")
    server, address = start_nginx([port_of(api)], [port_of(gateway["http"])])
    base = f"http://{address}"

    status, headers, body = http_json("GET", f"{base}/health")
    assert status == 200 and body["service"] == "nginx" and len(headers["X-Request-ID"]) >= 8
    assert http_json("GET", f"{base}/metrics")[0] == 404
    assert http_json("GET", f"{base}/ready")[0] == 200

    ws = WsClient.connect(f"ws://{address}/ws", token=world.restaurant)
    try:
        assert ws.recv()["type"] == "welcome"
        channel = f"restaurant:{world.restaurant_id}"
        assert ws.subscribe(channel)["type"] == "subscribed"
        status, headers, order = http_json(
            "POST", f"{base}/api/orders", {"items": [{"product_id": world.products[0]["id"], "quantity": 3}]},
            token=world.restaurant, headers={"X-Request-ID": "via-nginx-0001", "X-Forwarded-For": "6.6.6.6"},
        )
        assert status == 201, order
        assert headers["X-Request-ID"] == "via-nginx-0001"
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        (event,) = ws.events(1, channel=channel)
        assert event["data"]["order_id"] == order["id"] and event["data"]["request_id"] == "via-nginx-0001"
    finally:
        ws.close()

    # Large JSON bodies come back gzipped when asked for.
    request = urllib.request.Request(f"{base}/api/openapi.json", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
    # The token travelled in ?token= and never reaches nginx's log.
    log = (server.log_path.parent / "access.log").read_text()
    assert "/ws" in log and "token" not in log and world.restaurant not in log
    assert "rid=via-nginx-0001" in log


def test_new_connections_spread_across_two_gateways(start_api: Any, start_gateway: Any, start_nginx: Any) -> None:
    _, api = start_api()
    gateways = [start_gateway(name=f"spread{n}")[1] for n in range(2)]
    _, address = start_nginx([port_of(api)], [port_of(g["http"]) for g in gateways])
    clients = []
    try:
        for _ in range(40):
            client = WsClient.connect(f"ws://{address}/ws", token=mint_token(JWT_SECRET, role="admin"))
            assert client.recv()["type"] == "welcome"
            clients.append(client)
        counts = [http_json("GET", f"{g['http']}/health")[2]["connections"] for g in gateways]
        print(f"\n40 WebSockets through nginx: {counts[0]} and {counts[1]} per gateway")
        assert sum(counts) == 40
        assert all(16 <= count <= 24 for count in counts), counts
    finally:
        for client in clients:
            client.close()


def test_killed_gateway_clients_reconnect_through_nginx_and_lose_nothing(
        infra: Infra, world: World, start_api: Any, start_gateway: Any, start_nginx: Any) -> None:
    _, api = start_api()
    started = [start_gateway(name=f"kill{n}") for n in range(2)]
    _, address = start_nginx([port_of(api)], [port_of(g["http"]) for _, g in started])
    channel = f"restaurant:{world.restaurant_id}"
    followers = [Follower(f"ws://{address}/ws", mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4())),
                          channel).start() for _ in range(10)]
    for follower in followers:
        assert follower.subscribed.wait(10)
    on_gateway = [http_json("GET", f"{g['http']}/health")[2]["connections"] for _, g in started]
    assert all(on_gateway), on_gateway

    written: list[int] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            written.extend(write_events(infra.database_url, channel, 1, event="order.test"))
            time.sleep(0.02)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: len(written) >= 30, message="events before the kill")
        victim, _ = started[0]
        victim.stop(sig=signal.SIGKILL)
        wait_for(lambda: len(written) >= 120, timeout_s=20, message="events after the kill")
    finally:
        stop.set()
        writer.join(timeout=5)
    try:
        for follower in followers:
            wait_for(lambda f=follower: f.ids()[-1:] == written[-1:], timeout_s=20,  # type: ignore[misc]
                     message="every follower at the last event")
        reconnected = sum(1 for f in followers if f.connects > 1)
        print(f"\ngateway SIGKILL: {on_gateway[0]} of 10 clients moved, {len(written)} events written, "
              f"lost per client: {[len(set(written) - set(f.ids())) for f in followers]}")
        assert reconnected == on_gateway[0]
        for follower in followers:
            assert follower.ids() == sorted(written)
    finally:
        for follower in followers:
            follower.stop()


def _ws_log_lines(server: Any, after: int) -> list[str]:
    lines = (server.log_path.parent / "access.log").read_text().splitlines()[after:]
    return [line for line in lines if '"GET /ws ' in line]


@pytest.mark.parametrize("fault", ["draining", "full", "killed"])
def test_a_refused_or_dead_gateways_handshake_goes_to_the_next_gateway(
        tmp_path: Path, start_api: Any, start_gateway: Any, start_nginx: Any, fault: str) -> None:
    _, api = start_api()
    # The first gateway drains for long: a client that never answers its close frame keeps it open.
    # Full: admission holds it at one connection (WS_MAX_CONNECTIONS), which `held` takes.
    (first, first_gw), (_, second_gw) = (start_gateway(name=f"{fault}0", WS_CLOSE_TIMEOUT="60", WS_MAX_CONNECTIONS="1"),
                                         start_gateway(name=f"{fault}1"))
    server, address = start_nginx([port_of(api)], [port_of(first_gw["http"]), port_of(second_gw["http"])])
    log_before = len((server.log_path.parent / "access.log").read_text().splitlines())
    held = None
    if fault in ("draining", "full"):
        held = WsClient.connect(first_gw["url"], token=mint_token(JWT_SECRET, role="admin"))
        assert held.recv()["type"] == "welcome"
    if fault == "draining":
        first.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: http_json("GET", f"{first_gw['http']}/health")[0] == 503, message="first gateway draining")
    elif fault == "killed":
        first.stop(sig=signal.SIGKILL)
    clients = []
    try:
        # More handshakes than the old max_fails=2: every one still tries the first gateway (the
        # emptiest, for least_conn), is refused there, and is upgraded by the second.
        for _ in range(6):
            client = WsClient.connect(f"ws://{address}/ws", token=mint_token(JWT_SECRET, role="admin"))
            assert client.recv()["type"] == "welcome"
            clients.append(client)
        assert http_json("GET", f"{second_gw['http']}/health")[2]["connections"] == 6
        for client in clients:  # nginx logs a WebSocket's request when it ends
            client.close()
        first_addr, second_addr = (f"127.0.0.1:{port_of(g['http'])}" for g in (first_gw, second_gw))
        refused = "502" if fault == "killed" else "503"
        lines = wait_for(lambda: (found := _ws_log_lines(server, log_before)) and len(found) >= 6 and found,
                         message="six handshakes in nginx's access log")
        for line in lines:
            assert " 101 " in line and f"upstream={first_addr}, {second_addr} " in line, line
            assert f"upstream_status={refused}, 101 " in line, line
    finally:
        for client in clients:
            client.close()
        if held is not None:
            held.ws.shutdown()
