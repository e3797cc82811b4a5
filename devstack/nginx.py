"""Render nginx/nginx.conf.template into a prefix directory and run nginx there, unprivileged."""

from __future__ import annotations

import grp
import math
import os
import pwd
import resource
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack import embedded

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
DEFAULT_PORT = 8080
WORKER_USER = "nobody"
# Sizing for the fleet (docs: README "nginx for a fleet"). Each proxied WebSocket holds two of a
# worker's connections and two descriptors (client side and gateway side). A worker keeps
# FD_RESERVE descriptors for its listening sockets, logs and REST requests in flight, and is planned
# to PLANNED_SHARE of its WebSocket capacity: SO_REUSEPORT spreads connections by a hash, not
# evenly, and a reconnect storm briefly holds old and new sockets side by side.
DEFAULT_EXPECTED_CLIENTS = 10_000
FD_RESERVE = 200
PLANNED_SHARE = 0.8
# Past this a worker's preallocated connection table (about 450 bytes each) is not worth it: add workers.
WORKER_FD_CAP = 65_536


class NginxError(RuntimeError):
    """nginx is missing, rejected its configuration or did not start."""


def nginx_binary() -> str | None:
    return embedded.system_program("nginx")


@dataclass(frozen=True)
class Site:
    """What one nginx fronts: API and gateway ports on `upstream_host`, listening on `listen_port`."""

    api_ports: tuple[int, ...]
    gateway_ports: tuple[int, ...]
    listen_port: int = DEFAULT_PORT
    listen_host: str = "127.0.0.1"
    upstream_host: str = "127.0.0.1"
    worker_processes: int = 1
    worker_connections: int = 4096
    worker_rlimit_nofile: int = 8192
    ws_read_timeout_s: int = 75
    max_fails: int = 2
    # Also how long a failed upstream is left out: a rolling restart waits this long after each
    # process is ready, or nginx could still shun it while the next one goes down.
    fail_timeout_s: int = 3
    # Both set: the listener speaks TLS (1.2 and 1.3 only) and every response carries HSTS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Gateways are never marked down (max_fails=0): a gateway refusing a handshake burst with 503,
    # or slow to accept one, would otherwise count as failed, and once every gateway had failed
    # nginx answered 503 itself ("no live upstreams") while all of them were up. A dead gateway
    # refuses the connection at once, so trying it first costs one failed connect per handshake.
    gateway_max_fails: int = 0
    # Listen queue of nginx's sockets: a handshake burst waits here instead of being dropped
    # (the kernel caps it at net.core.somaxconn).
    listen_backlog: int = 4096
    # `crit` keeps ?token= out of the error log; a benchmark may lower it to count nginx's own refusals.
    ws_error_log_level: str = "crit"


