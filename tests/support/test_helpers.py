"""The test helpers themselves: the fake upstream answers like OpenAI and records; pg_url works."""

from __future__ import annotations

import base64
import struct

import httpx
import pytest

from tests.support.upstream import FakeUpstream


def test_fake_upstream_chat_records_and_replies(upstream: FakeUpstream) -> None:
    upstream.reply("scripted")
    r = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "extra": 1},
        headers={"x-test": "yes"},
    )
    assert r.json()["choices"][0]["message"]["content"] == "scripted"
    assert upstream.requests[-1].json["extra"] == 1
    assert upstream.requests[-1].headers["x-test"] == "yes"
    r = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.json()["choices"][0]["message"]["content"] == "You said: hi"


def test_fake_upstream_stream_with_usage(upstream: FakeUpstream) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a b c"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert '"choices":[]' in lines[-2] and '"usage"' in lines[-2]


def test_fake_upstream_scripted_failures(upstream: FakeUpstream) -> None:
    upstream.fail(429, times=2)
    body = {"model": "m", "messages": []}
    assert httpx.post(f"{upstream.base_url}/chat/completions", json=body).status_code == 429
    assert httpx.post(f"{upstream.base_url}/chat/completions", json=body).status_code == 429
    assert httpx.post(f"{upstream.base_url}/chat/completions", json=body).status_code == 200
    upstream.hang(5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{upstream.base_url}/chat/completions", json=body, timeout=0.3)
    assert upstream.wait_for(lambda: upstream.disconnects == ["/v1/chat/completions"])
    upstream.drop()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{upstream.base_url}/chat/completions", json=body)


def test_fake_upstream_embeddings(upstream: FakeUpstream) -> None:
    r = httpx.post(
        f"{upstream.base_url}/embeddings",
        json={"model": "e", "input": ["x", "y"], "encoding_format": "base64"},
    )
    first = r.json()["data"][0]["embedding"]
    floats = struct.unpack("<32f", base64.b64decode(first))
    assert list(floats) == FakeUpstream.vector("x", 32)
    r = httpx.post(f"{upstream.base_url}/embeddings", json={"model": "e", "input": "x", "dimensions": 8})
    assert r.json()["data"][0]["embedding"] == FakeUpstream.vector("x", 8)


def test_pg_url_is_a_fresh_database(pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from pg_tables where schemaname = 'public'")).scalar() == 0
    engine.dispose()
