"""Activation memory: a memory block's KV cache, built once by prefill, stored encrypted, reused by copy.

On disk a cache is a safetensors file (per-layer `layers.<i>.keys` / `layers.<i>.values` tensors;
metadata: token ids, model fingerprint, adapter id, memory ids) sealed with the tenant's data key
(AES-256-GCM, the associated data binding it to tenant, user, model and adapter). Nothing is pickled.
Files live under `<data_dir>/kv/<tenant hash>/<user blind id>/<model fingerprint>-<adapter>.kv`.

A `KVBlock` is immutable by convention: generation never receives its tensors, only a new
`DynamicCache` built from them (`new_cache`), whose first update concatenates into fresh tensors.

Model shapes. Every layer's keys and values are kept for the whole block, sliding-window layers
included (their prefill records the past instead of keeping only the window), so a block's prefix is
a valid cache and `new_cache` rebuilds each layer as the model's config lays it out (a sliding layer
keeps its window and knows how many tokens came before it, which positions and masks depend on).
Grouped-query attention needs nothing special (the cache holds the key/value heads). A model whose
layers keep other state (linear attention, chunked attention, layers sharing another layer's cache)
cannot be served exactly from a key/value prefix: `cache_unsupported` says why, and activation refuses
it rather than serving it inexactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memos.keys.keyring import Keyring
    from memos.local.lora import AdapterHandle
    from memos.local.model_registry import LoadedModel

log = logging.getLogger(__name__)

_FORMAT = "memos-kv-v1"
BASE_ADAPTER = "base"


class PartialKVCache(ValueError):
    """A stored cache that lacks some of its block's tokens (a sliding-window layer's cache written
    before every token was kept): it cannot be extended or reused, only rebuilt."""


# Layer types (transformers' `layer_types`) whose cache is exactly a key/value prefix.
SERVABLE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def cache_unsupported(model_config: Any) -> str | None:
    """Why a stored key/value cache cannot serve this model exactly, or None when it can."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = model_config.get_text_config(decoder=True)
    layer_types, _ = get_layer_types_and_kwargs(text)
    other = sorted(set(layer_types) - SERVABLE_LAYER_TYPES)
    if other:
        return f"its layers of type {', '.join(other)} keep state a key/value prefix cannot hold"
    return None


