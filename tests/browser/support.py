"""Helpers of the browser tests: the stack a page talks to, a watched page, where artifacts go."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import ROOT, Process, http_json, seconds

ARTIFACTS = Path(os.environ.get("DMS_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


@dataclass
class Stack:
    api: str  # http://127.0.0.1:PORT, also the pages' origin
    gateway_url: str
    gateway_id: str
    logs: tuple[Path, ...]


@dataclass
class Watched:
    """A page with everything it complained about: console errors, uncaught errors, CSP violations."""

    page: Any
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[Any]:
        return self.page.evaluate("window.__cspViolations || []")  # type: ignore[no-any-return]

    def assert_clean(self, *, failed_loads_allowed: tuple[str, ...] = ()) -> None:
        """No CSP violation, no uncaught error, no console error or warning except the browser's own
        "Failed to load resource" line for an error answer from a URL containing one of `failed_loads_allowed`."""
        violations = self.csp_violations()
        assert not violations, f"CSP violations: {violations}"
        assert not self.errors, f"page errors: {self.errors}"
        bad = [m for m in self.console if m.startswith(("error", "warning"))
               and not (m.startswith("error: Failed to load resource") and any(u in m for u in failed_loads_allowed))]
        assert not bad, f"console: {bad}"


# Runs before the page's own scripts (outside its CSP), so every violation is recorded.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample});
});
"""


def ok(method: str, url: str, body: Any = None, *, token: str, expect: int = 200) -> Any:
    """A REST call that must answer `expect`; its body."""
    code, _, reply = http_json(method, url, body, token=token)
    assert code == expect, (url, code, reply)
    return reply


def open_admin(open_page: Any, stack: Stack, admin_token: str) -> Watched:
    """/admin, once its live connection is up."""
    watched: Watched = open_page(f"{stack.api}/admin#token={admin_token}")
    watched.page.wait_for_selector('#conn[data-state="connected"]', timeout=seconds(10) * 1000)
    return watched


def page_stack(infra: Infra, logs: Path, *, name: str = "pages", **settings: str) -> Iterator[Stack]:
    """An API serving the pages and a gateway that admits their origin, both with `settings` too.

    The session `gateway` only admits its own origin, so the pages get a gateway that admits theirs:
    the browser sends the API's origin with the WebSocket handshake, as it would in production."""
    api_port, gateway_port = embedded.free_port(), embedded.free_port()
    api = f"http://127.0.0.1:{api_port}"
    gateway_id = f"gw-{name}-{gateway_port}"
    gateway = Process("gateway", infra.env(GATEWAY_PORT=str(gateway_port), GATEWAY_ID=gateway_id,
                                           ALLOWED_ORIGINS=api, **settings), logs / "gateway.log")
    started = [gateway]
    try:
        gateway.wait_http_ok(f"http://127.0.0.1:{gateway_port}/health")
        gateway_url = f"ws://127.0.0.1:{gateway_port}/ws"
        server = Process("api", infra.env(API_PORT=str(api_port), PUBLIC_GATEWAY_URL=gateway_url,
                                          RATE_LIMIT_IP="100000/minute", RATE_LIMIT_USER="100000/hour",
                                          **settings), logs / "api.log")
        started.append(server)
        server.wait_http_ok(f"{api}/ready")
        yield Stack(api=api, gateway_url=gateway_url, gateway_id=gateway_id,
                    logs=(logs / "gateway.log", logs / "api.log"))
    finally:
        for process in reversed(started):
            process.stop()
