"""The long-lived clients one API process holds: database pools and Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import redis

from api.near_cache import NearCache
from api.rate_leases import Leases, new_leases
from api.replicas import ReadPool, Replica, ReplicaRouter
from common.auth import TokenVerifier, verifier_from_config
from common.config import Config
from common.db import Pool, make_pool
from common.redis_client import redis_for
from common.ttl_cache import TtlCache

PROFILE_SEEN_TTL_S = 300.0
T = TypeVar("T")


@dataclass
class Services:
    config: Config
    pool: Pool
    replicas: list[Pool]
    redis: redis.Redis
    router: ReplicaRouter = field(init=False, repr=False)
    # In-process memories that spare a request the JWT check and the profile round trip.
    tokens: TokenVerifier = field(init=False, repr=False)
    profiles_seen: TtlCache[str, bool] = field(init=False, repr=False)
    # ...and a cached read its Redis round trips: copies of cache entries, unspent rate-limit leases.
    near_cache: NearCache = field(init=False, repr=False)
    rate_leases: Leases = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens = verifier_from_config(self.config)
        self.profiles_seen = TtlCache(max_entries=10_000, ttl_s=PROFILE_SEEN_TTL_S)
        self.near_cache = NearCache()
        self.rate_leases = new_leases()
        self.router = ReplicaRouter(
            self.pool, [Replica(f"replica-{n}", pool) for n, pool in enumerate(self.replicas)], self.redis
        )

    @classmethod
    def create(cls, config: Config, *, pool_size: int = 20) -> Services:
        return cls(
            config=config,
            pool=make_pool(config.database_url, name="api", max_size=pool_size),
            replicas=[
                make_pool(url, name=f"api-replica-{n}", max_size=pool_size)
                for n, url in enumerate(config.database_replica_urls)
            ],
            redis=redis_for(config),
        )

    def open(self) -> None:
        self.pool.open(wait=False)
        for replica in self.replicas:
            replica.open(wait=False)
        self.router.start()

    def close(self) -> None:
        self.router.stop()
        self.pool.close()
        for replica in self.replicas:
            replica.close()
        self.redis.close()

    def read(self, run: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        """`run(conn)` for a read that may lag up to a second: on a healthy replica in turn, else (or
        when the replica fails under it) on the primary (api/replicas.py)."""
        if not self.replicas:
            with self.pool.connection() as conn:
                return run(conn)
        return ReadPool(self.router).read(run)
