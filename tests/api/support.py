"""Small helpers shared by the API tests."""

from __future__ import annotations

from typing import Any


def auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def error_code(response: Any) -> str:
    body = response.get_json()
    assert body is not None and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return str(body["error"]["code"])


def create_order(client: Any, token: str, product_id: str, *, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/orders", json={"items": [{"product_id": product_id, "quantity": quantity}],
                                                **extra}, headers=auth(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]
