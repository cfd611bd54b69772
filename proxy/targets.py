"""Where a tenant's calls go and with which key: settings, then the tenant policy, then pass-through.

- base URL: the policy's `upstream.base_url`, else the adapter's default (MEMOS_UPSTREAM_BASE_URL for
  the HTTP passthrough, the provider's own endpoint for litellm).
- key: the client's own key in pass-through mode; else the variable the policy names
  (`upstream.api_key_env`); else MEMOS_UPSTREAM_API_KEY, which only ever goes to the HTTP passthrough
  (never to a litellm provider, which reads its own provider key).
- models: `upstream.allowed_models` (shell-style patterns) limits what a tenant may call (403) and
  what /v1/models lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from memos import Policy
from proxy.auth import Caller
from proxy.errors import ApiError, forbidden
from proxy.settings import Settings, secret_from_env
from proxy.upstream.base import UpstreamTarget
from proxy.upstream.router import UpstreamKind

# Client headers sent on in pass-through mode (they belong to the client's own upstream account).
PASSTHROUGH_HEADERS = ("openai-organization", "openai-project", "openai-beta")


def model_allowed(policy: Policy, model: str) -> bool:
    allowed = policy.upstream.allowed_models
    return allowed is None or any(fnmatchcase(model, pattern) for pattern in allowed)


def check_model_allowed(policy: Policy, model: str) -> None:
    if not model_allowed(policy, model):
        raise forbidden(f"The model `{model}` is not allowed for this tenant.", code="model_not_allowed")


def upstream_target(
    settings: Settings, caller: Caller, kind: UpstreamKind, client_headers: Mapping[str, str] | None = None
) -> UpstreamTarget:
    if kind is UpstreamKind.LOCAL:
        return UpstreamTarget(base_url=None)
    policy = caller.policy.upstream
    headers: dict[str, str] = {}
    if caller.upstream_key is not None:
        key: str | None = caller.upstream_key
        if client_headers:
            headers = {k: v for k, v in client_headers.items() if k in PASSTHROUGH_HEADERS}
    elif policy.api_key_env:
        key = secret_from_env(policy.api_key_env)
        if key is None:
            raise ApiError(
                500,
                "The upstream key of this tenant is not configured on the proxy.",
                type="server_error",
                code="upstream_key_missing",
            )
    elif kind is UpstreamKind.HTTP and settings.upstream_api_key is not None:
        key = settings.upstream_api_key.get_secret_value()
    else:
        key = None
    return UpstreamTarget(base_url=policy.base_url, api_key=key, headers=headers)
