"""`python -m bench.peer [--quick]`: the fan-out scenario against our gateway, then against Flask-SocketIO."""

from __future__ import annotations

import argparse
import os
from typing import Any

from bench.common import Stack, install_cleanup, log, machine, python_module, stop, wait_http, write_report
from bench.fanout import charts, profile_arguments, profile_from, run_dms, run_scenario
from common.embedded import free_port


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def compare(dms: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Ratios stated so that > 1 means ours is better."""
    return {
        "sustained_frames_per_s_at_p99_under_100ms": {
            "dms": dms["sustained_frames_per_s_at_p99_under_100ms"],
            "flask_socketio": peer["sustained_frames_per_s_at_p99_under_100ms"],
            "dms_over_peer": _ratio(dms["sustained_frames_per_s_at_p99_under_100ms"],
                                    peer["sustained_frames_per_s_at_p99_under_100ms"]),
        },
        "p99_ms_at_fixed_rate": {
            "events_per_s": dms["fixed_rate_events_per_s"], "dms": dms["p99_ms_at_fixed_rate"],
            "flask_socketio": peer["p99_ms_at_fixed_rate"],
            "peer_over_dms": _ratio(peer["p99_ms_at_fixed_rate"], dms["p99_ms_at_fixed_rate"]),
        },
        "rss_kib_per_connection": {
            "dms": dms["rss_kib_per_connection"], "flask_socketio": peer["rss_kib_per_connection"],
            "peer_over_dms": _ratio(peer["rss_kib_per_connection"], dms["rss_kib_per_connection"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    profile_arguments(parser, quick_help="500 clients, three short steps per server")
    args = parser.parse_args(argv)
    install_cleanup()
    profile = profile_from(args)
    info = machine()
    log(f"machine: {info}")
    stack = Stack.start(seed=False)
    try:
        dms = run_dms(stack, profile)
        port = free_port()
        env = stack.env(PEER_PORT=str(port))
        peer_server = python_module("bench.peer.socketio_server", env=env, log=stack.tmp / "peer.log")
        wait_http(f"http://127.0.0.1:{port}/health", proc=peer_server)
        feeder = python_module("bench.peer.feeder", env=env, log=stack.tmp / "feeder.log")
        peer = run_scenario(name="flask-socketio", kind="socketio", url=f"ws://127.0.0.1:{port}/socket.io/",
                            server_pids={"server": peer_server.pid, "feeder": feeder.pid}, stack=stack,
                            profile=profile)
        stop(feeder)
        stop(peer_server)
    finally:
        stack.stop()
    body = {"benchmark": "peer", "profile": profile.__dict__, "machine": info,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "comparison": compare(dms, peer),
            "results": [dms, peer]}
    log(f"comparison: {body['comparison']}")
    for path in write_report("peer", body, charts([dms, peer])):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
