"""One client process of the storm benchmark: thousands of dms_client subscribers under gevent.

Started as `python -m bench.stormclients CONFIG_JSON`. Every subscriber is a `DmsClient` on one
channel, run in a greenlet of its own (`run()`, no thread object), so the reconnect policy measured
is the shipped client's (contract section 6): after a drop a random wait in [0, min(cap, base *
2^attempt)] (full jitter), at least `Retry-After` when a handshake was refused with one, then a
reconnect and a resubscribe with `since` = the last id handled; a subscribe answered with an error,
or whose replay fails after `subscribed`, is sent again after the same kind of wait. The process's
clients share one `SharedDecoder` (each event parsed once, not once per subscriber) and one gate
(at most `concurrency` handshakes in flight), and connect with the token in the URL, no ticket,
offering no compression (server frames are plain text, as the gateway sends most clients).
What is measured comes from the client's listeners: "state" (drops, refusals by the client's
`reason`), "subscribed" (joins, time until a dropped client is back), "error" (refused subscribes
and replays) and "frame" (every event id as it arrives, before the client drops duplicates, so a
duplicate still counts). Once a second it prints a status line (JSON) on stdout; on stdin,
`finish {"channel": [ids...]}` makes it account for every event, print the result and exit.
In `handshake` mode a client subscribes to nothing: it only opens its connection (101 and welcome)
and holds it.
"""

from gevent import monkey

monkey.patch_all()  # first: the sockets below must be gevent's

import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

from bench.common import raise_nofile  # noqa: E402
from common.auth import mint_token  # noqa: E402
from dms_client import DmsClient, Frame, SharedDecoder  # noqa: E402

HANDSHAKE_TIMEOUT_S = 20.0  # TCP connect, upgrade and welcome, each


class Shared:
    """Per-process counters, and the decoder every subscriber shares (they all get the same bytes)."""

    def __init__(self) -> None:
        self.running = True
        self.subscribed = 0  # clients subscribed right now
        self.connected = 0  # clients with an open (welcomed) WebSocket right now
        self.joined = 0  # clients subscribed at least once
        self.drops = 0
        self.refusals: dict[str, int] = {}
        self.recoveries: list[float] = []  # seconds from a drop to subscribed again
        self.handshakes = 0  # connections welcomed (handshake mode: the measure)
        self.frames = 0
        self.decode = SharedDecoder()

    def refused(self, kind: str) -> None:
        self.refusals[kind] = self.refusals.get(kind, 0) + 1


class Subscriber:
    """One DmsClient on one channel and what the report counts about it."""

    def __init__(self, shared: Shared, config: dict[str, Any], index: int, gate: BoundedSemaphore) -> None:
        self.shared = shared
        channels = config["channels"]
        self.channel = channels[(config["offset"] + index) % len(channels)]
        self.ids = array("q")  # every event id as it arrived, duplicates included
        self.first_id: int | None = None  # last_event_id at the first subscribe: later ids are promised
        self.dropped_at: float | None = None
        self.joined = False
        self.open = False
        self.holding = False  # subscribed right now
        self.resubscribing = False  # its replay failed: not subscribed until the next `subscribed`
        self.holes: dict[str, Any] | None = None
        token = mint_token(config["secret"], role="admin", sub=None, ttl_s=3 * 3600)
        # No permessage-deflate offered: the storm measures plain frames, as it always has.
        self.client = DmsClient(f"ws://{config['host']}:{config['port']}/ws", token=token, tickets=False,
                                compression=False, base_s=config["base_s"], cap_s=config["cap_s"],
                                timeout_s=HANDSHAKE_TIMEOUT_S, decode=shared.decode, dial_gate=gate)
        self.client.on("state", self._on_state).on("error", self._on_error).on("frame", self._on_frame)
        self.client.on("subscribed", self._on_subscribed).on("welcome", self._on_welcome)
        if config["mode"] != "handshake":
            self.client.subscribe(self.channel)

    @property
    def last_id(self) -> int | None:
        return self.client.last_id(self.channel)

    def _on_welcome(self, _: Frame) -> None:
        self.shared.handshakes += 1

    def _on_state(self, state: str, detail: dict[str, Any]) -> None:
        shared = self.shared
        if state == "connected":
            self.open = True
            shared.connected += 1
            return
        if state != "reconnecting" or not detail:  # only the moment an attempt or a connection ended
            return
        if self.open:
            self.open = False
            shared.connected -= 1
        if self.holding:
            self.holding = False
            shared.subscribed -= 1
        if detail["dropped"]:
            # A welcomed connection ended: a drop the first time since it was last subscribed.
            if self.joined and self.dropped_at is None:
                self.dropped_at = time.monotonic()
                shared.drops += 1
        else:
            reason = detail["reason"]
            shared.refused(reason + ("_retry_after" if reason.startswith("http_") and detail["retry_after_s"]
                                     else ""))

    def _on_subscribed(self, frame: Frame, _had_since: bool) -> None:
        shared = self.shared
        if not self.joined:
            self.joined = True
            shared.joined += 1
            self.first_id = frame.get("last_event_id") or 0
        elif self.dropped_at is not None:
            shared.recoveries.append(time.monotonic() - self.dropped_at)
            self.dropped_at = None
        self.resubscribing = False
        if not self.holding:
            self.holding = True
            shared.subscribed += 1

    def _on_error(self, frame: Frame) -> None:
        if frame.get("channel") != self.channel:
            return  # not about a subscribe: handshake failures are counted from "state"
        if self.holding:
            # After `subscribed` the replay failed and the gateway dropped the subscription; the client
            # subscribes again with `since` = the last id handled.
            self.shared.refused(f"replay_{frame.get('code')}")
            self.holding = False
            self.shared.subscribed -= 1
            self.resubscribing = True
        else:
            self.shared.refused(f"subscribe_{frame.get('code')}")

    def _on_frame(self, frame: Frame) -> None:
        if frame.get("type") == "event":
            self.shared.frames += 1
            event_id = frame.get("id")
            if event_id is not None:
                self.ids.append(event_id)

    def account(self, expected: list[int]) -> dict[str, int]:
        got = list(self.ids)
        seen = set(got)
        promised = [i for i in expected if i > (self.first_id or 0)]
        missing = [i for i in promised if i not in seen]
        if missing:
            # Where the holes are (in the middle of what it got, or only after its last id) says
            # whether events were lost or were still on their way when the window closed.
            last_id = self.last_id
            self.holes = {"first_missing": missing[0], "last_missing": missing[-1], "count": len(missing),
                          "last_received": last_id, "promised_last": promised[-1],
                          "missing_before_last_received": sum(1 for i in missing if last_id and i < last_id)}
        return {"missing": len(missing), "duplicated": len(got) - len(seen),
                "out_of_order": sum(1 for a, b in itertools.pairwise(got) if b <= a),
                "received": len(got)}


