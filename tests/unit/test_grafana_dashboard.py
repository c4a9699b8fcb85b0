"""docs/grafana-dashboard.json asks only for metrics `runvm metrics serve` exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runvm.metrics.export import NAMES

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\brunvm_[a-z0-9_]+")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets' ``expr`` and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "query" in value:
                yield str(value["query"])
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def exported(name: str) -> bool:
    if name in NAMES:
        return True
    base = next((name.removesuffix(s) for s in HISTOGRAM_PARTS if name.endswith(s)), "")
    return base in NAMES


def test_every_query_names_exported_metrics_only() -> None:
    found = list(queries(json.loads(DASHBOARD.read_text())))
    assert len(found) >= 10
    for promql in found:
        names = METRIC.findall(promql)
        assert names, f"a query with no runvm metric: {promql}"
        unknown = [n for n in names if not exported(n)]
        assert not unknown, f"{promql}: not exported: {unknown}"


def test_the_check_would_catch_a_misspelt_metric() -> None:
    assert not exported("runvm_container_cpu_seconds_total")
    assert exported("runvm_agent_request_duration_seconds_bucket")
