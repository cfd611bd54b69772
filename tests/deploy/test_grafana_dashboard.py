"""deploy/grafana/memos-proxy.json uses exactly the metrics the proxy exports: every metric named in
a panel's query is in a real scrape of /metrics, and it is a dashboard Grafana can import (unique
panel ids, a Prometheus datasource variable, a tenant variable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.scrape import exported

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "memos-proxy.json"
METRIC = re.compile(r"\bmemos_[a-z0-9_]+\b")


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_query_names_an_exported_metric(proxy) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    samples = set().union(*exported(proxy(embedding_model="hash")).values())
    named = {m for expr in queries(dashboard) for m in METRIC.findall(expr)}
    assert named, "the dashboard queries nothing"
    assert named <= samples, sorted(named - samples)


def test_the_dashboard_imports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "memos-proxy" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert "tenant" in variables
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"] and panel["description"]
    # Per-tenant series are filtered by the tenant variable (the outbox and embedding series have none).
    untenanted = (
        "memos_outbox_",
        "memos_write_retry_",
        "memos_storage_",
        "memos_query_embedding_",
        "memos_memory_embedding_",
    )
    for expr in queries(dashboard):
        if not any(m.startswith(untenanted) for m in METRIC.findall(expr)):
            assert 'tenant=~"$tenant"' in expr, expr
