"""Browser fixtures: an API process serving the pages, a gateway that admits the page's origin, Chromium."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import ARTIFACTS, RECORD_VIOLATIONS, Stack, Watched, page_stack
from tests.fix_infra import Infra


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from page_stack(infra, tmp_path_factory.mktemp("browser-stack"))


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
