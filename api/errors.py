"""One place that turns exceptions into the contract's JSON errors; never a stack trace."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
import redis
from flask import Flask, jsonify
from loguru import logger
from werkzeug.exceptions import HTTPException

from common.errors import DmsError, RateLimited

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "rate_limited", 503: "unavailable",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DmsError)
    def _dms(exc: DmsError) -> Any:
        response = jsonify(error_body(exc.code, exc.message, exc.details))
        response.status_code = exc.status
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "internal" if status >= 500 else "bad_request")
        response = jsonify(error_body(code, exc.description or exc.name))
        response.status_code = status
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(psycopg_pool.PoolTimeout)
    @app.errorhandler(psycopg.OperationalError)
    def _database_down(exc: Exception) -> Any:
        logger.warning("database unavailable: {}", type(exc).__name__)
        response = jsonify(error_body("unavailable", "the database is unavailable, retry shortly"))
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(psycopg.DataError)
    def _unstorable(exc: Exception) -> Any:
        # A value that passed validation but PostgreSQL cannot take (NUL bytes in a query
        # parameter, an out-of-range number): the client's input, not our bug; no SQL text leaks.
        logger.warning("database refused a value: {}", type(exc).__name__)
        response = jsonify(error_body("bad_request", "a value in the request cannot be stored or searched"))
        response.status_code = 400
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: Exception) -> Any:
        logger.warning("redis unavailable: {}", type(exc).__name__)
        response = jsonify(error_body("unavailable", "the cache is unavailable, retry shortly"))
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        logger.exception("unhandled error")
        response = jsonify(error_body("internal", "internal error"))
        response.status_code = 500
        return response