def descriptor_limit() -> int:
    """The hard open-files limit nginx inherits from this process (root cannot pass it either
    in a container without CAP_SYS_RESOURCE), capped where more per worker stops paying."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return WORKER_FD_CAP if hard == resource.RLIM_INFINITY else min(int(hard), WORKER_FD_CAP)


def clients_per_worker(fd_limit: int) -> int:
    """Proxied WebSockets one worker can hold at most: two descriptors each, after the reserve."""
    return max((fd_limit - FD_RESERVE) // 2, 1)


def fleet_sizing(expected_clients: int, *, fd_limit: int | None = None) -> dict[str, int]:
    """`worker_processes`, `worker_connections` and `worker_rlimit_nofile` for that many WebSocket
    clients: every worker as large as the descriptor limit allows, and enough of them that each is
    at most PLANNED_SHARE full. With 20,000 descriptors: 19,800 connections, 9,900 WebSockets and
    7,920 planned per worker; 10,000 clients take 2 workers, 20,000 take 3."""
    if expected_clients < 1:
        raise NginxError("the expected number of clients must be at least 1")
    fd_limit = descriptor_limit() if fd_limit is None else fd_limit
    if fd_limit <= FD_RESERVE + 2:
        raise NginxError(f"an open-files limit of {fd_limit} leaves nginx no room for connections")
    planned = max(int(clients_per_worker(fd_limit) * PLANNED_SHARE), 1)
    return {"worker_processes": math.ceil(expected_clients / planned),
            "worker_connections": fd_limit - FD_RESERVE, "worker_rlimit_nofile": fd_limit}


def fleet_site(*, expected_clients: int = DEFAULT_EXPECTED_CLIENTS, fd_limit: int | None = None,
               **fields: object) -> Site:
    """A Site sized by `fleet_sizing` (other fields as given)."""
    return Site(**{**fleet_sizing(expected_clients, fd_limit=fd_limit), **fields})  # type: ignore[arg-type]


def _servers(host: str, ports: tuple[int, ...], site: Site, *, max_fails: int) -> str:
    if not ports:
        raise NginxError("an upstream needs at least one port")
    return "\n".join(
        f"        server {host}:{port} max_fails={max_fails} fail_timeout={site.fail_timeout_s}s;"
        for port in ports
    )


def _user_directive() -> str:
    # Only a root master may switch users; without the directive workers would run as the
    # compiled-in default, which on some builds does not exist.
    if os.geteuid() != 0:
        return "# user: not root, workers run as the current user"
    entry = pwd.getpwnam(WORKER_USER)
    return f"user {WORKER_USER} {grp.getgrgid(entry.pw_gid).gr_name};"


def _tls_directives(site: Site) -> str:
    if not site.tls_cert_file:
        return "# TLS: off (set TLS_CERT_FILE and TLS_KEY_FILE, or run `dms up --tls`)"
    lines = [
        f"ssl_certificate {Path(site.tls_cert_file).resolve()};",
        f"ssl_certificate_key {Path(site.tls_key_file).resolve()};",
        "ssl_protocols TLSv1.2 TLSv1.3;",  # older versions have known weaknesses; browsers dropped them
        "ssl_session_cache shared:dms_tls:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
        # One copy, the API's value, on every response (nginx's own answers too).
        "proxy_hide_header Strict-Transport-Security;",
        'add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;',
    ]
    return "\n        ".join(lines)


def render_text(site: Site, prefix: Path, *, template: Path = TEMPLATE) -> str:
    if bool(site.tls_cert_file) != bool(site.tls_key_file):
        raise NginxError("TLS needs both a certificate and a key file")
    values = {
        "listen_tls": " ssl" if site.tls_cert_file else "",
        "tls_directives": _tls_directives(site),
        "prefix": str(prefix.resolve()),
        "user_directive": _user_directive(),
        "worker_processes": str(site.worker_processes),
        "worker_connections": str(site.worker_connections),
        "worker_rlimit_nofile": str(site.worker_rlimit_nofile),
        "listen_host": site.listen_host,
        "listen_port": str(site.listen_port),
        "listen_backlog": str(site.listen_backlog),
        "api_servers": _servers(site.upstream_host, site.api_ports, site, max_fails=site.max_fails),
        "gateway_servers": _servers(site.upstream_host, site.gateway_ports, site, max_fails=site.gateway_max_fails),
        "ws_read_timeout_s": str(site.ws_read_timeout_s),
        "ws_error_log_level": site.ws_error_log_level,
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise NginxError("unfilled placeholder in the nginx template: " + text[text.index("{{"):][:40])
    return text


def render(site: Site, prefix: Path) -> Path:
    """Write `prefix`/nginx.conf and the directories it names; return the config path."""
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_text(site, prefix))
    return conf


def _command(binary: str, prefix: Path, *extra: str) -> list[str]:
    prefix = prefix.resolve()
    # -e: nginx opens its compiled-in error log before reading the config unless told otherwise.
    return [binary, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "logs" / "error.log"),
            *extra]


def check(prefix: Path, *, binary: str | None = None) -> str:
    """`nginx -t` on the rendered config; return its output or raise with it."""
    binary = binary or nginx_binary()
    if binary is None:
        raise NginxError("nginx is not installed")
    result = subprocess.run(_command(binary, prefix, "-t"), capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise NginxError("nginx -t failed: " + output)
    return output


def start(site: Site, prefix: Path, *, binary: str | None = None, timeout_s: float = 15.0) -> embedded.ServerProcess:
    """Render, check and start nginx in the foreground of a child process; wait until it listens."""
    binary = binary or nginx_binary()
    if binary is None:
        raise NginxError("nginx is not installed")
    render(site, prefix)
    check(prefix, binary=binary)
    log_path = prefix / "logs" / "error.log"
    process = subprocess.Popen(_command(binary, prefix), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    server = embedded.ServerProcess("nginx", site.listen_port, process.pid, process, log_path)
    try:
        embedded.wait_for_port(site.listen_port, timeout_s=timeout_s, alive=server.alive,
                               what=f"nginx (log: {log_path})")
    except embedded.EmbeddedError as exc:
        server.stop(sig=signal.SIGTERM, timeout_s=5)
        raise NginxError(str(exc)) from exc
    return server


def reload(server: embedded.ServerProcess, site: Site, prefix: Path) -> None:
    """Re-render for new upstreams and let nginx swap workers gracefully (SIGHUP)."""
    render(site, prefix)
    check(prefix)
    os.kill(server.pid, signal.SIGHUP)
