"""Every setting of the process, read in one place (environment `MEMOS_*`, optional file)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# What a browser sends as Origin: scheme://host[:port] (https://app.example, chrome-extension://id).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.IGNORECASE)


class Settings(BaseSettings):
    """Process settings. Per-tenant behaviour lives in policies, not here."""

    model_config = SettingsConfigDict(env_prefix="MEMOS_", extra="ignore")

    # An optional YAML file with the same keys (lower case, no prefix); the environment wins over it.
    config_file: Path | None = None

    data_dir: Path = Path("memos-data")
    database_url: str | None = None
    vector_uri: str | None = None
    master_key: SecretStr | None = None
    policy_dir: Path | None = None

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    # CORS (proxy/cors.py). Browser origins allowed to call the proxy, comma-separated or a JSON list
    # (`https://app.example,http://localhost:5173`, `*`); empty: CORS off (no preflight answered). A
    # tenant's policy may narrow the origins its keys are used from (`cors.allowed_origins`). Keys
    # travel as Bearer headers; credentials (cookies, HTTP auth) are allowed only when asked for, and
    # never with `*`.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GET", "POST", "PATCH", "DELETE"]
    )
    # "*": whatever the preflight asks for (Authorization, X-Memos-*, the SDKs' x-stainless-*, ...).
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    cors_allow_credentials: bool = False
    cors_max_age_s: int = Field(default=600, ge=0, le=86_400)
    log_level: str = "info"
    access_log: bool = False  # uvicorn's access log (method, path, status; never bodies)
    # How long a resolved API key is trusted without asking the database again. A key revoked by
    # another process (the CLI, another replica) stops working within this many seconds.
    key_cache_ttl_s: float = 2.0
    # Failed authentication (proxy.auth_limits): per window, an address may fail this many checks
    # before it is answered 429 (one more per window/limit seconds after), and a key id this many
    # over all addresses before guesses at it back off; 0 turns a limit off. Each table of the
    # limiter holds at most auth_limiter_entries. Failures are audited once per window per
    # (key id, address).
    auth_failure_window_s: float = Field(default=60.0, gt=0.0)
    auth_failures_per_address: int = Field(default=10, ge=0)
    auth_failures_per_key: int = Field(default=20, ge=0)
    auth_limiter_entries: int = Field(default=100_000, ge=1)

    upstream_base_url: str = "https://api.openai.com/v1"
    upstream_api_key: SecretStr | None = None
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    upstream_max_connections: int = 512
    # Idle pooled upstream connections are dropped after this long: below the 5 s after which
    # uvicorn, Node.js and Apache close them on their side (a close racing a reuse fails the call;
    # see proxy.upstream.aiohttp_transport). Raise it for upstreams known to keep them longer.
    upstream_keepalive_s: float = Field(default=4.0, gt=0.0)
    # Model prefixes served through the litellm adapter (providers that are not OpenAI-compatible).
    litellm_model_prefixes: list[str] = Field(
        default_factory=lambda: ["anthropic/", "gemini/", "vertex_ai/", "bedrock/", "cohere/", "ollama/"]
    )

    # Embeddings: "minilm" (the bundled all-MiniLM-L6-v2) or "upstream:<model>".
    embedding_model: str = "minilm"

    # Injection under load (memos/pools.py, memos/chat/memory.py): threads for the blocking phases of a
    # search; at most `memory_max_inflight` chats retrieve at once, and a chat whose retrieval has not
    # finished `memory_recall_timeout_ms` after it began is answered without memory, saying so
    # (x-memos-memory-reason: overloaded), rather than queueing for seconds. A limit of 0 sheds every
    # memory read (a drill of the overload path: clients and dashboards see what overload looks like).
    memory_recall_threads: int = Field(default=4, ge=1, le=64)
    memory_max_inflight: int = Field(default=256, ge=0)
    memory_recall_timeout_ms: float = Field(default=2000.0, gt=0.0)
    # Decoded search candidates kept in memory, across owners (memos/storage/row_cache.py); 0: none.
    memory_row_cache_rows: int = Field(default=50_000, ge=0)
    # Users' vectors kept in memory for dense search, across users (memos/storage/vectors.py), in MB:
    # a user whose vectors do not fit is searched in LanceDB (slower). A million 384-dim memories of
    # one user take ~1.6 GB with their codes.
    memory_vector_cache_mb: int = Field(default=2048, ge=0)

    # name -> local Hugging Face model directory, served as model "local/<name>".
    local_models: dict[str, Path] = Field(default_factory=dict)
    # Local runtime: "auto" is cuda when available, else cpu; dtype "auto" is bf16 on GPU, fp32 on CPU.
    local_device: str = "auto"
    local_dtype: str = "auto"
    # The MemScheduler's background pass (promote/demote/archive, KV rebuilds, LoRA training).
    scheduler_interval_s: float = 60.0
    # Local memory's bounds: KV caches and decrypted adapters kept in memory (LRU), and each tenant's
    # KV cache files on disk (least recently used removed first; 0: unbounded).
    local_kv_memory_mb: int = Field(default=1024, ge=0)
    local_adapter_memory_mb: int = Field(default=256, ge=0)
    local_kv_disk_mb_per_tenant: int = Field(default=0, ge=0)
    # Chats memory skipped (x-memos-memory-reason) are audited as one memory.skipped entry per tenant
    # this often, with counts by reason (memos.chat.skip_audit).
    memory_skip_audit_interval_s: float = Field(default=60.0, gt=0.0)

    # Outbox worker.
    worker_enabled: bool = True
    worker_poll_interval_s: float = 0.2
    # After a chat commits its exchange, the worker claims once no other came for 25 ms, at the latest
    # this long after the first: chats that keep coming are written back as one batch (one claim,
    # embedding call, audit pass and acknowledgement). 0: claim at once.
    worker_batch_window_ms: float = Field(default=250.0, ge=0.0, le=10_000.0)

    # Chats of fail-open tenants whose outbox commit failed (full disk, lost database) wait in memory,
    # at most this many (and this many MiB of payload), until storage takes writes again; an exchange
    # that finds the queue full is lost, counted and logged (memos/writeback/write_retry.py).
    write_retry_capacity: int = Field(default=10_000, ge=1)
    write_retry_capacity_mb: int = Field(default=256, ge=1)
    # /readyz turns red when the oldest exchange in the outbox has waited longer than this (write-back
    # stalled: no worker, or one that cannot keep up).
    ready_outbox_max_age_s: float = Field(default=300.0, ge=0.0)
    # When set, GET /metrics needs `Authorization: Bearer <this token>` (Prometheus' bearer_token).
    metrics_token: SecretStr | None = None
    # How tenants appear in metric labels: "hash" (an opaque id, `t_` and a keyed hash of the name; the
    # key is derived from the master key, so every replica labels a tenant alike), "name", or "off"
    # (an empty label value).
    metrics_tenant_label: Literal["name", "hash", "off"] = "hash"

    @field_validator("cors_origins", "cors_allow_methods", "cors_allow_headers", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        """A JSON list, or comma-separated names (the environment's spelling)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], no path or trailing slash, or *"
                )
        return value

    @field_validator("cors_allow_credentials")
    @classmethod
    def _no_credentials_for_every_origin(cls, value: bool, info: ValidationInfo) -> bool:
        # A field validator (not the model's): its error quotes this value only, never other settings.
        if value and "*" in info.data.get("cors_origins", []):
            raise ValueError("cors_allow_credentials needs cors_origins to name the origins, not *")
        return value

    @field_validator("local_models", mode="before")
    @classmethod
    def _parse_local_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings, env_settings)
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'memos.db').resolve()}"

    @property
    def resolved_vector_uri(self) -> str:
        return self.vector_uri or str((self.data_dir / "vectors").resolve())

    @property
    def resolved_policy_dir(self) -> Path:
        return self.policy_dir or (self.data_dir / "policies")


def secret_from_env(name: str) -> str | None:
    """The value of an environment variable a tenant policy names (`upstream.api_key_env`).

    Policies name the variable, never the secret; this is the one place such names are looked up.
    """
    value = os.environ.get(name)
    return value or None


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("config_file")
        if value:
            return Path(value)
    return None
