"""The litellm adapter, chosen by model prefix, against the fake upstream as an OpenAI-compatible provider.

litellm is heavy; this is the only test that imports it (the request path never does by default).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import openai
import pytest

from memos.governance.policy import Policy, UpstreamPolicy
from proxy.services import DefaultPolicies
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream


def test_litellm_is_not_imported_by_the_app() -> None:
    heavy = "('litellm', 'torch', 'transformers')"
    code = f"import sys, proxy.app, proxy.cli; sys.exit(int(any(m in sys.modules for m in {heavy})))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_chat_through_litellm(
    proxy: Callable[..., RunningProxy], upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_PROVIDER_KEY", "sk-provider")

    def configure(services) -> None:  # type: ignore[no-untyped-def]
        policy = Policy(upstream=UpstreamPolicy(base_url=upstream.base_url, api_key_env="ACME_PROVIDER_KEY"))
        services.policies = DefaultPolicies({"acme": policy})

    running = proxy(configure, litellm_model_prefixes=["openai/"])
    client = openai.OpenAI(base_url=running.base_url, api_key=running.create_key(), max_retries=0)
    completion = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "via litellm"}]
    )
    assert completion.choices[0].message.content == "You said: via litellm"
    sent = upstream.requests[-1]
    assert sent.json["model"] == "gpt-4o-mini"  # litellm strips its provider prefix
    assert sent.headers["authorization"] == "Bearer sk-provider"

    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "streamed"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: streamed"

    upstream.fail(429)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
