"""The relay's former home, kept as an alias: `python -m gateway.relay` still runs `python -m relay`."""

from relay.loop import CURSOR_NAME, LEADER_LOCK_KEY, PURGED_NAME, Gap, Relay, settle
from relay.service import main

__all__ = ["CURSOR_NAME", "LEADER_LOCK_KEY", "PURGED_NAME", "Gap", "Relay", "main", "settle"]

if __name__ == "__main__":
    raise SystemExit(main())
