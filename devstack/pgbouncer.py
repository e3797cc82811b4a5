"""Render deploy/pgbouncer/pgbouncer.ini for a given PostgreSQL and run PgBouncer unprivileged."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from devstack import embedded

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini"
_KEY = re.compile(r"^\s*([A-Za-z_]+)\s*=")


class PgBouncerError(RuntimeError):
    """PgBouncer is missing or did not start."""


def pgbouncer_binary() -> str | None:
    return embedded.system_program("pgbouncer")


def render_text(*, database: str, pg_port: int, listen_port: int, workdir: Path, pg_host: str = "127.0.0.1",
                template: Path = SAMPLE, overrides: dict[str, str] | None = None) -> str:
    """The sample config with its [databases] entry, port and file paths replaced, line by line."""
    settings = {
        "listen_port": str(listen_port),
        "auth_file": str(workdir / "userlist.txt"),
        "logfile": str(workdir / "pgbouncer.log"),
        "pidfile": str(workdir / "pgbouncer.pid"),
        "auth_type": "trust",  # the embedded test servers have no passwords; production uses SCRAM
        **(overrides or {}),
    }
    out: list[str] = []
    section = ""
    for line in template.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            out.append(line)
            if section == "[databases]":
                out.append(f"{database} = host={pg_host} port={pg_port} dbname={database}")
            continue
        match = _KEY.match(line)
        if match and section == "[databases]":
            continue  # the sample's entry is replaced by ours above
        if match and section == "[pgbouncer]" and match.group(1) in settings:
            out.append(f"{match.group(1)} = {settings.pop(match.group(1))}")
            continue
        out.append(line)
    out.extend(f"{key} = {value}" for key, value in settings.items())  # keys the sample lacks
    return "\n".join(out) + "\n"


def _workdir(wanted: Path) -> Path:
    """PgBouncer refuses root, so it runs as an unprivileged user who must reach its files: a
    directory that user cannot traverse is swapped for a stand-in (embedded.reachable_dir)."""
    return embedded.reachable_dir(wanted, "pgbouncer")


def start(workdir: Path, *, database: str, pg_port: int, listen_port: int, user: str = "postgres",
          overrides: dict[str, str] | None = None, timeout_s: float = 15.0) -> embedded.ServerProcess:
    """Write the config and user list into `workdir` (or its reachable stand-in) and start PgBouncer."""
    binary = pgbouncer_binary()
    if binary is None:
        raise PgBouncerError("pgbouncer is not installed")
    ids = embedded.unprivileged_ids()
    workdir = _workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ini = workdir / "pgbouncer.ini"
    ini.write_text(render_text(database=database, pg_port=pg_port, listen_port=listen_port, workdir=workdir,
                               overrides=overrides))
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    if ids is not None:
        os.chmod(workdir, 0o755)  # noqa: S103 - the unprivileged PgBouncer must reach its files
        for path in (workdir, ini, workdir / "userlist.txt"):
            os.chown(path, *ids)
    log_path = workdir / "pgbouncer.log"
    process = subprocess.Popen([binary, str(ini)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=embedded.as_user(ids),
                               start_new_session=True)
    server = embedded.ServerProcess("pgbouncer", listen_port, process.pid, process, log_path)
    try:
        embedded.wait_for_port(listen_port, timeout_s=timeout_s, alive=server.alive,
                               what=f"PgBouncer (log: {log_path})")
    except embedded.EmbeddedError as exc:
        server.stop(sig=signal.SIGTERM, timeout_s=5)
        raise PgBouncerError(str(exc)) from exc
    return server
