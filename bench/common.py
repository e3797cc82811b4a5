"""Shared by every benchmark: embedded servers, child processes, machine facts, histograms, reports."""

from __future__ import annotations

import atexit
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "bench" / "reports"
BENCH_SECRET = "bench-secret-0123456789abcdef0123"  # noqa: S105 - loopback benchmark only

_children: list[subprocess.Popen[bytes]] = []


# -- child processes ---------------------------------------------------------------------------
def _kill_children(*_: object) -> None:
    """Never leave a server or client behind, whatever way the benchmark ends."""
    for proc in reversed(_children):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
            except (ProcessLookupError, PermissionError):
                pass
    _children.clear()


def _own_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def install_cleanup() -> None:
    """Kill every child on exit, Ctrl-C or SIGTERM (benchmarks must stop by themselves)."""
    atexit.register(_kill_children)

    def on_signal(signum: int, _frame: object) -> None:
        _kill_children()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)


def register_child(proc: subprocess.Popen[bytes]) -> None:
    """A child started elsewhere (nginx by devstack) that must not outlive the benchmark either."""
    _children.append(proc)


def spawn(args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
          stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, registered for cleanup; stderr (and stdout) go to `log`."""
    sink = open(log, "ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(list(args), env={**os.environ, **(env or {})}, cwd=ROOT, stdin=stdin,
                            stdout=stdout if stdout is not None else sink, stderr=sink, start_new_session=True)
    _children.append(proc)
    return proc


def python_module(module: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None,
                  stdin: int | None = subprocess.DEVNULL, stdout: int | None = None) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", module, *args], env=env, log=log, stdin=stdin, stdout=stdout)


def stop(proc: subprocess.Popen[bytes], *, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)


def wait_http(url: str, *, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s")


# -- embedded servers --------------------------------------------------------------------------
@dataclass
class Stack:
    """Embedded PostgreSQL and Redis in a temporary directory, like the test fixtures use."""

    tmp: Path
    database_url: str = ""
    redis_url: str = ""
    servers: list[Any] = field(default_factory=list)

    @classmethod
    def start(cls, *, seed: bool = True, pg_settings: dict[str, str] | None = None) -> Stack:
        from common.migrations import migrate
        from devstack import embedded
        from devstack.seed import seed_demo

        stack = cls(Path(tempfile.mkdtemp(prefix="dms-bench-")))
        atexit.register(stack.stop)
        pg = embedded.start_postgres(stack.tmp / "pg" / "data", port=embedded.free_port(), durable=False,
                                     extra_settings={"max_connections": "500", **(pg_settings or {})})
        stack.servers.append(pg)
        _children.append(pg.process)
        redis_server = embedded.start_redis(stack.tmp / "redis", port=embedded.free_port(), persist=False)
        stack.servers.append(redis_server)
        _children.append(redis_server.process)
        stack.database_url = embedded.create_database(pg.port, "dms_bench")
        stack.redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        migrate(stack.database_url)
        if seed:
            seed_demo(stack.database_url)
        return stack

    def env(self, **extra: str) -> dict[str, str]:
        """Settings for API and gateway processes: no rate limits, quiet logs."""
        return {
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, "JWT_SECRET": BENCH_SECRET,
            "DMS_ENV": "test", "LOG_LEVEL": "WARNING", "RATE_LIMIT_IP": "100000000/minute",
            "RATE_LIMIT_USER": "100000000/hour", "WS_MAX_CONNECTIONS_PER_USER": "100000", **extra,
        }

    @property
    def pids(self) -> dict[str, int]:
        return {server.name: server.pid for server in self.servers}

    def stop(self) -> None:
        from devstack import embedded

        for server in reversed(self.servers):
            server.stop(sig=signal.SIGINT if server.name == "postgres" else signal.SIGTERM, timeout_s=15)
            if server.process in _children:
                _children.remove(server.process)
        self.servers.clear()
        shutil.rmtree(embedded.resolve_data_dir(self.tmp / "pg" / "data").parent, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- measuring -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""
    return {
        "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
        "platform": platform.platform(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class CpuMeter:
    """CPU use of a set of processes over an interval, as a percentage of one core."""

    def __init__(self, pids: dict[str, int | Sequence[int]]) -> None:
        self.procs: dict[str, list[psutil.Process]] = {}
        for name, value in pids.items():
            ids = [value] if isinstance(value, int) else list(value)
            self.procs[name] = [psutil.Process(pid) for pid in ids]
        self._start = self._sample()
        self._at = time.monotonic()

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, procs in self.procs.items():
            total = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                    # PostgreSQL's work happens in backends, children of the postmaster.
                    for child in proc.children(recursive=True):
                        child_times = child.cpu_times()
                        total += child_times.user + child_times.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def reset(self) -> None:
        self._start, self._at = self._sample(), time.monotonic()

    def percent(self) -> dict[str, float]:
        now, wall = self._sample(), max(time.monotonic() - self._at, 1e-6)
        return {name: round(100 * (now[name] - self._start.get(name, 0.0)) / wall, 1) for name in now}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces or parentheses: split after its last ')'.
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def catalogue_page_query(category: str) -> str:
    """The query of the catalogue page a cached read answers (and bare Flask serves) per category."""
    return f"limit=50&category={category}"


def catalogue_pages(get_page: Callable[[str], Any]) -> dict[str, Any]:
    """Each category's `GET /api/products` page, as `get_page(query string)` fetches it: the pages the
    bare-Flask peer (bench.bare_flask) serves, so its ratio compares like with like."""
    from devstack.seed import CATEGORIES

    return {category: get_page(catalogue_page_query(category)) for category in CATEGORIES}


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process in seconds (all its threads, none of its children), from
    /proc/PID/stat; zeros once it has gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def proc_cpu_s(pid: int) -> float:
    """User plus kernel CPU of one process."""
    return sum(proc_cpu_times(pid))


def proc_system_cpu_s(pid: int) -> float:
    """The kernel's share of `proc_cpu_s` (on loopback a send() also runs the receiving side's TCP
    processing, and that is charged to the sender)."""
    return proc_cpu_times(pid)[1]


def proc_rss_kib(pid: int) -> float:
    """Resident set of one process in KiB, from /proc/PID/stat."""
    return int(_stat_fields(pid)[21]) * _PAGE / 1024


def raise_nofile(want: int = 65536) -> int:
    """Lift the soft open-files limit toward the hard one (children inherit it); returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


