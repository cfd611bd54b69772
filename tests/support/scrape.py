"""What a scrape of /metrics exports: its metric families and every sample name they may show."""

from __future__ import annotations

import httpx

from tests.support.proxy import RunningProxy


def exported(running: RunningProxy) -> dict[str, set[str]]:
    """Family name -> the sample names it exports (histograms: _bucket, _sum, _count; counters: their
    _total), read from the `# TYPE` lines of a real scrape (families with no sample yet included;
    prometheus_client's `_created` series left out)."""
    families: dict[str, set[str]] = {}
    for line in httpx.get(f"{running.url}/metrics").text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ")
        if name.endswith("_created"):
            continue  # prometheus_client's creation time of an unlabelled series, not a metric of ours
        if kind == "histogram":
            families[name] = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "counter":
            total = name if name.endswith("_total") else f"{name}_total"
            families[total] = {total}
        else:
            families[name] = {name}
    return families
