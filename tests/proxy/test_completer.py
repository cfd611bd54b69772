"""UpstreamCompleter: the extractor model's calls go through the upstream router like a client's."""

from __future__ import annotations

import pytest

from proxy.upstream.completer import UpstreamCompleter, default_target
from proxy.upstream.http import HttpUpstream
from proxy.upstream.router import UnknownModel, UpstreamKind, UpstreamRouter
from tests.support.upstream import FakeUpstream


@pytest.fixture
async def router(upstream: FakeUpstream):
    router = UpstreamRouter(HttpUpstream(upstream.base_url))
    yield router
    await router.aclose()


async def test_complete_returns_the_text_of_a_deterministic_call(upstream: FakeUpstream, router) -> None:
    upstream.replies.append('{"facts": []}')
    completer = UpstreamCompleter(router, default_target("sk-proxy"))
    text = await completer.complete("extractor", [{"role": "user", "content": "extract"}])
    assert text == '{"facts": []}'
    [request] = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    body = request.json
    assert body["model"] == "extractor" and body["temperature"] == 0 and not body.get("stream")
    assert body["messages"] == [{"role": "user", "content": "extract"}]
    assert request.headers["authorization"] == "Bearer sk-proxy"
    assert request.headers["x-request-id"].startswith("memos-extract-")


async def test_upstream_errors_are_raised(upstream: FakeUpstream, router) -> None:
    upstream.fail(status=500)
    with pytest.raises(Exception, match="500"):
        await UpstreamCompleter(router, default_target(None)).complete(
            "m", [{"role": "user", "content": "x"}]
        )


async def test_an_unconfigured_local_model_is_refused(router) -> None:
    with pytest.raises(UnknownModel):
        await UpstreamCompleter(router, default_target(None)).complete("local/tiny", [])


def test_the_proxy_key_only_goes_to_the_http_passthrough() -> None:
    target = default_target("sk-proxy")
    assert target(UpstreamKind.HTTP).api_key == "sk-proxy"
    assert target(UpstreamKind.LITELLM).api_key is None
