"""One place that turns exceptions into the contract's JSON errors; never a stack trace."""

from __future__ import annotations

import psycopg
import psycopg_pool
import redis
from flask import Flask, Response, jsonify
from loguru import logger
from werkzeug.exceptions import HTTPException

from common.errors import BadRequest, DmsError, Unavailable

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "rate_limited", 503: "unavailable",
}


def error_response(exc: DmsError) -> Response:
    """`exc` as the contract's JSON error, with the headers its status calls for."""
    response = jsonify(exc.body())
    response.status_code = exc.status
    response.headers.update(exc.headers())
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(DmsError)
    def _dms(exc: DmsError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        error = DmsError(exc.description or exc.name)
        error.status = exc.code or 500
        error.code = _HTTP_CODES.get(error.status, "internal" if error.status >= 500 else "bad_request")
        response = error_response(error)
        if error.status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(psycopg_pool.PoolTimeout)
    @app.errorhandler(psycopg.OperationalError)
    def _database_down(exc: Exception) -> Response:
        logger.warning("database unavailable: {}", type(exc).__name__)
        return error_response(Unavailable("the database is unavailable, retry shortly"))

    @app.errorhandler(psycopg.DataError)
    def _unstorable(exc: Exception) -> Response:
        # A value that passed validation but PostgreSQL cannot take (NUL bytes in a query
        # parameter, an out-of-range number): the client's input, not our bug; no SQL text leaks.
        logger.warning("database refused a value: {}", type(exc).__name__)
        return error_response(BadRequest("a value in the request cannot be stored or searched"))

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: Exception) -> Response:
        logger.warning("redis unavailable: {}", type(exc).__name__)
        return error_response(Unavailable("the cache is unavailable, retry shortly"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(DmsError("internal error"))
