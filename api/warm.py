"""Catalogue cache warming: at start, after Redis comes back empty, after a write moves the generation."""

from __future__ import annotations

import time
from typing import Any

import gevent
from flask import Flask
from loguru import logger

from api import keys
from api.cache import cache
from api.pagination import DEFAULT_LIMIT, Page
from api.routes.products import NAMESPACE, TTL_S, list_key, load_list
from api.services import Services
from common.db import SERVICE, claims
from common.stores import STORE_ERRORS

# Holds the generation last warmed; gone after a Redis restart or flush, stale after a write.
WARM_MARK = keys.warm_mark(NAMESPACE)
GENERATION_KEY = keys.generation_key(NAMESPACE)
CHECK_EVERY_S = 5.0


def warm_catalogue(app: Flask) -> int:
    """Fill the lists every page opens with (all products, each category, default page size).

    Runs as the service (the catalogue is the same for every authenticated role) and through the
    cache's own lock, so several API processes warming at once load each list only once.
    Returns how many lists it looked at.
    """
    svc: Services = app.extensions["dms"]
    with app.app_context(), claims(SERVICE):
        generation = svc.redis.get(GENERATION_KEY) or "0"
        with svc.pool.connection() as conn:
            categories = [row["category"] for row in
                          conn.execute("SELECT DISTINCT category FROM products ORDER BY category").fetchall()]
        page = Page(limit=DEFAULT_LIMIT, after=None)
        for category in [None, *categories]:
            _warm_one(category, page)
        svc.redis.set(WARM_MARK, generation, ex=TTL_S)
    return 1 + len(categories)


def _warm_one(category: str | None, page: Page) -> None:
    key = list_key(category=category, active=None, q=None, limit=page.limit, cursor=None)
    cache().get_or_load(NAMESPACE, key, lambda: load_list(category, None, None, page), ttl_s=TTL_S)


def warm_if_needed(app: Flask) -> bool:
    """Warm when Redis has no mark of this generation (restarted, flushed, or a write moved it)."""
    svc: Services = app.extensions["dms"]
    generation, mark = svc.redis.mget([GENERATION_KEY, WARM_MARK])
    if mark is not None and mark == (generation or "0"):
        return False
    started = time.perf_counter()
    lists = warm_catalogue(app)
    logger.info("catalogue cache warmed: {} lists in {:.0f} ms", lists, (time.perf_counter() - started) * 1000)
    return True


def run_warmer(app: Flask, *, every_s: float = CHECK_EVERY_S, sleep: Any = None) -> None:
    """Warm now, then check every `every_s` until killed (a greenlet of `python -m api`)."""
    pause = sleep or gevent.sleep
    while True:
        try:
            warm_if_needed(app)
        except STORE_ERRORS as exc:
            logger.warning("catalogue cache not warmed: {}: {}", type(exc).__name__, exc)
        pause(every_s)
