"""Writes docs/METRICS.md from the processes' Prometheus registries: name, type, labels, meaning.

`python -m devstack.metrics_doc` rewrites the file; `--check` exits 1 when it is out of date.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "METRICS.md"
@dataclass(frozen=True)
class Family:
    name: str  # as exposed: counters end in _total
    type: str
    labels: tuple[str, ...]
    help: str


def _load_registries() -> None:
    """Import every module that defines metrics; importing registers them (nothing starts)."""
    import api.app
    import api.performance  # noqa: F401
    import gateway.relay
    import gateway.server  # noqa: F401


def families() -> list[Family]:
    _load_registries()
    found: dict[str, Family] = {}
    collectors: list[Any] = list(REGISTRY._collector_to_names)
    for collector in collectors:
        labels: tuple[str, ...] = tuple(getattr(collector, "_labelnames", ()))
        described = list(collector.describe()) if hasattr(collector, "describe") else []
        metrics = described or list(collector.collect())
        for metric in metrics:
            names = labels if isinstance(collector, MetricWrapperBase) else tuple(getattr(metric, "_labelnames", ()))
            if not names:
                names = tuple(sorted({k for s in metric.samples for k in s.labels if k not in ("le", "quantile")}))
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            found[name] = Family(name, metric.type, names, " ".join(metric.documentation.split()))
    return sorted(found.values(), key=lambda f: (not f.name.startswith("dms_"), f.name))


def render(items: list[Family]) -> str:
    lines = [
        "# Metrics reference",
        "",
        "Every family the processes export on `GET /metrics`, generated from their Prometheus registries by",
        "`python -m devstack.metrics_doc` (a test fails when this file and the code disagree). Histograms",
        "also export `_bucket`, `_sum` and `_count`; counters are shown with their `_total` name. The",
        "dashboard in `deploy/grafana/dms.json` and the alert rules in `docs/deploy/prometheus-alerts.yml`",
        "use only these names.",
        "",
        "| name | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for family in items:
        labels = ", ".join(f"`{label}`" for label in family.labels) or "none"
        meaning = family.help.replace("|", "\\|")
        lines.append(f"| `{family.name}` | {family.type} | {labels} | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/METRICS.md is out of date")
    args = parser.parse_args(argv)
    text = render(families())
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print("docs/METRICS.md is out of date: run python -m devstack.metrics_doc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
