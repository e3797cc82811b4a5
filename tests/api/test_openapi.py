"""The OpenAPI document: valid shape, and every route the app serves is described with its methods."""

from __future__ import annotations

import re
from typing import Any

from common import gps

# Routes that exist only with DMS_ENV=test and are not part of the public API.
TEST_ONLY_PREFIX = "/api/_test/"


def _template(rule: str) -> str:
    """Flask's `/x/<conv:name>` as OpenAPI's `/x/{}`, so parameter names need not match."""
    return re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", rule)


def test_every_route_is_documented(client: Any, api_app: Any) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.0")
    documented = {re.sub(r"\{[^}]+\}", "{}", path): {m.upper() for m in ops} for path, ops in doc["paths"].items()}
    served = [r for r in api_app.url_map.iter_rules()
              if (r.rule.startswith("/api") or r.rule in ("/health", "/ready"))
              and not r.rule.startswith(TEST_ONLY_PREFIX)]
    assert served
    for rule in served:
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        path = _template(rule.rule)
        assert path in documented, f"{rule.rule} is not in the OpenAPI document"
        assert methods <= documented[path], f"{rule.rule}: {methods - documented[path]} undocumented"


def test_references_resolve_and_errors_share_one_shape(client: Any) -> None:
    doc = client.get("/api/openapi.json").get_json()
    text = str(doc)
    for name in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert name in doc["components"]["schemas"], name
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message", "details"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            for status, reply in operation["responses"].items():
                if int(status) >= 400:
                    assert reply["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_request_bodies_match_the_validators(client: Any) -> None:
    schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    from api.routes import drivers, orders, products, restaurants, users

    pairs = [(restaurants._create_body, "RestaurantCreate"), (users._create_body, "UserCreate"),
             (products._create_body, "ProductCreate"), (products._patch_body, "ProductPatch"),
             (orders._create_body, "OrderCreate"), (orders._status_body, "OrderStatusChange"),
             (orders._assign_body, "OrderAssign"), (drivers._status_body, "DriverStatusChange"),
             (drivers._locations_body, "LocationBatch")]
    for validator, name in pairs:
        schema = schemas[name]
        assert set(schema["properties"]) == set(validator.fields), name
        required = {field for field, spec in validator.fields.items() if spec.required}
        assert set(schema.get("required", [])) == required, name

    # A point is checked by the one GPS rule (common/gps.py), not by a Validator.
    point = schemas["LocationPoint"]
    assert set(point["properties"]) == set(gps.FIELDS)
    assert set(point["required"]) == set(gps.REQUIRED)
