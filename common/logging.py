"""loguru set up once per process: JSON lines in production, text otherwise, stdlib routed in."""

from __future__ import annotations

import logging
import random
import re
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from types import FrameType
from typing import Any

from loguru import logger

# Tokens travel in `?token=` on WebSocket URLs; no log line may carry one.
_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_BEARER_IN_TEXT = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


SLOW_REQUEST_MS = 200.0  # contract section 5 "Logs": slower requests are always written
_min_level_no = 0  # what setup_logging configured; 0 (everything) until it runs


def enabled(level: str) -> bool:
    """Whether a line at `level` would be written: a hot path skips building lines nobody keeps."""
    return logger.level(level).no >= _min_level_no


_LOG_IDS: ContextVar[dict[str, str] | None] = ContextVar("dms_log_ids", default=None)


class _LogIds:
    __slots__ = ("ids", "token")

    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids
        self.token: Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        outer = _LOG_IDS.get()
        self.token = _LOG_IDS.set({**outer, **self.ids} if outer else self.ids)

    def __exit__(self, *_exc: object) -> None:
        if self.token is not None:
            _LOG_IDS.reset(self.token)


def log_context(**ids: str) -> AbstractContextManager[None]:
    """Every loguru line written inside the block carries `ids` (`request_id=`, `connection_id=`).

    The ids live in a contextvar, and every greenlet has its own context (greenlet >= 0.4.17), so
    two requests served at once by one gevent process never see each other's id; the patcher that
    setup_logging installs copies them into each record, so lines of deeper modules and of stdlib
    loggers routed in here carry them too. (loguru's own `contextualize` does the same at several
    times the cost, which showed on every request.)
    """
    return _LogIds(ids)


def keep_access_line(*, status: int, duration_ms: float, sample: float,
                     draw: Callable[[], float] = random.random) -> bool:
    """Whether to write a request's access line: `sample` of the fast successful ones, all others."""
    if sample >= 1.0 or status >= 400 or duration_ms > SLOW_REQUEST_MS:
        return True
    return draw() < sample


def scrub(text: str) -> str:
    """Mask bearer tokens and `token=` query values in free text."""
    return _BEARER_IN_TEXT.sub(r"\1***", _TOKEN_IN_TEXT.sub(r"\1***", text))


class _InterceptHandler(logging.Handler):
    """Forwards stdlib records (werkzeug, gevent, psycopg) into loguru with the right depth."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame: FrameType | None = logging.currentframe()
        depth = 2
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, scrub(record.getMessage()))


def _patch_record(record: Any) -> None:
    ids = _LOG_IDS.get()
    if ids:
        extra = record["extra"]
        for name, value in ids.items():
            extra.setdefault(name, value)  # a value bound on the line itself wins
    record["message"] = scrub(record["message"])


def setup_logging(*, level: str = "INFO", fmt: str = "text", service: str = "dms") -> None:
    """Replace every sink with one on stderr; safe to call again (tests, reloads)."""
    global _min_level_no
    _min_level_no = logger.level(level).no
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_patch_record)
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            backtrace=False,
            diagnose=False,
            format=(
                "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                "<cyan>{extra[service]}</cyan> {message} <dim>{extra}</dim>"
            ),
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    for noisy in ("werkzeug", "geventwebsocket", "psycopg.pool", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
