"""What PostgreSQL and Redis raise when they are down, slow or refusing: one tuple, named once.

A background loop or a feature that degrades catches `STORE_ERRORS`, logs and carries on; a
request handler lets them reach the error handler, which answers 503.
"""

from __future__ import annotations

import psycopg
import psycopg_pool
import redis

STORE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, psycopg_pool.PoolTimeout, redis.RedisError)
