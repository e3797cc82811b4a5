"""The one place that reads the environment: typed, validated, secrets hidden."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from urllib.parse import urlsplit

DEV_JWT_SECRET = "dev-secret-change-me"  # noqa: S105 - the contract's dev default, refused in production


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"  # also mounts the test-only routes (api/routes/testing.py)
    PRODUCTION = "production"  # refuses the dev JWT secret and a wildcard origin


ENVIRONMENTS = tuple(Environment)
LOG_FORMATS = ("json", "text")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class ConfigError(ValueError):
    """A setting is missing or malformed; the process must not start."""


@dataclass(frozen=True)
class RateLimit:
    """`count` requests per `period_s` seconds, parsed from text such as `100/minute`."""

    count: int
    period_s: int

    def __str__(self) -> str:
        return f"{self.count} per {self.period_s}s"


@dataclass(frozen=True)
class Secret:
    """A value that never shows in `repr`, logs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"


@dataclass(frozen=True)
class Config:
    """Effective settings of one process. Build with `Config.from_env()`."""

    database_url: str
    database_listen_url: str
    database_replica_urls: tuple[str, ...]
    redis_url: str
    jwt_secret: Secret
    # `host:port` seeds of a Redis Cluster; when set, every process uses the cluster, not REDIS_URL.
    redis_cluster_nodes: tuple[str, ...] = ()
    jwt_jwks_url: str = ""  # an identity provider's JWKS (RS256/ES256 by kid); "" means HS256 only
    jwt_issuer: str = ""  # checked when set
    jwt_audience: str = ""  # checked when set
    ws_ticket_ttl_s: float = 30.0  # a connect ticket's life (contract section 6)
    env: Environment = Environment.DEV
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8001
    gateway_id: str = ""
    # SO_REUSEPORT on the listening socket: several gateway processes (each its own GATEWAY_ID) share one port.
    gateway_reuse_port: bool = False
    public_gateway_url: str = ""  # what browsers connect to; "" means ws://GATEWAY_HOST:GATEWAY_PORT/ws
    allowed_origins: tuple[str, ...] = ("*",)
    sentry_dsn: Secret | None = None
    sentry_traces_sample_rate: float = 0.1
    log_level: str = "INFO"
    log_format: str = "text"
    ws_ping_interval_s: float = 30.0
    ws_ping_timeout_s: float = 10.0
    ws_close_timeout_s: float = 5.0  # after a server close frame, drop the TCP connection this much later
    ws_max_subscriptions: int = 50
    ws_max_message_bytes: int = 65536
    ws_max_connections_per_user: int = 10
    ws_max_connections: int = 20_000  # admission: one gateway's ceiling (a descriptor each; see docs)
    ws_accept_rate_per_s: float = 1000.0  # admission: new handshakes a second (token bucket, burst the same)
    ws_history_events: int = 2000  # recent stored events a gateway keeps per held channel for replays
    ws_drain_rate_per_s: float = 250.0  # a draining gateway closes at most this many clients a second ...
    ws_drain_max_s: float = 20.0  # ... unless that would take longer than this (with the close timeout, under 30 s)
    ws_compression: bool = True  # accept permessage-deflate when a client offers it (contract 6)
    event_retention_hours: float = 24.0
    rate_limit_ip: RateLimit = RateLimit(100, 60)
    rate_limit_user: RateLimit = RateLimit(1000, 3600)
    trusted_proxies: tuple[str, ...] = ()
    relay_in_gateway: bool = True  # false when relays run alone (`python -m relay`)
    relay_host: str = "127.0.0.1"  # `python -m relay` serves /health and /metrics here
    relay_port: int = 8090
    idempotency_retention_hours: float = 24.0  # the relay leader's housekeeping deletes older keys
    location_retention_days: int = 30  # GPS history: whole day partitions older than this are dropped
    log_sample_info: float = 1.0  # share of routine access lines written (contract section 5 "Logs")
    # A driver is `online` while connected or seen within this window, `stale` after (contract 6).
    driver_stale_seconds: float = 120.0
    map_tile_url: str = ""  # e.g. https://tiles.example/{z}/{x}/{y}.png; "" draws the map with no tiles

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read and validate every setting; raise `ConfigError` naming each bad one."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        database_url = reader.url("DATABASE_URL", schemes=("postgresql", "postgres"), required=True)
        dms_env = Environment(reader.choice("DMS_ENV", ENVIRONMENTS, Environment.DEV))
        secret = reader.text("JWT_SECRET", DEV_JWT_SECRET)
        if dms_env == Environment.PRODUCTION and secret == DEV_JWT_SECRET:
            reader.errors.append("JWT_SECRET: the development default is refused when DMS_ENV=production")
        origins = reader.csv("ALLOWED_ORIGINS")
        if dms_env == Environment.PRODUCTION and (not origins or "*" in origins):
            reader.errors.append("ALLOWED_ORIGINS: production needs an explicit list, not '*'")
        if len(secret) < 16:
            reader.errors.append("JWT_SECRET: must be at least 16 characters")
        dsn = reader.text("SENTRY_DSN", "")
        cluster_nodes = tuple(reader.host_port("REDIS_CLUSTER_NODES", node)
                              for node in reader.csv("REDIS_CLUSTER_NODES"))
        retention = read_retention(reader)
        config = cls(
            database_url=database_url,
            database_listen_url=reader.url(
                "DATABASE_LISTEN_URL", schemes=("postgresql", "postgres"), default=database_url
            ),
            database_replica_urls=tuple(
                reader.url_item("DATABASE_REPLICA_URLS", item, ("postgresql", "postgres"))
                for item in reader.csv("DATABASE_REPLICA_URLS")
            ),
            redis_url=reader.url("REDIS_URL", schemes=("redis", "rediss", "unix"), required=not cluster_nodes),
            redis_cluster_nodes=cluster_nodes,
            jwt_secret=Secret(secret),
            jwt_jwks_url=reader.url("JWT_JWKS_URL", schemes=("http", "https")),
            jwt_issuer=reader.text("JWT_ISSUER", ""),
            jwt_audience=reader.text("JWT_AUDIENCE", ""),
            ws_ticket_ttl_s=reader.number("WS_TICKET_TTL", 30.0, low=0.05, high=300.0),
            env=dms_env,
            api_host=reader.text("API_HOST", "127.0.0.1"),
            api_port=reader.port("API_PORT", 8000),
            gateway_host=reader.text("GATEWAY_HOST", "127.0.0.1"),
            gateway_port=reader.port("GATEWAY_PORT", 8001),
            gateway_id=reader.text("GATEWAY_ID", ""),
            gateway_reuse_port=reader.flag("GATEWAY_REUSE_PORT", False),
            public_gateway_url=reader.url("PUBLIC_GATEWAY_URL", schemes=("ws", "wss")),
            allowed_origins=tuple(reader.csv("ALLOWED_ORIGINS") or ["*"]),
            sentry_dsn=Secret(dsn) if dsn else None,
            sentry_traces_sample_rate=reader.number("SENTRY_TRACES_SAMPLE_RATE", 0.1, low=0.0, high=1.0),
            log_level=reader.choice(
                "LOG_LEVEL", ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"), "INFO",
                upper=True,
            ),
            log_format=reader.choice("LOG_FORMAT", LOG_FORMATS,
                                     "json" if dms_env == Environment.PRODUCTION else "text"),
            ws_ping_interval_s=reader.number("WS_PING_INTERVAL", 30.0, low=0.05),
            ws_ping_timeout_s=reader.number("WS_PING_TIMEOUT", 10.0, low=0.05),
            ws_close_timeout_s=reader.number("WS_CLOSE_TIMEOUT", 5.0, low=0.05),
            ws_max_subscriptions=reader.integer("WS_MAX_SUBSCRIPTIONS", 50, low=1),
            ws_max_message_bytes=reader.integer("WS_MAX_MESSAGE_BYTES", 65536, low=256),
            ws_max_connections_per_user=reader.integer("WS_MAX_CONNECTIONS_PER_USER", 10, low=1),
            ws_max_connections=reader.integer("WS_MAX_CONNECTIONS", 20_000, low=1),
            ws_accept_rate_per_s=reader.number("WS_ACCEPT_RATE", 1000.0, low=1.0),
            ws_history_events=reader.integer("WS_HISTORY_EVENTS", 2000, low=2),
            ws_drain_rate_per_s=reader.number("WS_DRAIN_RATE", 250.0, low=1.0),
            ws_drain_max_s=reader.number("WS_DRAIN_MAX_S", 20.0, low=0.0),
            ws_compression=reader.flag("WS_COMPRESSION", True),
            event_retention_hours=reader.number("EVENT_RETENTION_HOURS", 24.0, low=0.001),
            rate_limit_ip=reader.rate("RATE_LIMIT_IP", "100/minute"),
            rate_limit_user=reader.rate("RATE_LIMIT_USER", "1000/hour"),
            trusted_proxies=tuple(reader.csv("TRUSTED_PROXIES")),
            relay_in_gateway=reader.flag("RELAY_IN_GATEWAY", True),
            relay_host=reader.text("RELAY_HOST", "127.0.0.1"),
            relay_port=reader.port("RELAY_PORT", 8090),
            idempotency_retention_hours=retention.idempotency_hours,
            location_retention_days=retention.location_days,
            log_sample_info=reader.number("LOG_SAMPLE_INFO", 1.0, low=0.0, high=1.0),
            driver_stale_seconds=reader.number("DRIVER_STALE_SECONDS", 120.0, low=0.5),
            map_tile_url=reader.text("MAP_TILE_URL", ""),
        )
        if reader.errors:
            raise ConfigError("invalid configuration: " + "; ".join(reader.errors))
        return config

    @property
    def retention(self) -> Retention:
        """What the relay leader's housekeeping keeps."""
        return Retention(self.idempotency_retention_hours, self.location_retention_days)

    def public_summary(self) -> dict[str, object]:
        """Every setting with secrets masked and passwords removed from URLs, for start-up logs."""
        summary: dict[str, object] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)
            elif isinstance(value, tuple):
                value = [redact_url(v) if isinstance(v, str) and "://" in v else v for v in value]
            elif isinstance(value, Secret | RateLimit):
                value = str(value)
            summary[item.name] = value
        return summary