class Histogram:
    """Latencies in log buckets of 1% width: mergeable across processes, bounded memory."""

    GROWTH = 1.01

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.n = sum(self.counts.values())

    def add(self, ms: float) -> None:
        bucket = int(math.log(max(ms, 0.01) / 0.01, self.GROWTH))
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.n += 1

    def merge(self, other: Histogram | dict[str, int]) -> None:
        items = other.counts.items() if isinstance(other, Histogram) else ((int(k), v) for k, v in other.items())
        for bucket, count in items:
            self.counts[bucket] = self.counts.get(bucket, 0) + count
            self.n += count

    def percentile(self, p: float) -> float | None:
        if not self.n:
            return None
        rank, seen = math.ceil(self.n * p / 100), 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return round(0.01 * self.GROWTH ** (bucket + 0.5), 2)
        return None

    def summary(self) -> dict[str, float | int | None]:
        return {"n": self.n, "p50_ms": self.percentile(50), "p95_ms": self.percentile(95),
                "p99_ms": self.percentile(99), "max_ms": self.percentile(100)}

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in self.counts.items()}


def percentiles(values: Iterable[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """Exact nearest-rank percentiles of a small sample."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        out[f"p{p:g}"] = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * p / 100) - 1)] if ordered else None
    return out


# -- reports -------------------------------------------------------------------------------------
def write_report(name: str, body: dict[str, Any], charts: list[tuple[str, dict[str, Any]]]) -> list[Path]:
    """bench/reports/<name>-<timestamp>.json plus one PNG (and SVG) per chart spec."""
    from bench.chart import line_chart_png, line_chart_svg

    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    paths = [REPORTS / f"{name}-{stamp}.json"]
    paths[0].write_text(json.dumps(body, indent=2, default=str) + "\n")
    for suffix, spec in charts:
        png = REPORTS / f"{name}-{stamp}{suffix}.png"
        png.write_bytes(line_chart_png(**spec))
        svg = png.with_suffix(".svg")
        svg.write_text(line_chart_svg(**spec))
        paths += [png, svg]
    return paths


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
