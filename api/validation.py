"""Strict JSON body validation with field-level details (unknown fields are errors too)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import request

from common.errors import BadRequest, NotFound, UnsupportedMediaType, ValidationFailed

_MISSING = object()


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or 415 / 400 saying what is wrong."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError as exc:
        raise BadRequest("the body nests too deeply") from exc
    if body is None:
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object", details={"body": "expected an object"})
    return body


@dataclass
class Field:
    """One expected field: its kind and limits. `kind` is one of the `_check_*` names below."""

    kind: str
    required: bool = True
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None


class Validator:
    """Checks a body against a field table and collects every problem before failing."""

    def __init__(self, fields: dict[str, Field]) -> None:
        self.fields = fields

    def __call__(self, body: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
        errors: dict[str, str] = {}
        clean: dict[str, Any] = {}
        for name in body:
            if name not in self.fields:
                errors[prefix + name] = "unknown field"
        for name, spec in self.fields.items():
            value = body.get(name, _MISSING)
            if value is _MISSING:
                if spec.required:
                    errors[prefix + name] = "required"
                continue
            if value is None:
                if spec.nullable:
                    clean[name] = None
                else:
                    errors[prefix + name] = "must not be null"
                continue
            try:
                clean[name] = _CHECKS[spec.kind](value, spec)
            except ValueError as exc:
                errors[prefix + name] = str(exc)
        if errors:
            raise ValidationFailed("the body has invalid fields", details=errors)
        return clean


def _check_string(value: Any, spec: Field) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    value = value.strip()
    if spec.min is not None and len(value) < spec.min:
        raise ValueError(f"at least {int(spec.min)} characters")
    if spec.max is not None and len(value) > spec.max:
        raise ValueError(f"at most {int(spec.max)} characters")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"one of: {', '.join(spec.choices)}")
    return value


def _check_integer(value: Any, spec: Field) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    _range(value, spec)
    return value


def _check_number(value: Any, spec: Field) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    _range(value, spec)
    return float(value)


def _check_money(value: Any, spec: Field) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a decimal string such as \"12.50\"")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError("expected a decimal string such as \"12.50\"") from exc
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise ValueError("at most two decimal places")
    _range(float(amount), spec)
    return amount


def _check_boolean(value: Any, spec: Field) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _check_uuid(value: Any, spec: Field) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValueError("expected a UUID string") from exc


def _check_timestamp(value: Any, spec: Field) -> datetime:
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("expected an ISO-8601 timestamp") from exc
    if moment.tzinfo is None:
        raise ValueError("the timestamp needs a time zone")
    return moment


def _check_list(value: Any, spec: Field) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    if spec.min is not None and len(value) < spec.min:
        raise ValueError(f"at least {int(spec.min)} entries")
    if spec.max is not None and len(value) > spec.max:
        raise ValueError(f"at most {int(spec.max)} entries")
    return value


def _range(value: float, spec: Field) -> None:
    if spec.min is not None and value < spec.min:
        raise ValueError(f"must be at least {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"must be at most {spec.max:g}")


_CHECKS = {
    "string": _check_string, "integer": _check_integer, "number": _check_number, "money": _check_money,
    "boolean": _check_boolean, "uuid": _check_uuid, "timestamp": _check_timestamp, "list": _check_list,
}


def uuid_arg(value: str, *, what: str) -> str:
    """A UUID from a path or query; anything else is a 404 for paths (no such row)."""
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise NotFound(f"no such {what}") from exc