@dataclass(frozen=True)
class Retention:
    """How long data that only grows is kept (the relay leader's housekeeping applies it)."""

    idempotency_hours: float = 24.0
    # At least 2: GPS points may be recorded up to a day before they arrive.
    location_days: int = 30


def read_retention(reader: _Reader) -> Retention:
    return Retention(reader.number("IDEMPOTENCY_RETENTION_HOURS", 24.0, low=0.001),
                     reader.integer("LOCATION_RETENTION_DAYS", 30, low=2))


def redact_url(url: str) -> str:
    """Drop the password from a connection URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class _Reader:
    """Collects every error instead of stopping at the first, so one start shows them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None else raw

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.lower()
        if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            self.errors.append(f"{name}: {raw!r} is not a boolean (true/false)")
            return default
        return value in ("1", "true", "yes", "on")

    def csv(self, name: str) -> list[str]:
        raw = self._raw(name)
        return [] if raw is None else [item.strip() for item in raw.split(",") if item.strip()]

    def host_port(self, name: str, raw: str) -> str:
        host, _, port = raw.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.errors.append(f"{name}: {raw!r} is not host:port")
        return raw

    def choice(self, name: str, allowed: tuple[str, ...], default: str, *, upper: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            self.errors.append(f"{name}: {raw!r} is not one of {', '.join(allowed)}")
            return default
        return value

    def integer(self, name: str, default: int, *, low: int | None = None) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.errors.append(f"{name}: {raw!r} is not an integer")
            return default
        if low is not None and value < low:
            self.errors.append(f"{name}: {value} is below the minimum {low}")
        return value

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default, low=0)
        if value > 65535:
            self.errors.append(f"{name}: {value} is not a TCP port")
        return value

    def number(self, name: str, default: float, *, low: float | None = None, high: float | None = None) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.errors.append(f"{name}: {raw!r} is not a number")
            return default
        if not math.isfinite(value):
            self.errors.append(f"{name}: {raw!r} is not a finite number")
        elif low is not None and value < low:
            self.errors.append(f"{name}: {value} is below the minimum {low}")
        elif high is not None and value > high:
            self.errors.append(f"{name}: {value} is above the maximum {high}")
        return value

    def rate(self, name: str, default: str) -> RateLimit:
        raw = self._raw(name) or default
        match = _RATE.match(raw)
        if not match or int(match.group(1)) < 1:
            self.errors.append(f"{name}: {raw!r} is not of the form N/second|minute|hour|day")
            return RateLimit(1, 1)
        return RateLimit(int(match.group(1)), _PERIOD_SECONDS[match.group(2)])

    def url(self, name: str, *, schemes: tuple[str, ...], default: str = "", required: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            if required:
                self.errors.append(f"{name}: required")
            return default
        return self.url_item(name, raw, schemes)

    def url_item(self, name: str, raw: str, schemes: tuple[str, ...]) -> str:
        scheme = urlsplit(raw).scheme
        if scheme not in schemes:
            self.errors.append(f"{name}: scheme {scheme or '(none)'!r} is not one of {', '.join(schemes)}")
        return raw
