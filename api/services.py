"""The long-lived clients one API process holds: database pools and Redis."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool

from common.config import Config
from common.db import make_pool
from common.redis_client import make_redis

Pool = ConnectionPool[psycopg.Connection[dict[str, Any]]]


@dataclass
class Services:
    config: Config
    pool: Pool
    replicas: list[Pool]
    redis: redis.Redis
    _next_replica: itertools.cycle[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next_replica = itertools.cycle(range(len(self.replicas) or 1))

    @classmethod
    def create(cls, config: Config, *, pool_size: int = 20) -> Services:
        return cls(
            config=config,
            pool=make_pool(config.database_url, name="api", max_size=pool_size),
            replicas=[
                make_pool(url, name=f"api-replica-{n}", max_size=pool_size)
                for n, url in enumerate(config.database_replica_urls)
            ],
            redis=make_redis(config.redis_url),
        )

    def open(self) -> None:
        self.pool.open(wait=False)
        for replica in self.replicas:
            replica.open(wait=False)

    def close(self) -> None:
        self.pool.close()
        for replica in self.replicas:
            replica.close()
        self.redis.close()

    def read_pool(self) -> Pool:
        """A replica for reads that may lag; the primary when there is none."""
        if not self.replicas:
            return self.pool
        return self.replicas[next(self._next_replica)]
