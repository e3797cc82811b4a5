"""Routes that exist only when DMS_ENV=test, for tests that need the server to fail on purpose."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

bp = Blueprint("testing", __name__, url_prefix="/api/_test")


@bp.get("/boom")
def boom() -> Any:
    """Test-only: raises so error reporting (Sentry) can be checked end to end; never registered otherwise."""
    raise RuntimeError("deliberate failure from /api/_test/boom")
