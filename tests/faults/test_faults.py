"""One fault per test while orders, GPS points and subscriptions flow: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import time

import redis

from tests.faults.harness import Stack, Stream, assert_lossless
from tests.faults.proxy import ChaosProxy
from tests.faults.results import record
from tests.helpers import seconds, wait_for

WARM_S = 1.0  # stream before the fault
AFTER_S = 3.0  # stream after the fault, before the writer stops


def _closed_as_slow(stack: Stack, user_id: str) -> bool:
    """Whether a gateway has decided to close this user's connection as a slow consumer (logged at once;
    the close frame itself waits behind the bytes the stalled client has not read)."""
    return any("slow consumer:" in line and user_id in line
               for gw in stack.gateways for line in gw.process.log().splitlines())


def test_kill_9_a_gateway_with_clients_attached(stack: Stack) -> None:
    stack.start()
    stream = Stream(stack).start()  # subscribers 0 and 2 and the driver start on the first gateway
    time.sleep(WARM_S)
    stream.mark_fault()
    stack.gateways[0].kill()
    time.sleep(AFTER_S)
    result = stream.finish("kill -9 a gateway with clients attached",
                           notes="2 of 3 subscribers and the driver were on it")
    record(result)
    assert_lossless(result)
    assert result.reconnects >= 2 and stream.gps.connects >= 2


def test_restart_redis(stack: Stack) -> None:
    stack.start()
    stream = Stream(stack).start()
    time.sleep(WARM_S)
    stream.mark_fault()
    stack.infra.restart_redis(between=lambda: time.sleep(1.0))  # down for a second
    time.sleep(AFTER_S)
    result = stream.finish("restart Redis", notes="down 1 s; its data is not persisted")
    record(result)
    assert_lossless(result)


def test_restart_postgres(stack: Stack) -> None:
    stack.start()
    stream = Stream(stack).start()
    time.sleep(WARM_S)
    stream.mark_fault()
    stack.infra.restart_postgres(between=lambda: time.sleep(1.5))  # down for a moment
    time.sleep(AFTER_S)
    result = stream.finish("restart PostgreSQL", notes="fast shutdown, down 1.5 s, started again")
    record(result)
    assert_lossless(result)


def test_kill_9_the_active_relay(stack: Stack) -> None:
    stack.start(relays=2)  # gateways with RELAY_IN_GATEWAY=false, two `python -m relay`
    leader = wait_for(stack.relay_leader, timeout_s=10, message="a relay holding the leader lock")
    assert leader in stack.relays
    assert "relay leading" in stack.relays[leader].log()
    stream = Stream(stack).start()
    time.sleep(WARM_S)
    stream.mark_fault()
    stack.relays[leader].proc.send_signal(signal.SIGKILL)
    stack.relays[leader].proc.wait(timeout=10)
    successor = wait_for(lambda: (name := stack.relay_leader()) not in (None, leader) and name,
                         timeout_s=10, message="the standby relay taking the lock")
    time.sleep(AFTER_S)
    result = stream.finish("kill -9 the active relay", notes=f"{leader} killed, {successor} took over")
    record(result)
    assert_lossless(result)


def test_a_stalled_subscriber_is_closed_with_4008_and_recovers(stack: Stack) -> None:
    # The stalled client reads its backlog, and then the close frame, only once the test lets it go;
    # on a loaded machine that can be later than the default 5 s, after which the gateway rightly
    # drops an unanswered connection (tests/gateway/test_closing.py) and the 4008 is never read.
    stack.start(WS_CLOSE_TIMEOUT="60")
    stream = Stream(stack)
    stalled = stream.subscribers[0]
    stalled.small_buffer = True  # a small receive buffer fills sooner
    bulk = f"restaurant:{stack.restaurant_id}"  # only the stalled client holds it
    stalled.extra_channels.append(bulk)
    stream.start()
    time.sleep(WARM_S)
    stream.mark_fault()
    stalled.stalled.set()
    # Big ephemeral frames to its channel fill its socket buffers and then its 1 MiB queue.
    sent = stack.publish_big(bulk, 400, until=lambda: _closed_as_slow(stack, stalled.user_id))
    wait_for(lambda: _closed_as_slow(stack, stalled.user_id), timeout_s=10, message="a slow-consumer close")
    time.sleep(0.5)  # events keep flowing while it is stalled
    stalled.stalled.clear()
    wait_for(lambda: 4008 in stalled.close_codes, timeout_s=15, message="the client to read its 4008")
    time.sleep(AFTER_S)
    result = stream.finish("stalled subscriber closed with 4008",
                           notes=f"{sent} frames of 60 kB to a channel only it held")
    record(result)
    assert_lossless(result)
    assert [s.close_codes for s in stream.subscribers[1:]] == [[], []]  # the others were not affected


def test_redis_drops_a_gateways_pubsub_connection(stack: Stack) -> None:
    stack.start()
    stream = Stream(stack)
    bulk = f"restaurant:{stack.restaurant_id}"  # held only on the gateway we freeze
    stream.subscribers[0].extra_channels.append(bulk)
    stream.start()
    client = redis.Redis.from_url(stack.infra.redis_url)
    try:
        client.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    finally:
        client.close()
    frozen = stack.gateways[0]  # holds subscribers 0 and 2 and the driver
    redis_log = stack.infra.redis.log_path

    def dropped() -> bool:
        return "overcoming of output buffer limits" in redis_log.read_text(errors="replace")

    time.sleep(WARM_S)
    stream.mark_fault()
    os.kill(frozen.process.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        # Past the kernel's socket buffers (a few MB on loopback), Redis's own buffer passes 64 kB.
        sent = stack.publish_big(bulk, 400, size=60_000, until=dropped)
        wait_for(dropped, timeout_s=10, message="Redis dropping the frozen gateway's pub/sub connection")
        time.sleep(max(0.0, 2.5 - (time.monotonic() - frozen_at)))
    finally:
        os.kill(frozen.process.proc.pid, signal.SIGCONT)
    frozen_s = time.monotonic() - frozen_at
    wait_for(lambda: "hub reconnected to Redis" in frozen.process.log(), timeout_s=15,
             message="the frozen gateway's hub to reconnect")
    time.sleep(AFTER_S)
    result = stream.finish("Redis drops a gateway's pub/sub connection (output buffer limit)",
                           notes=f"gateway stopped {frozen_s:.1f} s, {sent} frames of 60 kB meanwhile")
    record(result)
    assert_lossless(result)
    assert stream.subscribers[2].connects == 1  # it stayed on the frozen gateway: the hub's resync served it


def test_random_connection_drops_through_a_proxy(stack: Stack) -> None:
    stack.start()
    proxy = ChaosProxy(stack.gateways[0].port).start()
    stack.cleanups.append(proxy.stop)
    direct = stack.gateways[1].url
    stream = Stream(stack, subscriber_urls=lambda: [proxy.url], gps_urls=lambda: [direct]).start()
    time.sleep(WARM_S)
    stream.mark_fault()
    proxy.chaos(True)
    time.sleep(seconds(6))
    proxy.chaos(False)
    time.sleep(AFTER_S)
    result = stream.finish("random connection drops through a TCP proxy",
                           notes=f"{proxy.dropped} connections dropped in 6 s")
    record(result)
    assert_lossless(result)
    assert proxy.dropped >= 5 and result.reconnects >= 3
