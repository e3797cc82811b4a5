"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from api.context import install_request_hooks
from api.errors import register_error_handlers
from api.routes import health, orders
from api.services import Services
from common.config import Config

MAX_BODY_BYTES = 1024 * 1024
BLUEPRINTS = (health.bp, orders.bp)


def create_app(config: Config | None = None, *, services: Services | None = None) -> Flask:
    """Build the app; opens the database pools (connections are made in the background)."""
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    svc = services or Services.create(config)
    svc.open()
    app.extensions["dms"] = svc
    install_request_hooks(app)
    register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


def services_of(app: Flask) -> Any:
    return app.extensions["dms"]
