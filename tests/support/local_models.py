"""Shared inputs for local-runtime tests (tests/memos/local, tests/e2e/test_local_modes.py)."""

from __future__ import annotations

BLOCK = (
    "Memories about the user:\n- [2026-01-01] lives in Lisbon\n- [2026-01-02] allergic to peanuts\n"
    "- [2026-01-03] has a dog called Pixel"
)
CONVERSATION = [{"role": "user", "content": "Where do I live? What should I cook tonight?"}]
FIVE_MEMORIES = [
    "I live in Lisbon.",
    "I am allergic to peanuts.",
    "My dog is called Pixel.",
    "I play the piano on weekends.",
    "I prefer tea over coffee.",
]
