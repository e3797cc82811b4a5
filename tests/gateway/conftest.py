"""Every frame the gateway sends during these tests must match the AsyncAPI document's schemas."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jsonschema
import pytest

from api.asyncapi import document
from tests.helpers import RECEIVED_FRAMES


@lru_cache(maxsize=1)
def validators() -> dict[str, jsonschema.protocols.Validator]:
    """The `send` messages of the served document, by frame type."""
    doc = document("ws://127.0.0.1/ws")
    messages = doc["channels"]["ws"]["messages"]
    sent = [op["messages"][0]["$ref"].rsplit("/", 1)[1] for op in doc["operations"].values() if op["action"] == "send"]
    found: dict[str, Any] = {}
    for name in sent:
        schema = messages[name]["payload"]
        jsonschema.Draft7Validator.check_schema(schema)
        found[name] = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return found


def problems(frames: list[dict[str, Any]]) -> list[str]:
    found = []
    for frame in frames:
        validator = validators().get(frame.get("type"))  # type: ignore[arg-type]
        if validator is None:
            found.append(f"frame type not in the AsyncAPI document: {frame}")
            continue
        for err in validator.iter_errors(frame):
            found.append(f"{frame.get('type')} frame {str(frame)[:300]}: {err.message}")
    return found


@pytest.fixture(autouse=True)
def frames_match_asyncapi() -> Iterator[None]:
    RECEIVED_FRAMES.clear()
    yield
    bad = problems(list(RECEIVED_FRAMES))
    RECEIVED_FRAMES.clear()
    assert not bad, "frames that break /api/asyncapi.json:\n" + "\n".join(bad[:10])