def main() -> int:
    config = json.loads(sys.argv[1])
    if raise_nofile(config["count"] + 256) < config["count"] + 64:
        print(f"open-files limit too low for {config['count']} clients", file=sys.stderr, flush=True)
    shared = Shared()
    gate = BoundedSemaphore(config["concurrency"])
    subscribers = [Subscriber(shared, config, n, gate) for n in range(config["count"])]
    # Thousands of clients are long-lived objects: out of the collector's sight, a full collection
    # does not walk them all again and again while the storm allocates.
    gc.freeze()
    greenlets = [gevent.spawn(subscriber.client.run) for subscriber in subscribers]
    out = sys.stdout

    def status() -> None:
        while shared.running:
            out.write(json.dumps({"status": {
                "at": time.time(), "connected": shared.connected, "subscribed": shared.subscribed,
                "joined": shared.joined, "drops": shared.drops, "back": len(shared.recoveries),
                "handshakes": shared.handshakes, "frames": shared.frames, "refusals": shared.refusals}}) + "\n")
            out.flush()
            gevent.sleep(1.0)

    reporter = gevent.spawn(status)
    stdin = FileObjectPosix(sys.stdin.fileno(), "r", close=False)
    for line in stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "finish":
            expected: dict[str, list[int]] = json.loads(arg)
            totals = {"missing": 0, "duplicated": 0, "out_of_order": 0, "received": 0, "subscribers_missing": 0,
                      "subscribers_duplicated": 0, "never_joined": 0, "never_back": 0,
                      "never_joined_missing": 0, "never_back_missing": 0}
            for subscriber in subscribers:
                if not subscriber.joined:
                    totals["never_joined"] += 1
                    totals["never_joined_missing"] += len(expected.get(subscriber.channel, []))
                    continue
                result = subscriber.account(expected.get(subscriber.channel, []))
                if not subscriber.holding:
                    # Not subscribed at the end (dropped and not back, or its replay failed): what it
                    # missed is counted apart from losses.
                    totals["never_back"] += 1
                    totals["never_back_missing"] += result.pop("missing")
                    result["missing"] = 0
                for key, value in result.items():
                    totals[key] += value
                totals["subscribers_missing"] += result["missing"] > 0
                totals["subscribers_duplicated"] += result["duplicated"] > 0
            holes = [s.holes for s in subscribers if s.holes and s.holding][:5]
            out.write(json.dumps({"accounting": totals, "recoveries": [round(r, 3) for r in shared.recoveries],
                                  "holes": holes,
                                  "refusals": shared.refusals}) + "\n")
            out.flush()
            break
        if command == "stop":
            break
    shared.running = False
    reporter.kill()
    for subscriber in subscribers:
        subscriber.client.close()
    gevent.killall(greenlets, timeout=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
