"""The README's metric table lists every metric the proxy exports, and nothing it does not."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.scrape import exported

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_documents_every_metric(proxy) -> None:
    text = README.read_text()
    table = text[text.index("### Metrics (`GET /metrics`)") :]
    table = table[: table.index("\n## ")]
    documented = set(re.findall(r"`(memos_[a-z0-9_]+)`", table))
    families = set(exported(proxy(embedding_model="hash")))
    assert families - documented == set(), "exported but not in the README"
    assert documented - families == set(), "in the README but not exported"
