from __future__ import annotations

import pytest

from common.config import DEV_JWT_SECRET, Config, ConfigError

BASE = {"DATABASE_URL": "postgresql://u:secretpw@127.0.0.1:5432/dms", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_defaults_follow_the_contract() -> None:
    config = Config.from_env(BASE)
    assert (config.api_port, config.gateway_port) == (8000, 8001)
    assert config.ws_ping_interval_s == 30.0 and config.ws_ping_timeout_s == 10.0
    assert config.ws_max_subscriptions == 50 and config.ws_max_message_bytes == 65536
    assert config.ws_max_connections_per_user == 10
    assert (config.rate_limit_ip.count, config.rate_limit_ip.period_s) == (100, 60)
    assert (config.rate_limit_user.count, config.rate_limit_user.period_s) == (1000, 3600)
    assert config.database_listen_url == BASE["DATABASE_URL"]
    assert config.jwt_secret.value == DEV_JWT_SECRET
    assert config.log_format == "text"
    assert config.gateway_reuse_port is False
    assert Config.from_env({**BASE, "GATEWAY_REUSE_PORT": "true"}).gateway_reuse_port is True


def test_every_bad_value_is_reported_at_once() -> None:
    env = {**BASE, "API_PORT": "eighty", "WS_PING_INTERVAL": "-1", "RATE_LIMIT_IP": "lots", "DMS_ENV": "staging"}
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    message = str(info.value)
    for name in ("API_PORT", "WS_PING_INTERVAL", "RATE_LIMIT_IP", "DMS_ENV"):
        assert name in message


def test_required_urls_and_schemes() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: required"):
        Config.from_env({"REDIS_URL": BASE["REDIS_URL"]})
    with pytest.raises(ConfigError, match="REDIS_URL: scheme 'http'"):
        Config.from_env({**BASE, "REDIS_URL": "http://x"})
    with pytest.raises(ConfigError, match="finite"):
        Config.from_env({**BASE, "SENTRY_TRACES_SAMPLE_RATE": "nan"})


def test_production_refuses_the_dev_secret_and_defaults_to_json_logs() -> None:
    with pytest.raises(ConfigError, match="development default is refused"):
        Config.from_env({**BASE, "DMS_ENV": "production"})
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        Config.from_env({**BASE, "DMS_ENV": "production", "JWT_SECRET": "x" * 40})
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        Config.from_env({**BASE, "DMS_ENV": "production", "JWT_SECRET": "x" * 40, "ALLOWED_ORIGINS": "*"})
    config = Config.from_env({**BASE, "DMS_ENV": "production", "JWT_SECRET": "x" * 40,
                              "ALLOWED_ORIGINS": "https://board.example"})
    assert config.log_format == "json"


def test_secrets_never_show() -> None:
    config = Config.from_env({**BASE, "JWT_SECRET": "super-secret-value-123", "SENTRY_DSN": "https://k@h/1"})
    text = repr(config) + str(config.public_summary())
    assert "super-secret-value-123" not in text
    assert "https://k@h/1" not in text
    assert "secretpw" not in str(config.public_summary())


def test_lists_and_rates_parse() -> None:
    config = Config.from_env({**BASE, "ALLOWED_ORIGINS": "https://a.example, https://b.example",
                              "RATE_LIMIT_USER": "50/second", "DATABASE_REPLICA_URLS": "postgresql://r1/db,"})
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert (config.rate_limit_user.count, config.rate_limit_user.period_s) == (50, 1)
    assert config.database_replica_urls == ("postgresql://r1/db",)


def test_ws_compression_is_on_unless_turned_off() -> None:
    assert Config.from_env(BASE).ws_compression is True
    assert Config.from_env({**BASE, "WS_COMPRESSION": "off"}).ws_compression is False
    with pytest.raises(ConfigError, match="WS_COMPRESSION"):
        Config.from_env({**BASE, "WS_COMPRESSION": "sometimes"})
