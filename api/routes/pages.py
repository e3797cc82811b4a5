"""HTML pages (live order board, admin dashboard): server-rendered shells, vanilla JS, strict CSP."""

from __future__ import annotations

import hashlib
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, render_template, request, url_for

from api.context import services

bp = Blueprint("pages", __name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Asset URLs carry a content hash, so a matching `?v=` can be cached for good; anything else revalidates.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=0, must-revalidate"


def gateway_url() -> str:
    """Where browsers open the WebSocket: PUBLIC_GATEWAY_URL, else the gateway's own address."""
    config = services().config
    return config.public_gateway_url or f"ws://{config.gateway_host}:{config.gateway_port}/ws"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@lru_cache(maxsize=64)
def asset_version(filename: str) -> str:
    try:
        return hashlib.sha256((STATIC_DIR / filename).read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def asset_url(filename: str) -> str:
    return url_for("static", filename=filename, v=asset_version(filename))


def content_security_policy(nonce: str, gateway_origin: str, tile_origin: str = "") -> str:
    """Scripts only with this response's nonce, no inline styles, sockets only to us and the gateway;
    images from a map tile server only when one is configured."""
    return "; ".join((
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        "style-src 'self'",
        f"connect-src 'self' {gateway_origin}",
        f"img-src 'self' data:{' ' + tile_origin if tile_origin else ''}",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ))


def _page(template: str, **context: Any) -> Any:
    nonce = secrets.token_urlsafe(18)
    url = gateway_url()
    tiles = services().config.map_tile_url
    body = render_template(template, nonce=nonce, gateway_url=url, asset_url=asset_url, map_tile_url=tiles, **context)
    response = current_app.make_response(body)
    response.headers["Content-Security-Policy"] = content_security_policy(nonce, _origin(url),
                                                                          _origin(tiles) if tiles else "")
    response.headers["Cache-Control"] = "no-store"  # a fresh nonce every time
    return response


@bp.get("/board")
def board() -> Any:
    """The restaurant's live order board; the token stays in the browser (fragment or paste box)."""
    return _page("board.html")


@bp.get("/admin")
def admin() -> Any:
    """Live numbers and their history, dispatch and the fleet map, database/cache health for admins."""
    return _page("admin.html")


@bp.after_app_request
def _static_cache_headers(response: Any) -> Any:
    if request.endpoint == "static" and response.status_code in (200, 304):
        filename = (request.view_args or {}).get("filename", "")
        version = asset_version(filename)
        response.headers["Cache-Control"] = IMMUTABLE if version and request.args.get("v") == version else REVALIDATE
    return response
