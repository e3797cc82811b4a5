"""`dms`: up, restart, status, top, migrate, seed, token, backup, restore."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from loguru import logger

from common.auth import ROLES, mint_token
from common.config import DEV_JWT_SECRET
from common.db import connect
from common.logging import setup_logging
from common.migrations import MigrationError, discover, migrate
from devstack import top
from devstack.backup import BackupError, backup, default_path, restore
from devstack.embedded import EmbeddedError, pid_alive
from devstack.nginx import DEFAULT_EXPECTED_CLIENTS, NginxError
from devstack.seed import seed_demo, seed_orders
from devstack.stack import Stack, StackError


def _dms_home() -> Path:
    return Path(os.environ.get("DMS_HOME", Path.cwd() / ".dms"))


def _setting(name: str) -> str | None:
    """From the environment, else from the `.dms/env` that `dms up` wrote."""
    if os.environ.get(name):
        return os.environ[name]
    env_file = _dms_home() / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name:
                return value
    return None


def _require(name: str) -> str:
    value = _setting(name)
    if not value:
        raise SystemExit(f"dms: {name} is not set and no .dms/env exists; run `dms up` or export {name}")
    return value


def cmd_up(args: argparse.Namespace) -> int:
    if args.api < 1 or args.gateways < 1 or args.expected_clients < 1:
        print("dms up: --api, --gateways and --expected-clients must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        stack = Stack(home=_dms_home(), api_count=args.api, gateway_count=args.gateways,
                      nginx_port=None if args.no_nginx else args.nginx_port, tls=args.tls,
                      expected_clients=args.expected_clients)
    except StackError as exc:
        print(f"dms up: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    restart = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: restart.set())  # `dms restart`: rolling restart
    try:
        stack.start_infrastructure()
        stack.prepare_database()
        stack.write_env_file()
        stack.start_processes()
        print(stack.banner(), flush=True)
        logger.info("stack up in {:.1f}s", time.monotonic() - started)
        while not stop.is_set():
            if restart.is_set():
                restart.clear()
                logger.info("rolling restart: one process at a time")
                stack.rolling_restart(should_continue=lambda: not stop.is_set())
                logger.info("rolling restart done")
            stack.supervise(stopping=stop.is_set)
            stop.wait(0.25)
        return 0
    except (EmbeddedError, NginxError, StackError) as exc:
        # Something the user can act on: one sentence, no traceback.
        print(f"dms up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        logger.info("stopping the stack")
        stack.stop()
        logger.info("stopped")


def cmd_restart(args: argparse.Namespace) -> int:
    """Ask the running `dms up` (pid in .dms/state.json) for a rolling restart and wait for it."""
    state_file = _dms_home() / "state.json"

    def state() -> dict[str, object]:
        try:
            return dict(json.loads(state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    before = state()
    pid = before.get("dms_pid")
    if not isinstance(pid, int):
        print("dms restart: no running `dms up` found (no dms_pid in .dms/state.json)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"dms restart: `dms up` (pid {pid}) is not running", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        now = state()
        if now.get("restarts", 0) != before.get("restarts", 0):
            children = now.get("children")
            if isinstance(children, list):
                names = [f"{c['name']} (pid {c['pid']})" for c in children if c["name"] != "nginx"]
                print("restarted:", ", ".join(names))
            return 0
        time.sleep(0.2)
    print(f"dms restart: not finished within {args.timeout:.0f}s", file=sys.stderr)
    return 1


def cmd_status(_: argparse.Namespace) -> int:
    """What the running `dms up` supervises: each process, whether it runs, and its restarts."""
    try:
        state = json.loads((_dms_home() / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        print("dms status: no `dms up` state found (no .dms/state.json); run `dms up`", file=sys.stderr)
        return 1
    pid = state.get("dms_pid")
    running = isinstance(pid, int) and pid_alive(pid)
    print(f"dms up (pid {pid}): {'running' if running else 'not running'}")
    limit = state.get("crash_limit")
    if isinstance(limit, list):
        print(f"crash-loop rule: {limit[0]} unexpected exits within {limit[1]:.0f}s stop the stack")
    print(f"{'process':<12} {'pid':>8} {'port':>6}  {'state':<9} {'restarts':>8}  last exit")
    for entry in state.get("servers", []) + state.get("children", []):
        alive = pid_alive(entry["pid"])
        status = entry.get("state", "up") if alive or entry.get("state") == "waiting" else "down"
        last = entry.get("last_exit")
        print(f"{entry['name']:<12} {entry['pid']:>8} {entry.get('port') or '-':>6}  {status:<9} "
              f"{entry.get('restarts', 0):>8}  {'-' if last is None else last}"
              + (f" (down {entry['last_downtime_s']}s)" if entry.get("last_downtime_s") is not None else ""))
    return 0 if running else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _require("DATABASE_URL")
    if _setting("DMS_ENV") == "production" and not args.no_backup and _pending_migrations(url):
        # A migration that goes wrong on production data must have a way back.
        try:
            print("backup before migrating:", backup(url, default_path(_dms_home() / "backups")), flush=True)
        except BackupError as exc:
            print(f"dms migrate: no backup, so nothing was migrated ({exc}); --no-backup to skip it",
                  file=sys.stderr)
            return 1
    applied = migrate(url, on_applied=lambda name, seconds: print(f"migrating {name} ... {seconds:.2f}s", flush=True))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _pending_migrations(url: str) -> list[str]:
    with connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS yes").fetchone()
        done = {row["name"] for row in conn.execute("SELECT name FROM schema_migrations")} \
            if exists and exists["yes"] else set()
    return [m.name for m in discover() if m.name not in done]


def cmd_backup(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_path(_dms_home() / "backups")
    try:
        written = backup(_require("DATABASE_URL"), out, on_progress=_backup_progress)
    except BackupError as exc:
        print(f"dms backup: {one_line(exc)}", file=sys.stderr)
        return 1
    _backup_progress(written.stat().st_size, done=True)
    print(written)
    return 0


def _backup_progress(size: int, *, done: bool = False) -> None:
    # stderr: stdout carries only the written file's path, for scripts.
    print(f"backup: {size:,} bytes {'written' if done else 'so far'}", file=sys.stderr, flush=True)


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        restore(_require("DATABASE_URL"), Path(args.file))
    except BackupError as exc:
        print(f"dms restore: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"restored {args.file}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    url = _require("DATABASE_URL")
    print("demo data:", seed_demo(url))
    if args.orders:
        started = time.monotonic()
        count = seed_orders(url, args.orders)
        print(f"generated {count} orders in {time.monotonic() - started:.1f}s")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    return top.run(_dms_home(), once=args.once)


def cmd_token(args: argparse.Namespace) -> int:
    secret = _setting("JWT_SECRET") or DEV_JWT_SECRET
    try:
        print(mint_token(secret, role=args.role, sub=args.sub, restaurant_id=args.restaurant_id,
                         ttl_s=args.ttl))
    except ValueError as exc:
        print(f"dms token: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dms", description="Realtime distribution backend: dev tools")
    parser.add_argument("--version", action="version", version=f"dms {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole stack (embedded PostgreSQL and Redis unless URLs are set)")
    up.add_argument("--api", type=int, default=1, help="REST API processes, on ports from API_PORT (default 1)")
    up.add_argument("--gateways", type=int, default=1,
                    help="WebSocket gateways, on ports from GATEWAY_PORT after the APIs' (default 1)")
    up.add_argument("--nginx-port", type=int, default=8080, help="nginx in front, when installed (default 8080)")
    up.add_argument("--no-nginx", action="store_true", help="do not start nginx even when it is installed")
    up.add_argument("--tls", action="store_true",
                    help="nginx listens with TLS: a self-signed CA and certificate under .dms/tls "
                         "(TLS_CERT_FILE and TLS_KEY_FILE name your own pair instead)")
    up.add_argument("--expected-clients", type=int, default=DEFAULT_EXPECTED_CLIENTS,
                    help="WebSocket clients nginx is sized for: workers, connections and descriptors per worker "
                         f"(default {DEFAULT_EXPECTED_CLIENTS:,})")
    restart = commands.add_parser("restart", help="rolling restart of a running `dms up`, one process at a time")
    restart.add_argument("--timeout", type=float, default=300, help="seconds to wait for it to finish")
    commands.add_parser("status", help="the processes of a running `dms up`: pids, state, restarts after crashes")
    top_ = commands.add_parser("top", help="live view of a running `dms up` from its processes' /metrics")
    top_.add_argument("--once", action="store_true", help="print one frame (two scrapes 1 s apart) and exit")
    migrate = commands.add_parser("migrate", help="apply pending migrations from sql/ (production: after a backup)")
    migrate.add_argument("--no-backup", action="store_true",
                         help="with DMS_ENV=production, migrate without taking a backup first")
    backup = commands.add_parser("backup", help="pg_dump the database (custom format) to a file")
    backup.add_argument("--out", help="the file to write (default .dms/backups/dms-<UTC time>.dump)")
    restore = commands.add_parser("restore", help="restore a `dms backup` file into an empty database")
    restore.add_argument("file", help="a file written by `dms backup`")
    seed = commands.add_parser("seed", help="create demo data idempotently")
    seed.add_argument("--orders", type=int, default=0, help="also generate this many historical orders")
    token = commands.add_parser("token", help="mint a development JWT")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", help="user UUID (random when omitted)")
    token.add_argument("--restaurant-id", help="needed for restaurant and demo roles")
    token.add_argument("--ttl", type=float, default=24 * 3600, help="seconds until expiry (default 1 day)")
    return parser


# One line per subcommand (its arguments are in build_parser).
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "restart": cmd_restart,
    "status": cmd_status,
    "top": cmd_top,
    "migrate": cmd_migrate,
    "seed": cmd_seed,
    "token": cmd_token,
    "backup": cmd_backup,
    "restore": cmd_restore,
}


def version() -> str:
    try:
        return importlib.metadata.version("dms-realtime")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


def one_line(exc: BaseException) -> str:
    """The first line of an error (psycopg's carry a DETAIL/HINT block and the whole query after it)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                  fmt=os.environ.get("LOG_FORMAT", "text"), service="dms")
    try:
        return HANDLERS[args.command](args)
    except (psycopg.Error, MigrationError, BackupError, OSError) as exc:
        # What an operator can act on (database down, a refused migration, a disk full): one line.
        print(f"dms {args.command}: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
