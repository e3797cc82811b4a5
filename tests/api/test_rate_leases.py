"""Rate-limit leases (api/rate_leases.py): a process takes a slice of a shared counter and spends it
without round trips; the shared limit is never passed, whatever the number of processes."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from api.rate_leases import lease_size, new_leases
from api.ratelimit import hit
from common.config import RateLimit
from tests.fix_infra import Infra

NOW = 1_800_000_000.0  # the start of a minute: windows are computed from the time given, not read


class CountingRedis(redis.Redis):
    """A real client that notes the commands it sends (Redis's own counters are shared with the
    session's other processes, whose background loops may run scripts at any moment)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return super().execute_command(*args, **options)

    def scripts_run(self) -> int:
        return sum(name in ("EVALSHA", "EVAL") for name in self.sent)


def _client(infra: Infra) -> CountingRedis:
    return CountingRedis.from_url(infra.redis_url, decode_responses=True)  # type: ignore[return-value]


def test_lease_sizes() -> None:
    assert [lease_size(RateLimit(n, 60)) for n in (1, 99, 100, 1000, 10**9)] == [1, 1, 2, 20, 1000]


def test_one_round_trip_per_lease_and_exact_counts(infra: Infra) -> None:
    store = _client(infra)
    limit, leases = RateLimit(500, 60), new_leases()  # leases of 10
    subject = f"ip:lease-{uuid.uuid4().hex[:8]}"
    hit(store, new_leases(), [(f"{subject}-warm", limit)], now_s=NOW)  # Redis learns the script first
    before = store.scripts_run()
    counts = []
    for n in range(25):
        windows, _ = hit(store, leases, [(subject, limit)], now_s=NOW + n * 0.1)
        counts.append(windows[0].count)
    assert counts == list(range(1, 26))  # the headers count every request, lease or not
    assert store.scripts_run() - before == 3  # requests 1, 11 and 21 went to Redis
    assert int(store.get(f"dms:{{api}}:rl:{subject}:500/60:{int(NOW // 60)}") or 0) == 30  # three leases taken


def test_the_next_window_takes_a_new_lease(infra: Infra) -> None:
    store = _client(infra)
    limit, leases = RateLimit(500, 60), new_leases()
    subject = f"ip:window-{uuid.uuid4().hex[:8]}"
    hit(store, leases, [(subject, limit)], now_s=NOW)
    before = store.scripts_run()
    windows, _ = hit(store, leases, [(subject, limit)], now_s=NOW + 59)
    assert windows[0].count == 2 and store.scripts_run() - before == 0  # the same window: from the lease
    windows, _ = hit(store, leases, [(subject, limit)], now_s=NOW + 60)
    assert windows[0].count == 1 and store.scripts_run() - before == 1


def test_processes_sharing_a_limit_never_pass_it(infra: Infra) -> None:
    store = redis.Redis.from_url(infra.redis_url, decode_responses=True)
    limit = RateLimit(200, 60)  # leases of 4
    processes = [new_leases() for _ in range(3)]
    subject = f"user:shared-{uuid.uuid4().hex[:8]}"
    allowed = 0
    for n in range(300):  # the client's requests land on the processes in turn
        windows, _ = hit(store, processes[n % 3], [(subject, limit)], now_s=NOW + n * 0.01)
        allowed += windows[0].count <= limit.count
    # Never more than the limit; at most (processes - 1) * (lease - 1) refused early.
    assert 200 - 2 * 3 <= allowed <= 200


def test_a_refused_counter_does_not_spend_the_other_counters_lease(infra: Infra) -> None:
    store = redis.Redis.from_url(infra.redis_url, decode_responses=True)
    tight, loose, leases = RateLimit(2, 60), RateLimit(1000, 3600), new_leases()
    ip, user = f"ip:tight-{uuid.uuid4().hex[:8]}", f"user:loose-{uuid.uuid4().hex[:8]}"
    results = [hit(store, leases, [(ip, tight), (user, loose)], now_s=NOW + n)[0] for n in range(3)]
    assert [w[0].count <= 2 for w in results] == [True, True, False]  # the third is refused by IP
    assert [w[1].count for w in results] == [1, 2, 3]  # the user's lease counts every request
