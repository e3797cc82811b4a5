"""API test fixtures: each test's client comes from its own address, so IP rate limits stay per test."""

from __future__ import annotations

import random
from typing import Any

import pytest


@pytest.fixture
def client(api_app: Any) -> Any:
    """The session app's test client, seen as a fresh client IP (the session app keeps default limits)."""
    test_client = api_app.test_client()
    octets = (random.randrange(256), random.randrange(256), random.randrange(1, 255))
    test_client.environ_base["REMOTE_ADDR"] = "10.{}.{}.{}".format(*octets)
    return test_client
