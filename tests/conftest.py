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


# Suites that start servers of their own (not through the `infra` fixture), or a browser.
SERVER_SUITES = ("browser", "load", "topology", "faults", "hostile")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`quick` (`make test-quick`): every test that needs no embedded server, found from its fixtures,
    so a new unit test joins the quick set without a marker and a test that takes `infra` leaves it."""
    for item in items:
        parts = item.nodeid.split("/")
        servers = ("infra" in getattr(item, "fixturenames", ()) or any(item.iter_markers("needs_system"))
                   or any(item.iter_markers("servers")))
        if not servers and not (len(parts) > 2 and parts[1] in SERVER_SUITES):
            item.add_marker(pytest.mark.quick)


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
