"""`dms top`: a live view of a running `dms up`, from each process's /metrics and its pid (.dms/state.json)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    name: str
    pid: int | None
    port: int | None
    state: str
    metrics_url: str | None  # None for servers without /metrics (PostgreSQL, Redis)


@dataclass
class Scrape:
    """One process's samples: (name, sorted label items) -> value; None when /metrics did not answer."""

    at: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None
    error: str = ""

    def total(self, name: str, **match: str) -> float | None:
        if self.samples is None:
            return None
        values = [v for (n, labels), v in self.samples.items()
                  if n == name and all(dict(labels).get(k) == want for k, want in match.items())]
        return sum(values) if values else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in (self.samples or {}).items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str) -> dict[float, float]:
        """Cumulative histogram buckets summed over every label set, by upper bound."""
        out: dict[float, float] = {}
        for (n, labels), v in (self.samples or {}).items():
            if n == name + "_bucket":
                bound = float(dict(labels)["le"])
                out[bound] = out.get(bound, 0.0) + v
        return out


def targets(home: Path) -> list[Target]:
    """The processes `dms up` recorded, with where their /metrics is (hosts from .dms/env)."""
    state_file = home / "state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"no {state_file}: is `dms up` running here?")
    state = json.loads(state_file.read_text())
    env: dict[str, str] = {}
    if (home / "env").exists():
        env = dict(line.split("=", 1) for line in (home / "env").read_text().splitlines() if "=" in line)
    found = []
    for child in state.get("children", []):
        host = env.get("API_HOST" if child["name"].startswith("api") else "GATEWAY_HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all address is reached on loopback
            host = "127.0.0.1"
        url = f"http://{host}:{child['port']}/metrics" if child.get("port") else None
        found.append(Target(child["name"], child.get("pid"), child.get("port"), child.get("state", "?"), url))
    for server in state.get("servers", []):
        found.append(Target(server["name"], server.get("pid"), server.get("port"), server.get("state", "?"), None))
    return found


def scrape(url: str) -> Scrape:
    now = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:  # noqa: S310 - our own loopback URL
            text = response.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return Scrape(now, None, type(exc).__name__)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Scrape(now, samples)


def proc_times(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, resident bytes) of a process from /proc (Linux); None when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes (upper bound of its bucket)."""
    if not after:
        return None
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for bound in sorted(delta):
        if delta[bound] >= q * total:
            return bound
    return None


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    return max(0.0, after - before) / seconds


@dataclass
class Sampler:
    """Two scrapes of every target make a frame: counters become rates, histograms p95s."""

    home: Path
    fetch: Callable[[str], Scrape] = scrape
    previous: dict[str, Scrape] = field(default_factory=dict)
    cpu_seen: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (wall, CPU seconds)

    def cpu_memory(self, pid: int | None) -> tuple[float | None, float | None]:
        """CPU % since the last call and resident memory in MB."""
        times = proc_times(pid) if pid is not None else None
        if pid is None or times is None:
            return None, None
        now = time.monotonic()
        before = self.cpu_seen.get(pid)
        self.cpu_seen[pid] = (now, times[0])
        cpu = 100 * (times[0] - before[1]) / (now - before[0]) if before and now > before[0] else None
        return cpu, times[1] / 1e6

    def frame(self) -> str:
        rows = []
        relay: list[str] = []
        listed = targets(self.home)
        current = {t.name: self.fetch(t.metrics_url) for t in listed if t.metrics_url}
        for target in listed:
            cpu, rss = self.cpu_memory(target.pid)
            now, before = current.get(target.name), self.previous.get(target.name)
            row = {"name": target.name, "pid": target.pid, "port": target.port, "state": target.state,
                   "cpu": cpu, "rss": rss}
            if now is not None and now.samples is None:
                row["state"] = f"{target.state}, no /metrics ({now.error})"
            if now is not None and now.samples is not None:
                seconds = now.at - before.at if before and before.samples is not None else 0.0
                prev = before if before and before.samples is not None else None
                row["conns"] = now.total("dms_gateway_connections")
                row["deliv"] = rate(prev.total("dms_gateway_frames_out_total") if prev else None,
                                    now.total("dms_gateway_frames_out_total"), seconds)
                row["reqs"] = rate(prev.total("dms_api_request_duration_seconds_count") if prev else None,
                                   now.total("dms_api_request_duration_seconds_count"), seconds)
                p95 = quantile(prev.buckets("dms_api_request_duration_seconds") if prev else {},
                               now.buckets("dms_api_request_duration_seconds"), 0.95) if prev else None
                row["p95"] = None if p95 is None else p95 * 1000
                size = now.by_label("dms_db_pool_size", "pool")
                available = now.by_label("dms_db_pool_available", "pool")
                biggest = now.by_label("dms_db_pool_max_size", "pool")
                waiting = now.by_label("dms_db_pool_requests_waiting", "pool")
                if biggest:
                    used = sum(size.get(p, 0) - available.get(p, 0) for p in biggest)
                    row["pool"] = f"{used:.0f}/{sum(biggest.values()):.0f}"
                    row["wait"] = sum(waiting.values())
                if now.total("dms_gateway_relay_leader"):
                    lag = quantile(prev.buckets("dms_relay_lag_seconds") if prev else {},
                                   now.buckets("dms_relay_lag_seconds"), 0.95) if prev else None
                    published = rate(prev.total("dms_relay_published_events_total") if prev else None,
                                     now.total("dms_relay_published_events_total"), seconds)
                    relay.append(f"relay leader {target.name}: lag p95 {_num(lag and lag * 1000)} ms (bucket bound),"
                                 f" published {_num(published)}/s")
                backlog = now.total("dms_outbox_backlog_events")
                if backlog is not None and not any(line.startswith("outbox") for line in relay):
                    relay.append(f"outbox backlog {backlog:.0f} events")
            rows.append(row)
        self.previous = current
        return render(rows, relay)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = (("process", 12, "name"), ("pid", 8, "pid"), ("port", 6, "port"), ("conns", 7, "conns"),
           ("deliv/s", 9, "deliv"), ("req/s", 8, "reqs"), ("p95 ms", 8, "p95"), ("cpu %", 7, "cpu"),
           ("rss MB", 8, "rss"), ("db pool", 8, "pool"), ("waiting", 8, "wait"))


def render(rows: Iterable[dict[str, Any]], relay: list[str]) -> str:
    lines = [f"dms top · {datetime.now().strftime('%H:%M:%S')} · every 1 s · Ctrl-C quits", ""]
    lines.append(" ".join(title.ljust(width) if i == 0 else title.rjust(width)
                          for i, (title, width, _) in enumerate(COLUMNS)) + "  state")
    for row in rows:
        cells = []
        for i, (_, width, key) in enumerate(COLUMNS):
            value = row.get(key)
            if isinstance(value, float):
                text = _num(value, 0 if key in ("conns", "wait") else 1)
            else:
                text = "-" if value is None else str(value)
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append(" ".join(cells) + "  " + str(row.get("state", "")))
    lines.append("")
    lines.extend(relay or ["relay: no leader reported (is a gateway with its relay up?)"])
    return "\n".join(lines) + "\n"


def run(home: Path, *, once: bool, out: TextIO = sys.stdout, every_s: float = 1.0) -> int:
    """Print frames every `every_s` until Ctrl-C; `once`: one frame (two scrapes `every_s` apart) and exit."""
    # Ctrl-C ends it however it was started: a shell's background job inherits SIGINT ignored (and
    # Python then installs no handler), a parent may have left it blocked.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    sampler = Sampler(home)
    try:
        sampler.frame()  # the first scrape: rates need two
        time.sleep(every_s)
        if once:
            out.write(sampler.frame())
            return 0
        clear = "\x1b[H\x1b[2J" if out.isatty() else ""
        while True:
            out.write(clear + sampler.frame())
            out.flush()
            time.sleep(every_s)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
    except FileNotFoundError as exc:
        print(f"dms top: {exc}", file=sys.stderr)
        return 1
