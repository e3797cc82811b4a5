"""`dms`: token, migrate, seed, status, and `up` on embedded servers: serves, stops cleanly, reuses its data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from common.auth import verify_token
from common.config import DEV_JWT_SECRET
from common.migrations import discover
from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import ROOT, http_json, seconds, wait_for


def _dms(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=seconds(timeout_s), check=False)


def test_token_mints_a_verifiable_token(tmp_path: Path) -> None:
    result = _dms("token", "--role", "driver", env={"DMS_HOME": str(tmp_path), "JWT_SECRET": ""})
    assert result.returncode == 0, result.stderr
    assert verify_token(result.stdout.strip(), DEV_JWT_SECRET).role == "driver"
    refused = _dms("token", "--role", "demo", env={"DMS_HOME": str(tmp_path)})
    assert refused.returncode == 2 and "restaurant-id" in refused.stderr


def test_migrate_and_seed_are_idempotent(infra: Infra, tmp_path: Path) -> None:
    url = embedded.create_database(infra.postgres.port, "cli_seed")
    env = {"DATABASE_URL": url, "DMS_HOME": str(tmp_path)}
    first = _dms("migrate", env=env)
    assert first.returncode == 0 and f"applied {len(discover())} migration" in first.stdout, first.stdout + first.stderr
    assert "applied 0 migration" in _dms("migrate", env=env).stdout
    for _ in range(2):
        seeded = _dms("seed", "--orders", "2000", env=env)
        assert seeded.returncode == 0, seeded.stderr
        assert "'products': 1000" in seeded.stdout and "generated 2000 orders" in seeded.stdout
    assert "orders [" in seeded.stderr  # the progress bar


def _children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.servers
def test_up_serves_then_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    home = tmp_path / ".dms"
    api_port, gateway_port = embedded.free_port(), embedded.free_port()
    env = {**os.environ, "DMS_HOME": str(home), "API_PORT": str(api_port), "GATEWAY_PORT": str(gateway_port)}
    for key in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET"):
        env.pop(key, None)
    for attempt in ("first", "second"):
        log = tmp_path / f"up-{attempt}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "devstack.cli", "up", "--no-nginx"], env=env, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        try:
            wait_for(lambda log=log, proc=proc: "dms is up" in log.read_text() or proc.poll() is not None,
                     timeout_s=120, message="the banner")
            assert proc.poll() is None, log.read_text()[-3000:]
            up_s = time.monotonic() - started
            status, _, body = http_json("GET", f"http://127.0.0.1:{api_port}/ready")
            assert status == 200 and body["postgres"] == "ok", body
            settings = dict(line.split("=", 1) for line in (home / "env").read_text().splitlines())
            assert {"DATABASE_URL", "REDIS_URL", "JWT_SECRET", "API_URL", "GATEWAY_URL"} <= set(settings)
            banner = log.read_text()
            for role in ("admin", "restaurant", "driver", "demo"):
                assert f"    {role}" in banner
            # The printed page links open a live page: the token rides in the fragment the pages read.
            for path, role in (("board", "restaurant"), ("admin", "admin")):
                link = re.search(rf"(http://\S+/{path})#token=(\S+)", banner)
                assert link is not None, banner
                assert verify_token(link.group(2), settings["JWT_SECRET"]).role == role
                with urllib.request.urlopen(link.group(1), timeout=10) as page:
                    assert page.status == 200
            children = _children_of(proc.pid)
            assert len(children) >= 4  # PostgreSQL, Redis, API, gateway (and their own children)
            if attempt == "first":
                _top_shows_the_stack(home)
        finally:
            if attempt == "first":
                proc.send_signal(signal.SIGINT)
            else:  # Ctrl-C in a terminal: the API and gateway get SIGINT too, and are not restarted
                os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=seconds(60))
        assert code == 0, log.read_text()[-3000:]
        assert "exited unexpectedly" not in log.read_text()
        assert all(not child.is_running() or child.status() == psutil.STATUS_ZOMBIE for child in children)
        text = log.read_text()
        if attempt == "first":
            assert "initialising PostgreSQL data directory" in text
        else:
            assert "initialising PostgreSQL data directory" not in text  # the data was reused
        print(f"dms up ({attempt} run) ready in {up_s:.1f}s")


def _top_shows_the_stack(home: Path) -> None:
    """`dms top --once` prints one frame of every process; `dms top` refreshes until Ctrl-C, then exits 0."""
    once = _dms("top", "--once", env={"DMS_HOME": str(home)}, timeout_s=30)
    assert once.returncode == 0, once.stderr
    rows = {line.split()[0]: line.split() for line in once.stdout.splitlines()[3:] if line.strip()}
    assert {"api", "gateway", "postgres", "redis"} <= set(rows), once.stdout  # one gateway: no suffix
    assert rows["gateway"][3] == "0" and rows["gateway"][-1] == "up"  # connections from its /metrics
    assert rows["api"][5] != "-"  # requests per second: two scrapes a second apart
    assert "relay leader gateway:" in once.stdout and "outbox backlog" in once.stdout, once.stdout
    # Started as a shell's background job starts it (SIGINT ignored on entry): Ctrl-C must still end it.
    with subprocess.Popen([sys.executable, "-m", "devstack.cli", "top"], env={**os.environ, "DMS_HOME": str(home)},
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) as live:
        try:
            assert live.stdout is not None and live.stderr is not None
            first = live.stdout.readline()
            assert first.startswith("dms top"), first
            live.send_signal(signal.SIGINT)
            assert live.wait(timeout=seconds(10)) == 0
            assert "Traceback" not in live.stderr.read()
        finally:
            if live.poll() is None:
                live.kill()


def test_status_and_a_bad_crash_limit_answer_in_one_line(tmp_path: Path) -> None:
    status = _dms("status", env={"DMS_HOME": str(tmp_path)})
    assert status.returncode == 1 and status.stderr.strip().count("\n") == 0
    assert "no `dms up` state found" in status.stderr
    up = _dms("up", "--no-nginx", env={"DMS_HOME": str(tmp_path), "DMS_CRASH_LIMIT": "often"})
    assert up.returncode == 2 and "Traceback" not in up.stderr
    assert "dms up: DMS_CRASH_LIMIT must look like 5/60" in up.stderr


def test_up_refuses_a_fleet_of_no_clients(tmp_path: Path) -> None:
    up = _dms("up", "--expected-clients", "0", env={"DMS_HOME": str(tmp_path)})
    assert up.returncode == 2 and "Traceback" not in up.stderr
    assert "--expected-clients must be at least 1" in up.stderr
    assert "--expected-clients" in _dms("up", "--help", env={"DMS_HOME": str(tmp_path)}).stdout
