"""Sentry, initialised only when a DSN is set; request bodies and tokens are never sent."""

from __future__ import annotations

from typing import Any

from common.config import Config
from common.logging import scrub


def _scrub_event(event: Any, _hint: Any) -> Any:
    request = event.get("request") or {}
    headers = request.get("headers") or {}
    for name in list(headers):
        if name.lower() in ("authorization", "cookie"):
            headers[name] = "[Filtered]"
    if isinstance(request.get("query_string"), str):
        request["query_string"] = scrub(request["query_string"])
    if isinstance(request.get("url"), str):
        request["url"] = scrub(request["url"])
    return event


def init_sentry(config: Config, *, service: str) -> bool:
    """Start the SDK when `SENTRY_DSN` is set; return whether it did."""
    if config.sentry_dsn is None:
        return False
    # Imported only when enabled: the SDK and its Flask integration cost start-up time and memory
    # in every process (the relay has no Flask app), and most deployments run without a DSN.
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.loguru import LoguruIntegration

    sentry_sdk.init(
        dsn=config.sentry_dsn.value,
        environment=config.env,
        server_name=service,
        traces_sample_rate=config.sentry_traces_sample_rate,
        send_default_pii=False,
        # Frame locals hold requests, tokens and personal data; stack traces alone are enough.
        include_local_variables=False,
        before_send=_scrub_event,
        integrations=[FlaskIntegration(), LoguruIntegration()],
    )
    return True
