"""The Grafana dashboard, the alert rules and the metrics reference agree with what the processes export."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack import embedded, metrics_doc
from tests.fix_infra import Infra
from tests.fix_servers import SharedGateway
from tests.helpers import ROOT, Process

DASHBOARD = ROOT / "deploy" / "grafana" / "dms.json"
ALERTS = ROOT / "docs" / "deploy" / "prometheus-alerts.yml"
_NAME = re.compile(r"\bdms_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def api_metrics(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API process's /metrics (the in-process registry of the tests would hold both packages)."""
    port = embedded.free_port()
    process = Process("api", infra.env(API_PORT=str(port)), tmp_path_factory.mktemp("metrics") / "api.log")
    try:
        process.wait_http_ok(f"http://127.0.0.1:{port}/ready")
        yield _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        process.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _families(exposition: str) -> dict[str, str]:
    """Family name (as exposed: counters with _total) -> type, from the `# TYPE` lines."""
    return {parts[2]: parts[3] for line in exposition.splitlines()
            if line.startswith("# TYPE ") and len(parts := line.split()) == 4}


def _exported(exposition: str) -> set[str]:
    """Every name a query may use: each family's name and its sample names (_bucket, _sum, ...)."""
    names = set(_families(exposition))
    for name, kind in _families(exposition).items():
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    names |= {line.split("{")[0].split()[0] for line in exposition.splitlines() if line and not line.startswith("#")}
    return names


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_metric_in_the_dashboard_and_the_alert_rules_is_exported(api_metrics: str,
                                                                      gateway: SharedGateway) -> None:
    gateway_metrics = _get(f"{gateway['http']}/metrics")  # the relay runs inside the gateway by default
    exported = _exported(api_metrics) | _exported(gateway_metrics)
    dashboard = _dashboard_expressions()
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in ("Connections per gateway", "Deliveries per second", "Outbound queues and slow-consumer closes",
                   "Relay and delivery lag (p95)", "Outbox backlog", "API requests per second by route",
                   "API latency p95 by route", "API errors (5xx) per second by route", "PostgreSQL pool",
                   "Replica lag", "Redis round trips per second"):
        assert needed in titles
    used = {name for expr in dashboard + _alert_expressions() for name in _NAME.findall(expr)}
    assert len(used) >= 20, used
    missing = sorted(name for name in used if name not in exported)
    assert not missing, f"named in the dashboard or the alert rules but exported by no process: {missing}"


def test_every_exported_family_is_documented_and_the_reference_is_fresh(api_metrics: str,
                                                                        gateway: SharedGateway) -> None:
    reference = (ROOT / "docs" / "METRICS.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", reference, flags=re.MULTILINE))
    for exposition in (api_metrics, _get(f"{gateway['http']}/metrics")):
        # `x_created` is the creation time prometheus_client adds to counter and histogram x.
        undocumented = sorted(name for name in set(_families(exposition)) - documented
                              if not (name.endswith("_created") and {name[:-8], name[:-8] + "_total"} & documented))
        assert not undocumented, f"exported but not in docs/METRICS.md: {undocumented}"
    assert {"dms_api_db_reads_total", "dms_db_replica_lag_seconds", "dms_build_info"} <= documented
    assert metrics_doc.main(["--check"]) == 0, "docs/METRICS.md is out of date: run python -m devstack.metrics_doc"


def test_each_process_says_which_build_it_runs(api_metrics: str, gateway: SharedGateway) -> None:
    for exposition in (api_metrics, _get(f"{gateway['http']}/metrics")):
        (line,) = [line for line in exposition.splitlines() if line.startswith("dms_build_info{")]
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        assert set(labels) == {"version", "python", "commit"} and line.endswith(" 1.0"), line
        assert labels["version"] != "" and re.fullmatch(r"3\.\d+\.\d+", labels["python"])
        assert labels["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", labels["commit"])


def test_the_generator_lists_counters_with_their_exposed_names() -> None:
    names = {family.name: family for family in metrics_doc.families()}
    assert names["dms_gateway_disconnects_total"].labels == ("reason",)
    assert names["dms_api_request_duration_seconds"].type == "histogram"
    assert Path(metrics_doc.DOC).name == "METRICS.md"
