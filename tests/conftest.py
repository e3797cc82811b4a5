"""Session-wide test setup: the fixture plugins, and skips for programs pip cannot install.

Fixtures live in plugin modules (`tests/fix_*.py`), so test modules import names from those,
never from a conftest: `fix_infra` (PostgreSQL and Redis), `fix_world` (a restaurant and its
users), `fix_servers` (the API app and gateway processes).
"""

from __future__ import annotations

import os

import pytest

from devstack import embedded

pytest_plugins = ("tests.fix_infra", "tests.fix_world", "tests.fix_servers")

REQUIRE_ALL = os.environ.get("DMS_REQUIRE_ALL") == "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `needs_system("nginx")` skip without it, or fail when DMS_REQUIRE_ALL=1."""
    for marker in item.iter_markers("needs_system"):
        program = marker.args[0]
        if embedded.system_program(program) is None:
            if REQUIRE_ALL:
                pytest.fail(f"{program} is required (DMS_REQUIRE_ALL=1) but not installed", pytrace=False)
            pytest.skip(f"skipped: needs {program}, which pip cannot install")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Servers demoted from root keep their files in stand-ins outside the session's temporary root.
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        embedded.remove_stand_ins(factory.getbasetemp())
    if session.testscollected == 0:
        session.exitstatus = 5
