"""Local models named in settings (`MEMOS_LOCAL_MODELS`: name -> Hugging Face model directory).

A model is loaded on first use, off the event loop, and kept: its weights, tokenizer, a fingerprint
of its files (what KV caches and adapters are keyed by) and a lock. The lock serialises the forward
passes of one model, because which LoRA adapter is active is state of the shared base model.
Nothing here imports torch until a model is actually loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import NotFound

if TYPE_CHECKING:
    import torch

LOCAL_PREFIX = "local/"
_EDGE_BYTES = 1 << 20  # bytes hashed at each end of a weight file


class UnknownLocalModel(NotFound, KeyError):
    """The name is not in the configured local models."""


def model_fingerprint(path: Path) -> str:
    """A stable id of a model's files: config, tokenizer, and each weight file's size and ends.

    Hashing whole multi-gigabyte weight files at start-up would cost minutes; the safetensors header
    (tensor names, shapes, offsets) sits at the start of each file and any retrained weights change
    its first and last megabyte, so size plus both ends tell models apart in practice.
    """
    digest = hashlib.sha256(b"memos-model-fingerprint-v1")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        file = path / name
        if file.exists():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_EDGE_BYTES))
            if size > _EDGE_BYTES:
                handle.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:24]


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any  # a fast tokenizer with a chat template
    fingerprint: str
    device: str
    dtype: Any  # torch.dtype
    # Held for every forward pass (generation, prefill, adapter load/switch).
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Adapter ids currently injected into `model` (least recently used first), managed by memos.local.lora.
    loaded_adapters: list[str] = field(default_factory=list)
    # The adapter being trained on `model`'s own weights (memos.local.lora.train_on_served), if any:
    # never evicted with the served ones, and deactivated by every select_adapter.
    training_adapter: str | None = None
    train_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return ids


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """fp32 on CPU (exact and fast enough for small models), bf16 on GPU, unless told otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_model(name: str, path: Path, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Blocking: load weights and tokenizer from a local directory (never from the network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"local model {name!r}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    model.to(resolved_device)  # type: ignore[arg-type]  # transformers' wrapper of .to loses `self`
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        name=name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        fingerprint=model_fingerprint(path),
        device=resolved_device,
        dtype=torch_dtype,
    )


class LocalModelRegistry:
    """The configured local models; each is loaded once, lazily, by whichever caller needs it first."""

    def __init__(
        self,
        models: Mapping[str, Path],
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
    ) -> None:
        self._paths = {name: Path(path) for name, path in models.items()}
        self._device = device
        self._dtype = dtype
        self._threads = threads
        self._loaded: dict[str, LoadedModel] = {}
        self._fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        """Where models load ("auto" resolved: this imports torch)."""
        return resolve_device(self._device)

    def names(self) -> list[str]:
        return sorted(self._paths)

    def resolve(self, model: str) -> str | None:
        """`local/<name>` -> `<name>` when configured, else None."""
        if not model.startswith(LOCAL_PREFIX):
            return None
        name = model[len(LOCAL_PREFIX) :]
        return name if name in self._paths else None

    def name_of(self, model: str) -> str:
        """The configured name for `local/<name>` or `<name>`; UnknownLocalModel otherwise."""
        name = model[len(LOCAL_PREFIX) :] if model.startswith(LOCAL_PREFIX) else model
        if name not in self._paths:
            raise UnknownLocalModel(model)
        return name

    def path(self, name: str) -> Path:
        try:
            return self._paths[name]
        except KeyError:
            raise UnknownLocalModel(name) from None

    def fingerprint(self, name: str) -> str:
        """The model's fingerprint without loading its weights (blocking: reads files)."""
        if name in self._loaded:
            return self._loaded[name].fingerprint
        if name not in self._fingerprints:
            self._fingerprints[name] = model_fingerprint(self.path(name))
        return self._fingerprints[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def load(self, name: str) -> LoadedModel:
        """Blocking: the shared loaded model (loading it on first call)."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        path = self.path(name)
        with self._lock:
            if name not in self._loaded:
                if self._threads:
                    import torch

                    torch.set_num_threads(self._threads)
                self._loaded[name] = load_model(name, path, device=self._device, dtype=self._dtype)
            return self._loaded[name]

    def load_private_copy(self, name: str, *, dtype: str | None = None) -> LoadedModel:
        """Blocking: a fresh copy of the model that nobody else uses (tests and benchmarks; serving
        trains on the loaded model itself, memos.local.lora.train_on_served)."""
        return load_model(name, self.path(name), device=self._device, dtype=dtype or self._dtype)

    async def get(self, name: str) -> LoadedModel:
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        return await asyncio.to_thread(self.load, name)
