"""bench/strict_score.py (the strict LoCoMo rule) and bench/locomo_chat.py (the chat replay), on slices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from proxy.cli import main

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from locomo_chat import memory_block, speaker_name  # noqa: E402
from strict_score import content_words, coverage, strict_found, strict_recall  # noqa: E402

# Ten content words (adopted puppy named oscar walk river beach every sunday morning); I, a, and, we, by,
# the are stopwords.
TURN = "I adopted a puppy named Oscar and we walk by the river beach every Sunday morning"


def test_content_words_drop_stopwords_case_and_possessives() -> None:
    assert content_words("I'm at Caroline's HOUSE, and it's great!") == {"caroline", "house", "great"}
    assert len(content_words(TURN)) == 10


def test_a_line_holding_40_percent_of_the_words_misses_and_60_percent_finds() -> None:
    four = "Oscar the puppy was adopted by the river"  # oscar puppy adopted river: 4 of 10
    six = "Adopted puppy Oscar walks the river beach every week"  # adopted puppy oscar river beach every: 6
    assert coverage(four, TURN) == 0.4
    assert coverage(six, TURN) == 0.6
    assert strict_found([four], [TURN]) == [False]
    assert strict_found([four, six], [TURN]) == [True]


def test_words_spread_over_lines_do_not_add_up() -> None:
    halves = ["adopted puppy named Oscar", "river beach every Sunday"]  # 4 and 4 of 10: each < half
    assert strict_found(halves, [TURN]) == [False]
    assert strict_found([" ".join(halves)], [TURN]) == [True]


def test_recall_is_the_share_of_evidence_turns_found() -> None:
    other = "My favourite painting shows a lake sunrise"
    assert strict_recall(["I painted a lake sunrise, my favourite painting"], [TURN, other]) == 0.5
    assert strict_recall([], [TURN]) == 0.0


def test_escaped_lines_are_read_as_text() -> None:
    assert strict_found(["Tom &amp; Jerry&#x27;s cartoon"], ["Tom & Jerry's cartoon"]) == [True]


def test_the_injected_block_is_found_in_the_upstream_body() -> None:
    fence = 'id="0123456789abcdef"'
    content = f"Header.\n<memories {fence}>\n- [2024-05-01] one\n- [undated] two\n</memories {fence}>"
    body = {"messages": [{"role": "system", "content": content}, {"role": "user", "content": "q"}]}
    assert memory_block(body) == (content, ["one", "two"])
    assert memory_block({"messages": [{"role": "user", "content": "q"}]}) == ("", [])


def test_speaker_names_fit_openai_name_pattern() -> None:
    assert speaker_name("Jon") == "Jon"
    assert speaker_name("Mary Ann O'Neil") == "Mary_Ann_O_Neil"
    assert speaker_name("x" * 80) == "x" * 64


def small_conversation(directory: Path) -> Path:
    """A LoCoMo-shaped conversation of two sessions (the test needs no checkout of the shared data)."""
    turns = [
        ("Ana", "I adopted a grey cat called Miso last week."),
        ("Ben", "Nice! I started rock climbing at the gym downtown."),
        ("Ana", "Miso sleeps on my keyboard all day."),
    ]
    later = [("Ben", "I climbed my first outdoor route in the Dolomites."), ("Ana", "I moved to Porto.")]
    conv = {
        "speaker_a": "Ana",
        "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [{"speaker": w, "dia_id": f"D1:{i + 1}", "text": t} for i, (w, t) in enumerate(turns)],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [{"speaker": w, "dia_id": f"D2:{i + 1}", "text": t} for i, (w, t) in enumerate(later)],
    }
    qa = [
        {"question": "What is the name of Ana's cat?", "evidence": ["D1:1"], "category": 4},
        {"question": "Where did Ben climb outdoors?", "evidence": ["D2:1"], "category": 4},
        {"question": "What sport does Ben do?", "evidence": ["D1:2", "D2:1"], "category": 1},
    ]
    path = directory / "conv-99.json"
    path.write_text(json.dumps({"conversation": conv, "qa": qa}))
    return directory


def test_the_chat_replay_runs_end_to_end_on_a_slice(tmp_path: Path) -> None:
    out = tmp_path / "locomo_chat.json"
    data = small_conversation(tmp_path)
    limits = ["--limit-conversations", "1", "--limit-sessions", "2", "--limit-questions", "3"]
    args = [
        "bench",
        "--bench-dir",
        str(BENCH),
        "locomo_chat",
        "--data",
        str(data),
        *limits,
        "--out",
        str(out),
    ]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["conversations"] == ["conv-99"]
    assert res["write"]["chat_requests"] > 0 and res["write"]["write_requests_with_a_block"] == 0
    assert sum(res["write"]["memories"].values()) > 0
    assert res["questions"] == len(res["per_question"]) == 3
    overall = res["overall"]
    assert 0.0 <= overall["strict_recall"] <= 1.0
    assert overall["questions_with_a_block"] > 0 and overall["mean_block_chars"] > 0
    assert overall["mean_block_tokens"] > 0 and res["tokens_source"]
    assert {"proxy_p50", "direct_p50", "added_p50"} <= set(res["latency_ms"])
    assert res["by_category"] and all("strict_recall" in row for row in res["by_category"].values())
