"""The HTML pages: security headers, a fresh script nonce per response, cacheable static files."""

from __future__ import annotations

import re
from typing import Any

import pytest

from api.app import create_app
from api.routes.pages import asset_version, content_security_policy
from common.config import Config
from tests.fix_infra import Infra


def _csp(response: Any) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
            for part in (p.strip() for p in policy.split(";")) if part}


@pytest.mark.parametrize("path", ["/board", "/admin"])
def test_pages_carry_a_strict_policy_with_a_fresh_nonce(client: Any, path: str) -> None:
    first, second = client.get(path), client.get(path)
    assert first.status_code == 200 and first.mimetype == "text/html"
    assert first.headers["X-Frame-Options"] == "DENY"
    assert first.headers["X-Content-Type-Options"] == "nosniff"
    assert first.headers["Referrer-Policy"] == "no-referrer"
    assert first.headers["Cache-Control"] == "no-store"
    assert len(first.headers.get_all("Content-Security-Policy")) == 1
    csp = _csp(first)
    assert csp["default-src"] == "'none'"
    assert csp["style-src"] == "'self'"
    assert csp["img-src"] == "'self' data:"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["require-trusted-types-for"] == "'script'"
    assert "unsafe-inline" not in first.headers["Content-Security-Policy"]
    nonce = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{16,})'", csp["script-src"])
    assert nonce is not None, csp["script-src"]
    html = first.get_data(as_text=True)
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(f'nonce="{nonce.group(1)}"' in tag for tag in scripts)
    assert "style=" not in html  # style-src 'self' forbids inline style attributes
    assert _csp(second)["script-src"] != csp["script-src"]


def test_the_gateway_url_comes_from_the_server(client: Any, api_app: Any) -> None:
    config = api_app.extensions["dms"].config
    expected = config.public_gateway_url or f"ws://{config.gateway_host}:{config.gateway_port}/ws"
    response = client.get("/board")
    assert f'data-gateway-url="{expected}"' in response.get_data(as_text=True)
    origin = re.match(r"(wss?://[^/]+)", expected)
    assert origin is not None
    assert _csp(response)["connect-src"] == f"'self' {origin.group(1)}"


def test_policy_names_only_the_gateway_origin() -> None:
    policy = content_security_policy("abc", "wss://rt.example.com")
    assert "connect-src 'self' wss://rt.example.com;" in policy


def test_map_tiles_only_when_a_tile_url_is_configured(client: Any, infra: Infra) -> None:
    """No tile server by default: the map fetches nothing outside and img-src stays 'self' data:."""
    plain = client.get("/admin")
    assert 'data-map-tile-url=""' in plain.get_data(as_text=True) and _csp(plain)["img-src"] == "'self' data:"
    app = create_app(Config.from_env(infra.env(MAP_TILE_URL="https://tiles.example.org/{z}/{x}/{y}.png")))
    try:
        tiled = app.test_client().get("/admin")
        assert 'data-map-tile-url="https://tiles.example.org/{z}/{x}/{y}.png"' in tiled.get_data(as_text=True)
        assert _csp(tiled)["img-src"] == "'self' data: https://tiles.example.org"
    finally:
        app.extensions["dms"].close()


def test_json_responses_keep_the_default_policy(client: Any) -> None:
    response = client.get("/health")
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


@pytest.mark.parametrize("filename", ["common.js", "board.js", "admin.js", "pages.css"])
def test_static_files_are_cached_by_content_version(client: Any, filename: str) -> None:
    version = asset_version(filename)
    assert version
    assert f"/static/{filename}?v={version}" in client.get("/board").get_data(as_text=True) + \
        client.get("/admin").get_data(as_text=True)
    pinned = client.get(f"/static/{filename}?v={version}")
    assert pinned.status_code == 200
    assert pinned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert pinned.headers["X-Content-Type-Options"] == "nosniff"
    unpinned = client.get(f"/static/{filename}")
    assert unpinned.headers["Cache-Control"] == "public, max-age=0, must-revalidate"
    assert "ETag" in unpinned.headers
    pinned.close()
    unpinned.close()


def test_no_script_uses_html_sinks() -> None:
    """The pages require Trusted Types, so the scripts build DOM nodes and never assign HTML strings."""
    from api.routes.pages import STATIC_DIR

    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{script.name} uses {sink}"
