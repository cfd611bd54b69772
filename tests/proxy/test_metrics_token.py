"""MEMOS_METRICS_TOKEN: /metrics answers only a scraper that presents the token; unset, it is open.
A database that cannot be read leaves the scrape working, saying so."""

from __future__ import annotations

import httpx


def test_metrics_behind_a_scrape_token(proxy) -> None:
    running = proxy(embedding_model="hash", metrics_token="scrape-secret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret"}):
        refused = httpx.get(f"{running.url}/metrics", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert "memos_" not in refused.text
    scraped = httpx.get(f"{running.url}/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert scraped.status_code == 200 and "memos_outbox_pending" in scraped.text
    assert httpx.get(f"{running.url}/healthz").status_code == 200  # probes stay open


def test_metrics_open_without_a_token(proxy) -> None:
    running = proxy(embedding_model="hash")
    assert httpx.get(f"{running.url}/metrics").status_code == 200


def test_an_unreadable_outbox_is_reported_and_the_rest_still_scraped(tmp_path) -> None:
    from memos.db import Database
    from memos.writeback.outbox import Outbox
    from proxy.metrics import Metrics, TenantLabels

    gone = Database(f"sqlite:///{tmp_path / 'memos.db'}")  # no tables: every query fails
    metrics = Metrics(TenantLabels("name"))
    metrics.watch_outbox(Outbox(gone, keyring=None).backlog)  # type: ignore[arg-type]
    metrics.skipped_memory("acme", "overloaded")
    text = metrics.render().decode()
    assert "memos_outbox_readable 0.0" in text and "memos_outbox_pending" not in text
    assert 'memos_memory_skipped_total{reason="overloaded",tenant="acme"} 1.0' in text
    gone.dispose()
