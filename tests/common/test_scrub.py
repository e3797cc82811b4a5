"""The one Sentry scrubber: every place a token can sit in an event, transaction or breadcrumb."""

from __future__ import annotations

import json

import pytest

from common.auth import mint_token
from common.config import Config, ConfigError
from common.scrub import before_breadcrumb, before_send
from tests.fix_infra import JWT_SECRET


def test_a_transaction_keeps_no_token_anywhere() -> None:
    token = mint_token(JWT_SECRET, role="admin")
    transaction = {
        "type": "transaction",
        "transaction": f"/ws/{token}",
        "request": {"url": f"http://gw/ws?token={token}&batch_ms=5", "query_string": f"token={token}",
                    "headers": {"Authorization": f"Bearer {token}", "Cookie": "session=abc", "Accept": "*/*"},
                    "cookies": {"session": "abc"}},
        "spans": [{"description": "GET http://api/x?ticket=T0PSECRET&a=1", "data": {"url.query": f"token={token}"}}],
        "breadcrumbs": {"values": [{"message": f"sent Authorization: Bearer {token}"}]},
        "contexts": {"trace": {"data": {"http.query": f"access_token={token}"}}},
        "extra": {"headers": [["authorization", "Bearer x"], ["accept", "*/*"]]},
    }
    scrubbed = json.dumps(before_send(transaction, None))
    assert token.rsplit(".", 1)[1] not in scrubbed and "T0PSECRET" not in scrubbed and "abc" not in scrubbed
    assert "batch_ms=5" in scrubbed and '"Accept": "*/*"' in scrubbed  # the rest stays useful


def test_breadcrumbs_are_scrubbed_before_they_are_kept() -> None:
    token = mint_token(JWT_SECRET, role="driver")
    crumb = before_breadcrumb({"category": "httplib", "data": {"url": f"http://x/ws?token={token}"}}, None)
    assert token not in json.dumps(crumb)


def test_a_jwks_url_must_be_http(config: Config) -> None:
    with pytest.raises(ConfigError, match="JWT_JWKS_URL"):
        Config.from_env({"DATABASE_URL": config.database_url, "REDIS_URL": config.redis_url,
                         "JWT_JWKS_URL": "file:///etc/passwd"})
