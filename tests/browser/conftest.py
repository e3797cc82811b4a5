"""Browser fixtures: an API process serving the pages, a gateway that admits the page's origin, Chromium."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack import embedded
from tests.conftest import Infra
from tests.helpers import ROOT, Process

ARTIFACTS = Path(os.environ.get("DMS_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


@dataclass
class Stack:
    api: str  # http://127.0.0.1:PORT, also the pages' origin
    gateway_url: str
    gateway_id: str
    logs: tuple[Path, ...]


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session `gateway` only admits its own origin, so the pages get a gateway that admits theirs:
    the browser sends the API's origin with the WebSocket handshake, as it would in production."""
    logs = tmp_path_factory.mktemp("browser-stack")
    api_port, gateway_port = embedded.free_port(), embedded.free_port()
    api = f"http://127.0.0.1:{api_port}"
    gateway_id = f"gw-pages-{gateway_port}"
    gateway = Process("gateway", infra.env(GATEWAY_PORT=str(gateway_port), GATEWAY_ID=gateway_id,
                                           ALLOWED_ORIGINS=api), logs / "gateway.log")
    started = [gateway]
    try:
        gateway.wait_http_ok(f"http://127.0.0.1:{gateway_port}/health")
        gateway_url = f"ws://127.0.0.1:{gateway_port}/ws"
        server = Process("api", infra.env(API_PORT=str(api_port), PUBLIC_GATEWAY_URL=gateway_url,
                                          RATE_LIMIT_IP="100000/minute", RATE_LIMIT_USER="100000/hour"),
                         logs / "api.log")
        started.append(server)
        server.wait_http_ok(f"{api}/ready")
        yield Stack(api=api, gateway_url=gateway_url, gateway_id=gateway_id,
                    logs=(logs / "gateway.log", logs / "api.log"))
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


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


@pytest.fixture
def open_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Open pages in a fresh browser context; a screenshot of each is saved when the test ends."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened: list[Watched] = []

    def open_(url: str) -> Watched:
        page = context.new_page()
        watched = Watched(page)
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", lambda m: watched.console.append(f"{m.type}: {m.text} @ {m.location.get('url', '')}"))
        page.on("pageerror", lambda e: watched.errors.append(str(e)))
        page.goto(url)
        opened.append(watched)
        return watched

    try:
        yield open_
    finally:
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            folder = ARTIFACTS
        except OSError:
            folder = Path(tempfile.mkdtemp(prefix="dms-artifacts-"))
        for index, watched in enumerate(opened):
            if watched.page.is_closed():
                continue
            path = folder / f"{request.node.name}-{index}.png"
            watched.page.screenshot(path=str(path), full_page=True)
            print(f"screenshot: {path}")
        context.close()
