"""Helpers of the browser tests: the stack a page talks to, a watched page, where artifacts go."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import ROOT

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
