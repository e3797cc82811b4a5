"""The Flask application factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from api import asyncapi, context, errors, metrics, openapi, performance, ratelimit
from api.cache import register_prefetchers
from api.headers import ResponseHeaders
from api.routes import cache_admin, drivers, health, orders, pages, products, realtime, restaurants, testing, users
from api.routes import performance as performance_routes
from api.routes.analytics import bp as analytics_bp
from api.routes.export import bp as export_bp
from api.services import Services
from common.config import Config, Environment

MAX_BODY_BYTES = 1024 * 1024
BLUEPRINTS = (health.bp, openapi.bp, asyncapi.bp, restaurants.bp, users.bp, products.bp, orders.bp, drivers.bp,
              realtime.bp, pages.bp)

OBSERVABILITY_BLUEPRINTS = (metrics.bp, performance_routes.bp, cache_admin.bp)
DISPATCH_BLUEPRINTS = (analytics_bp, export_bp)


class JSONProvider(DefaultJSONProvider):
    """Keys in the order the code builds them, as the contract's examples show them."""

    sort_keys = False


class ApiFlask(Flask):
    """Flask without the per-call coroutine check: no view or hook of this API is async.

    Flask asks `inspect` of every hook and view on every request whether it is a coroutine
    function; with ten hooks that was a measurable share of a cached read.
    """

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func


def create_app(config: Config | None = None, *, services: Services | None = None) -> Flask:
    """Build the app; opens the database pools (connections are made in the background)."""
    config = config or Config.from_env()
    app = ApiFlask(__name__)
    app.wsgi_app = ResponseHeaders(app.wsgi_app)  # type: ignore[method-assign]
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.strict_slashes = False
    svc = services or Services.create(config)
    performance.init_app(app, svc)  # before the pools open: their cursors time every query
    svc.open()
    app.extensions["dms"] = svc
    context.init_app(app)
    metrics.init_app(app)  # before the rate limiter, so refused requests are timed too
    ratelimit.init_app(app, config)  # after the request hooks, so a 429 carries the request id
    errors.init_app(app)
    for blueprint in (*BLUEPRINTS, *OBSERVABILITY_BLUEPRINTS, *DISPATCH_BLUEPRINTS):
        app.register_blueprint(blueprint)
    register_prefetchers(app, products.PREFETCHERS)
    if config.env == Environment.TEST:
        app.register_blueprint(testing.bp)
    return app
