"""The application factory: wiring that every route relies on."""

from __future__ import annotations

from typing import Any


def test_json_keeps_the_order_the_code_builds(client: Any) -> None:
    # An error body is code, message, details: not alphabetical, so a sorting encoder shows up.
    response = client.get("/api/this-route-does-not-exist")
    assert response.status_code == 404
    assert list(response.get_json()["error"]) == ["code", "message", "details"]
    assert response.get_data(as_text=True).index('"message"') < response.get_data(as_text=True).index('"details"')


def test_a_401_names_the_scheme(client: Any) -> None:
    response = client.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
