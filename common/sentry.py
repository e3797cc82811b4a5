"""Sentry, initialised only when a DSN is set; request bodies and tokens are never sent (see common.scrub)."""

from __future__ import annotations

from common.config import Config
from common.scrub import before_breadcrumb, before_send


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
        # One scrubber for errors, transactions (their spans carry URLs and query strings) and
        # breadcrumbs: a handshake's `?token=` otherwise reaches Sentry inside a transaction.
        before_send=before_send,
        before_send_transaction=before_send,
        before_breadcrumb=before_breadcrumb,
        integrations=[FlaskIntegration(), LoguruIntegration()],
    )
    return True
