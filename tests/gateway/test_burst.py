"""A burst of subscribes on one gateway (contract section 6): 10,000 clients, none refused.

Every subscribe used to take pool connections (the rights check, the purge horizon) and, in a
burst, timed out waiting for one: `unavailable` for about one client in nine. A restaurant on its
own board needs no database at all, so the burst must pass whatever the pool size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from tests.fix_infra import JWT_SECRET
from tests.helpers import ROOT, seconds

CLIENTS = 10_000


def test_a_burst_of_ten_thousand_subscribes_on_one_gateway_refuses_none(start_gateway: Any) -> None:
    _, gw = start_gateway(name="burst", WS_ACCEPT_RATE="4000",
                          WS_MAX_CONNECTIONS_PER_USER="10",
                          # The clients read nothing until every one is in; no ping may end them meanwhile.
                          WS_PING_INTERVAL="600", LOG_LEVEL="WARNING")
    config = {"url": gw["url"], "secret": JWT_SECRET, "clients": CLIENTS,
              "restaurants": [str(uuid.uuid4()) for _ in range(10)],
              "connect_timeout_s": seconds(120), "subscribe_timeout_s": seconds(60)}
    with subprocess.Popen([sys.executable, "-m", "tests.gateway.burst_clients", json.dumps(config)],
                          cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as clients:
        try:
            assert clients.stdout is not None and clients.stdin is not None
            connected = clients.stdout.readline().split()
            assert connected[:4] == ["connected", str(CLIENTS), "failed", "0"], connected
            clients.stdin.write("go\n")
            clients.stdin.flush()
            answers = json.loads(clients.stdout.readline())
            assert answers == {"subscribed": CLIENTS, "unanswered": 0}, answers
        finally:
            clients.kill()
