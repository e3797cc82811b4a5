"""Start-up shared by the API, the gateway and the relay: config, logging, Sentry, in that order."""

from __future__ import annotations

import sys

from common.config import Config, ConfigError
from common.logging import setup_logging
from common.sentry import init_sentry

EXIT_BAD_CONFIG = 2


def boot(service: str) -> Config:
    """Read the environment and set up logging and Sentry for `service`.

    A bad environment prints every bad value and exits with status 2 before anything starts:
    logging is not set up yet, so the message goes to stderr as plain text.
    """
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from exc
    setup_logging(level=config.log_level, fmt=config.log_format, service=service)
    init_sentry(config, service=service)
    return config
