"""`dms` speaks in lines: --version, one-line errors instead of tracebacks, progress for migrate and backup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.migrations import MigrationError, discover, migrate
from devstack import embedded
from devstack.backup import backup
from tests.fix_infra import Infra
from tests.helpers import ROOT, seconds

# Nothing listens on port 1: every database command fails to connect.
UNREACHABLE = "postgresql://dms@127.0.0.1:1/dms?connect_timeout=2"


def _dms(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=seconds(120), check=False)


def _one_line_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"dms {command}: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version_names_the_installed_distribution() -> None:
    result = _dms("--version", env={})
    assert result.returncode == 0 and re.fullmatch(r"dms \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


@pytest.mark.parametrize("command", [("migrate",), ("seed",), ("backup", "--out", "{tmp}/x.dump"),
                                     ("restore", "{tmp}/x.dump")])
def test_an_unreachable_database_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    if command[0] == "restore":
        (tmp_path / "x.dump").write_bytes(b"PGDMP")
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    line = _one_line_error(_dms(*args, env={"DATABASE_URL": UNREACHABLE, "DMS_HOME": str(tmp_path)}), command[0])
    assert "127.0.0.1" in line or "refused" in line, line


def test_an_unwritable_backup_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _dms("backup", "--out", str(blocker / "x.dump"), env={"DATABASE_URL": UNREACHABLE})
    assert "cannot write to" in _one_line_error(result, "backup")


def test_migrate_refuses_a_directory_without_migrations(tmp_path: Path) -> None:
    # No database is needed: the check comes before any connection.
    with pytest.raises(MigrationError, match="no migration files"):
        migrate(UNREACHABLE, tmp_path)


def test_migrate_prints_each_file_and_its_time(infra: Infra, tmp_path: Path) -> None:
    url = embedded.create_database(infra.postgres.port, "cli_progress")
    result = _dms("migrate", env={"DATABASE_URL": url, "DMS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("migrating ")]
    assert [line.split()[1] for line in lines] == [m.name for m in discover()]
    assert all(re.fullmatch(r"migrating \S+ \.\.\. \d+\.\d\ds", line) for line in lines), lines
    again = _dms("migrate", env={"DATABASE_URL": url, "DMS_HOME": str(tmp_path)}, cwd=tmp_path)
    assert again.returncode == 0 and "applied 0 migration" in again.stdout


def test_backup_reports_bytes_as_it_goes(infra: Infra, tmp_path: Path) -> None:
    url = embedded.create_database(infra.postgres.port, "cli_backup_progress")
    assert _dms("migrate", env={"DATABASE_URL": url, "DMS_HOME": str(tmp_path)}).returncode == 0
    seen: list[int] = []
    out = backup(url, tmp_path / "a.dump", on_progress=seen.append, progress_interval_s=0.001)
    assert seen, "no progress while pg_dump ran"
    assert seen == sorted(seen) and seen[-1] <= out.stat().st_size
    result = _dms("backup", "--out", str(tmp_path / "b.dump"), env={"DATABASE_URL": url, "DMS_HOME": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "b.dump"), result.stderr
    size = (tmp_path / "b.dump").stat().st_size
    assert f"backup: {size:,} bytes written" in result.stderr