@dataclass(frozen=True, eq=False)
class KVBlock:
    token_ids: tuple[int, ...]
    model_fingerprint: str
    adapter_id: str  # BASE_ADAPTER when built without a LoRA adapter
    keys: tuple[Any, ...]  # per layer: tensor [batch=1, kv_heads, seq, head_dim]
    values: tuple[Any, ...]
    memory_ids: tuple[str, ...] = ()
    # How many leading tokens this block took from an older cache when it was built (prefill's
    # `reuse`): the rest were computed. Not stored; 0 for a block read from disk.
    reused_tokens: int = 0

    def new_cache(self, model_config: Any) -> Any:
        """A fresh DynamicCache holding copies of this block's keys and values, laid out as the model's
        config says (a sliding-window layer keeps its window and counts the whole block)."""
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=list(zip(self.keys, self.values, strict=True)), config=model_config
        )

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel()) * int(t.element_size()) for t in (*self.keys, *self.values))

    def prefix(self, length: int) -> KVBlock:
        """The cache of the first `length` tokens (views; still never mutated)."""
        return KVBlock(
            self.token_ids[:length],
            self.model_fingerprint,
            self.adapter_id,
            tuple(k[:, :, :length] for k in self.keys),
            tuple(v[:, :, :length] for v in self.values),
        )

    def to_safetensors(self) -> bytes:
        from safetensors.torch import save

        tensors = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            tensors[f"layers.{i}.keys"] = k.detach().to("cpu").contiguous()
            tensors[f"layers.{i}.values"] = v.detach().to("cpu").contiguous()
        metadata = {
            "format": _FORMAT,
            "token_ids": json.dumps(list(self.token_ids)),
            "model_fingerprint": self.model_fingerprint,
            "adapter_id": self.adapter_id,
            "memory_ids": json.dumps(list(self.memory_ids)),
            "layers": str(len(self.keys)),
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_safetensors(cls, data: bytes, device: str = "cpu") -> KVBlock:
        from safetensors.torch import load

        metadata = safetensors_metadata(data)
        if metadata.get("format") != _FORMAT:
            raise ValueError("not a memos KV cache")
        tensors = load(data)
        layers = int(metadata["layers"])
        length = len(json.loads(metadata["token_ids"]))
        if any(tensors[f"layers.{i}.keys"].shape[2] != length for i in range(layers)):
            raise PartialKVCache("a KV cache that does not hold every token of its block")
        return cls(
            token_ids=tuple(json.loads(metadata["token_ids"])),
            model_fingerprint=metadata["model_fingerprint"],
            adapter_id=metadata["adapter_id"],
            keys=tuple(tensors[f"layers.{i}.keys"].to(device) for i in range(layers)),
            values=tuple(tensors[f"layers.{i}.values"].to(device) for i in range(layers)),
            memory_ids=tuple(json.loads(metadata.get("memory_ids", "[]"))),
        )


def safetensors_metadata(data: bytes) -> dict[str, str]:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefill(
    loaded: LoadedModel,
    token_ids: Sequence[int],
    *,
    adapter: AdapterHandle | None = None,
    reuse: KVBlock | None = None,
    memory_ids: Sequence[str] = (),
) -> KVBlock:
    """Blocking: the KV cache of `token_ids`. With `reuse` (an older cache of the same model and
    adapter), the longest common token prefix is kept and only the tokens after it are computed, at
    their positions after it: a block that grew at its end is extended by the appended tokens; one
    that changed (a memory removed or edited) is recomputed from the first changed token."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    from memos.local.lora import select_adapter  # here: lora imports this module

    ids = tuple(token_ids)
    adapter_id = adapter.adapter_id if adapter is not None else BASE_ADAPTER
    if not ids:
        raise ValueError("an empty memory block has no KV cache")
    keep = 0
    if reuse is not None and reuse.model_fingerprint == loaded.fingerprint and reuse.adapter_id == adapter_id:
        keep = common_prefix(reuse.token_ids, ids)
    if keep == len(ids) and reuse is not None:
        base = reuse.prefix(keep)
        return KVBlock(ids, loaded.fingerprint, adapter_id, base.keys, base.values, tuple(memory_ids), keep)
    model = loaded.model
    unsupported = cache_unsupported(model.config)
    if unsupported is not None:
        raise ValueError(f"activation cannot serve this model exactly: {unsupported}")
    with loaded.lock, torch.inference_mode():
        select_adapter(loaded, adapter)
        cache = DynamicCache(config=model.config)
        layers: list[DynamicLayer] = []
        for layer in cache.layers:
            exact = type(layer) in (DynamicLayer, DynamicSlidingWindowLayer)
            if not exact or not isinstance(layer, DynamicLayer):
                raise ValueError(f"the model's {type(layer).__name__} layers hold no plain key/value cache")
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.activate_past_recording()  # keep every token: the block's prefixes stay caches
            layers.append(layer)
        if keep and reuse is not None:
            base = reuse.prefix(keep)
            for layer, k, v in zip(layers, base.keys, base.values, strict=True):
                layer.update(k, v)
        feed = torch.tensor([ids[keep:]], device=loaded.device)
        model(input_ids=feed, past_key_values=cache, use_cache=True, logits_to_keep=1)
        keys: tuple[Any, ...] = tuple(layer.keys for layer in layers)
        values: tuple[Any, ...] = tuple(layer.values for layer in layers)
    if any(k is None or k.shape[2] != len(ids) for k in keys):
        raise ValueError("the model's cache did not keep every token of the block")
    return KVBlock(ids, loaded.fingerprint, adapter_id, keys, values, tuple(memory_ids), keep)


@dataclass(frozen=True)
class KVKey:
    tenant: str
    user: str
    model_fingerprint: str
    adapter_id: str = BASE_ADAPTER

    def aad(self) -> bytes:
        return "\0".join(
            ("memos-kv", self.tenant, self.user, self.model_fingerprint, self.adapter_id)
        ).encode()


def tenant_dir_name(tenant: str) -> str:
    return hashlib.sha256(b"memos-tenant-dir:" + tenant.encode()).hexdigest()[:24]


def user_dir(root: Path, keyring: Keyring, tenant: str, user: str) -> Path:
    """A user's directory: names are hashes (the user's a keyed one), so paths reveal no identities."""
    return root / tenant_dir_name(tenant) / keyring.cipher(tenant).blind("user:" + user)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class KVCacheStore:
    """Encrypted KV caches on disk, one per (tenant, user, model, adapter), with an in-memory LRU.

    Bounds: the LRU holds at most `memory_entries` caches and `memory_bytes` of tensors (a cache larger
    than that is not kept in memory); on disk each tenant's caches take at most `tenant_disk_bytes`
    (None: unbounded), the least recently used files removed first when a save passes it (a cache is
    rebuilt by its next request). Blocking: call off the event loop."""

    def __init__(
        self,
        root: Path,
        keyring: Keyring,
        *,
        memory_entries: int = 16,
        memory_bytes: int | None = None,
        tenant_disk_bytes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self._keyring = keyring
        self._lru: OrderedDict[KVKey, KVBlock] = OrderedDict()
        self._max = memory_entries
        self._max_bytes = memory_bytes
        self._bytes = 0
        self._tenant_disk_bytes = tenant_disk_bytes
        # Each tenant's cache files on disk as of this process's last save or erasure for it (metrics).
        self._disk_seen: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def memory_bytes(self) -> int:
        """Bytes of cache tensors held in memory now."""
        with self._lock:
            return self._bytes

    @property
    def memory_limit_bytes(self) -> int | None:
        return self._max_bytes

    @property
    def tenant_disk_limit_bytes(self) -> int | None:
        return self._tenant_disk_bytes

    def disk_bytes_seen(self) -> dict[str, int]:
        """tenant -> bytes of its cache files on disk, as of this process's last save or erasure of
        that tenant's caches (no directory is walked here: metrics read it at each scrape)."""
        with self._lock:
            return dict(self._disk_seen)

    def _note_disk(self, tenant: str) -> None:
        used = self.tenant_disk_bytes(tenant)
        with self._lock:
            self._disk_seen[tenant] = used

    def tenant_disk_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's cache files on disk (blocking)."""
        return sum(size for _, size, _ in self._tenant_files(tenant))

    def _tenant_files(self, tenant: str) -> list[tuple[float, int, Path]]:
        directory = self.root / tenant_dir_name(tenant)
        files = []
        for path in directory.rglob("*.kv") if directory.exists() else ():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed meanwhile
            files.append((st.st_mtime, st.st_size, path))
        return files

    def _enforce_quota(self, tenant: str, keep: Path) -> None:
        """Remove the tenant's least recently used cache files until they fit the quota; the file just
        written goes last, only when it alone is over."""
        if self._tenant_disk_bytes is None:
            return
        files = self._tenant_files(tenant)
        total = sum(size for _, size, _ in files)
        files.sort(key=lambda f: (f[2] == keep, f[0]))
        for _, size, path in files:
            if total <= self._tenant_disk_bytes:
                return
            path.unlink(missing_ok=True)
            total -= size
            log.info("a KV cache file was removed: the tenant's caches passed their disk quota")

    def path(self, key: KVKey) -> Path:
        return user_dir(self.root, self._keyring, key.tenant, key.user) / (
            f"{key.model_fingerprint}-{key.adapter_id}.kv"
        )

    def save(self, key: KVKey, block: KVBlock) -> Path:
        if block.model_fingerprint != key.model_fingerprint or block.adapter_id != key.adapter_id:
            raise ValueError("the block does not belong under this key")
        sealed = self._keyring.cipher(key.tenant).encrypt(block.to_safetensors(), key.aad())
        path = self.path(key)
        write_atomic(path, sealed)
        self._enforce_quota(key.tenant, path)
        self._note_disk(key.tenant)
        self._remember(key, block)
        return path

    def load(self, key: KVKey, device: str = "cpu") -> KVBlock | None:
        path = self.path(key)
        with self._lock:
            block = self._lru.get(key)
            if block is not None:
                self._lru.move_to_end(key)
        if self._tenant_disk_bytes is not None:
            with contextlib.suppress(FileNotFoundError):  # removed (quota, erasure) meanwhile
                os.utime(path)  # used now: the quota removes the least recently used first
        if block is not None:
            return block
        if not path.exists():
            return None
        data = self._keyring.cipher(key.tenant).decrypt(path.read_bytes(), key.aad())
        try:
            block = KVBlock.from_safetensors(data, device)
        except PartialKVCache:
            log.info("a stored KV cache of an older layout was dropped; it is rebuilt on next use")
            path.unlink(missing_ok=True)
            return None
        self._remember(key, block)
        return block

    def peek(self, key: KVKey) -> KVBlock | None:
        """The cached block if it is in memory (no disk access, never blocks long)."""
        with self._lock:
            return self._lru.get(key)

    def delete(self, key: KVKey) -> None:
        with self._lock:
            self._forget(key)
        self.path(key).unlink(missing_ok=True)

    def erase_user(self, tenant: str, owner: str) -> int:
        """UserDataEraser: every cache of the user, on disk and in memory. Returns files removed."""
        with self._lock:
            for key in [k for k in self._lru if k.tenant == tenant and k.user == owner]:
                self._forget(key)
        directory = user_dir(self.root, self._keyring, tenant, owner)
        count = sum(1 for _ in directory.glob("*.kv")) if directory.exists() else 0
        shutil.rmtree(directory, ignore_errors=True)
        self._note_disk(tenant)
        return count

    def _forget(self, key: KVKey) -> None:
        old = self._lru.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes

    def _remember(self, key: KVKey, block: KVBlock) -> None:
        with self._lock:
            self._forget(key)
            if self._max_bytes is not None and block.nbytes > self._max_bytes:
                return  # larger than the whole budget: served from disk each time
            self._lru[key] = block
            self._bytes += block.nbytes
            while len(self._lru) > self._max or (
                self._max_bytes is not None and self._bytes > self._max_bytes
            ):
                self._forget(next(iter(self._lru)))
