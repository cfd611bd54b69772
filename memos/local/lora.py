"""Parametric memory: a LoRA adapter per user and model, trained with peft on the user's stable memories.

Training runs on the served model's own weights (`train_on_served`; no second copy in memory): a
training adapter is added to the shared model and only its weights learn. Each phase (the loss
before, every optimizer step, the loss after) holds the model's lock and activates the training
adapter itself, and serving's `select_adapter` deactivates it (`LoadedModel.training_adapter`), so
requests keep being answered between steps, never through a half-trained adapter; the training adapter
is deleted at the end. The new adapter is served once its pointer file is replaced (atomically) by
AdapterStore.save. `train_adapter` is the same loop on a model nobody serves. Adapters are stored as
a safetensors file sealed with the tenant's data key, under
`<data_dir>/adapters/<tenant hash>/<user blind id>/<model fingerprint>/`.

Serving: adapters are injected into the shared, already loaded base model by name (transformers' peft
integration: `add_adapter` + `set_peft_model_state_dict`), at most `MAX_LOADED` per model (least
recently used evicted with `delete_adapter`), and `select_adapter` activates one, or none, before each
forward pass, under the model's lock. The base model is never reloaded.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.local.kvcache import safetensors_metadata, user_dir, write_atomic

if TYPE_CHECKING:
    import torch

    from memos.keys.keyring import Keyring
    from memos.local.model_registry import LoadedModel

MAX_LOADED = 8
TRAINING_QUESTION = "What do you remember about me?"
_FORMAT = "memos-lora-v1"


@dataclass(frozen=True)
class LoraTraining:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-3
    steps: int = 60
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0


@dataclass
class TrainedAdapter:
    state_dict: dict[str, Any]  # peft state dict, adapter name removed, CPU tensors
    lora_config: dict[str, Any]
    base_loss: float
    adapter_loss: float
    steps: int
    seconds: float


@dataclass(frozen=True)
class AdapterMeta:
    adapter_id: str
    model_fingerprint: str
    memory_ids: tuple[str, ...]
    created_at: str
    base_loss: float
    adapter_loss: float
    steps: int


@dataclass(frozen=True, eq=False)
class AdapterHandle:
    """A user's adapter as a request carries it: its id and how to get its weights when not loaded."""

    adapter_id: str
    store: AdapterStore = field(repr=False)
    tenant: str = field(repr=False)
    user: str = field(repr=False)
    model_fingerprint: str = ""
    memory_ids: tuple[str, ...] = ()  # what it learned

    def weights(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.store.load_weights(self.tenant, self.user, self.model_fingerprint, self.adapter_id)


# ----------------------------------------------------------------------------------------- training


def training_examples(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per memory: the chat template's question/answer with the memory as the answer.
    Only the answer's tokens are learned (the prompt is masked out with -100)."""
    examples = []
    for text in texts:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": TRAINING_QUESTION}], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": TRAINING_QUESTION}, {"role": "assistant", "content": text}],
            tokenize=False,
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]
        examples.append((ids, labels))
    return examples


def _batches(
    examples: list[tuple[list[int], list[int]]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), labels.to(device), mask.to(device)


def memory_loss(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 16
) -> float:
    """Mean cross-entropy of the memories' tokens (as answers to TRAINING_QUESTION) under `model`."""
    import torch

    examples = training_examples(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            input_ids, labels, mask = _batches(chunk, pad, str(model.device))
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="sum"
            )
            total += float(losses)
            count += int((shift_labels != -100).sum())
    return total / max(count, 1)


TRAINING_ADAPTER = "memos_train"


def train_adapter(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    cfg: LoraTraining | None = None,
    *,
    phase: Callable[[bool], AbstractContextManager[None]] | None = None,
) -> TrainedAdapter:
    """Blocking: train a LoRA adapter on `texts` into `model` (a private copy, unless `phase` guards
    each phase: `phase(True)` for those that run through the training adapter, `phase(False)` for the
    base model's loss; see train_on_served). The training adapter is left in `model`."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    cfg = cfg or LoraTraining()
    if not texts:
        raise ValueError("no memories to train on")
    guard = phase or (lambda _through_adapter: nullcontext())
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    with guard(False):
        base_loss = memory_loss(model, tokenizer, texts, max_length=cfg.max_length)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    name = TRAINING_ADAPTER
    with guard(True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # served adapters
        model.add_adapter(lora, adapter_name=name)
        model.set_adapter(name)
        model.enable_adapters()
        params = [p for n, p in model.named_parameters() if "lora_" in n and f".{name}." in n]
        for p in params:
            p.data = p.data.float()  # train adapter weights in fp32 even on a bf16 base
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    examples = training_examples(tokenizer, texts, cfg.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        order = torch.randperm(len(examples), generator=generator)[: cfg.batch_size].tolist()
        input_ids, labels, mask = _batches([examples[i] for i in order], pad, str(model.device))
        with guard(True):
            model.train()
            try:
                with torch.autocast(
                    device_type=str(model.device).split(":")[0],
                    enabled=model.dtype != torch.float32,
                    dtype=model.dtype,
                ):
                    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            finally:
                model.eval()
    with guard(True):
        adapter_loss = memory_loss(model, tokenizer, texts, max_length=cfg.max_length)
        state = get_peft_model_state_dict(model, adapter_name=name)
        state = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    config = lora.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    config["peft_type"] = str(
        config["peft_type"].value if hasattr(config["peft_type"], "value") else config["peft_type"]
    )
    config["task_type"] = str(
        config["task_type"].value if hasattr(config["task_type"], "value") else config["task_type"]
    )
    return TrainedAdapter(state, config, base_loss, adapter_loss, cfg.steps, time.perf_counter() - started)


def train_on_served(
    loaded: LoadedModel, texts: Sequence[str], cfg: LoraTraining | None = None
) -> TrainedAdapter:
    """Blocking: train a LoRA adapter on the served model's own weights (see the module docstring):
    each phase under the model's lock, the training adapter active only inside it; removed at the end.
    """
    with loaded.train_lock:  # one training at a time per model (the next one waits)
        return _train_on_served(loaded, texts, cfg)


def _train_on_served(loaded: LoadedModel, texts: Sequence[str], cfg: LoraTraining | None) -> TrainedAdapter:
    import torch

    model = loaded.model

    @contextmanager
    def phase(through_adapter: bool) -> Iterator[None]:
        with loaded.lock, torch.inference_mode(False):
            if through_adapter and loaded.training_adapter is not None:
                from peft.tuners.tuners_utils import set_adapter

                model.enable_adapters()
                set_adapter(model, TRAINING_ADAPTER, inference_mode=False)
            elif getattr(model, "_hf_peft_config_loaded", False):
                model.disable_adapters()
            loaded.training_adapter = TRAINING_ADAPTER if through_adapter else loaded.training_adapter
            yield

    try:
        return train_adapter(model, loaded.tokenizer, texts, cfg, phase=phase)
    finally:
        with loaded.lock:
            if loaded.training_adapter is not None:
                loaded.training_adapter = None
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                    model.delete_adapter(TRAINING_ADAPTER)
            if getattr(model, "_hf_peft_config_loaded", False) and loaded.loaded_adapters:
                model.disable_adapters()  # the next request's select_adapter picks what it needs
            model.eval()
            model.requires_grad_(False)


# ------------------------------------------------------------------------------------------ serving


def select_adapter(loaded: LoadedModel, adapter: AdapterHandle | None) -> None:
    """Make `adapter` (or no adapter) the active one on the shared model. Call with `loaded.lock` held."""
    model = loaded.model
    if adapter is None:
        if loaded.loaded_adapters or loaded.training_adapter is not None:
            model.disable_adapters()
        return
    name = adapter.adapter_id
    if name in loaded.loaded_adapters:
        loaded.loaded_adapters.remove(name)
    else:
        _inject(loaded, name, *adapter.weights())
    loaded.loaded_adapters.append(name)
    from peft.tuners.tuners_utils import set_adapter

    model.enable_adapters()
    set_adapter(model, name, inference_mode=True)  # inference_mode: its weights stay frozen
    while len(loaded.loaded_adapters) > MAX_LOADED:
        model.delete_adapter(loaded.loaded_adapters.pop(0))  # least recently used; never the active one


def unload_adapters(loaded: LoadedModel, adapter_ids: Sequence[str]) -> None:
    """Remove these adapters' weights from a loaded model (after the user's erasure)."""
    with loaded.lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        for name in adapter_ids:
            if name in loaded.loaded_adapters:
                loaded.loaded_adapters.remove(name)
                loaded.model.delete_adapter(name)


def _inject(loaded: LoadedModel, name: str, state_dict: dict[str, Any], config: dict[str, Any]) -> None:
    import torch
    from peft import LoraConfig, set_peft_model_state_dict

    cfg = {k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
    cfg["inference_mode"] = True
    # Outside inference mode: adapter weights made as inference tensors could never be switched again.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several: intended
        loaded.model.add_adapter(LoraConfig(**cfg), adapter_name=name)
        tensors = {k: v.to(device=loaded.device, dtype=loaded.dtype) for k, v in state_dict.items()}
        result = set_peft_model_state_dict(loaded.model, tensors, adapter_name=name)
    missing_keys: list[str] = result.missing_keys  # type: ignore[attr-defined]  # peft: a bare "namedtuple"
    missing = [k for k in missing_keys if "lora_" in k and f".{name}." in k]
    if missing:
        loaded.model.delete_adapter(name)
        raise ValueError(f"adapter {name} does not fit this model ({len(missing)} missing weights)")
    loaded.model.requires_grad_(False)


# -------------------------------------------------------------------------------------------- store


class AdapterStore:
    """Encrypted adapters on disk; the latest one per (tenant, user, model) is the one served.

    Decrypted weights are kept in an LRU of at most `memory_bytes` (None: unbounded); an adapter
    larger than that is read from disk each time it is injected."""

    def __init__(self, root: Path, keyring: Keyring, *, memory_bytes: int | None = None) -> None:
        self.root = Path(root)
        self._keyring = keyring
        self._lock = threading.Lock()
        self._weights: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._weight_bytes: dict[str, int] = {}
        self._max_bytes = memory_bytes
        # (tenant, user, fingerprint) -> (the pointer file's (mtime, size), its meta)
        self._latest: dict[tuple[str, str, str], tuple[tuple[int, int] | None, AdapterMeta | None]] = {}

    def _dir(self, tenant: str, user: str, fingerprint: str) -> Path:
        return user_dir(self.root, self._keyring, tenant, user) / fingerprint

    @staticmethod
    def _aad(tenant: str, user: str, fingerprint: str, what: str) -> bytes:
        return "\0".join(("memos-lora", tenant, user, fingerprint, what)).encode()

    def save(
        self, tenant: str, user: str, fingerprint: str, trained: TrainedAdapter, memory_ids: Sequence[str]
    ) -> AdapterMeta:
        from safetensors.torch import save

        adapter_id = "a" + secrets.token_hex(8)
        meta = AdapterMeta(
            adapter_id=adapter_id,
            model_fingerprint=fingerprint,
            memory_ids=tuple(memory_ids),
            created_at=datetime.now(UTC).isoformat(),
            base_loss=trained.base_loss,
            adapter_loss=trained.adapter_loss,
            steps=trained.steps,
        )
        blob = save(
            trained.state_dict,
            metadata={
                "format": _FORMAT,
                "lora_config": json.dumps(trained.lora_config),
                "adapter_id": adapter_id,
            },
        )
        cipher = self._keyring.cipher(tenant)
        directory = self._dir(tenant, user, fingerprint)
        write_atomic(
            directory / f"{adapter_id}.lora",
            cipher.encrypt(blob, self._aad(tenant, user, fingerprint, adapter_id)),
        )
        latest = json.dumps(asdict(meta)).encode()
        write_atomic(
            directory / "latest", cipher.encrypt(latest, self._aad(tenant, user, fingerprint, "latest"))
        )
        for old in directory.glob("*.lora"):
            if old.stem != adapter_id:
                old.unlink(missing_ok=True)
        return meta

    def latest(self, tenant: str, user: str, fingerprint: str) -> AdapterMeta | None:
        """The adapter to serve, re-read when its pointer file changed (e.g. `memory train` ran in
        another process)."""
        key = (tenant, user, fingerprint)
        path = self._dir(tenant, user, fingerprint) / "latest"
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            cached = self._latest.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        meta = None
        if stamp is not None:
            aad = self._aad(tenant, user, fingerprint, "latest")
            data = json.loads(self._keyring.cipher(tenant).decrypt(path.read_bytes(), aad))
            data["memory_ids"] = tuple(data["memory_ids"])
            meta = AdapterMeta(**data)
        with self._lock:
            self._latest[key] = (stamp, meta)
        return meta

    def handle(self, tenant: str, user: str, fingerprint: str) -> AdapterHandle | None:
        meta = self.latest(tenant, user, fingerprint)
        if meta is None:
            return None
        return AdapterHandle(meta.adapter_id, self, tenant, user, fingerprint, meta.memory_ids)

    def load_weights(
        self, tenant: str, user: str, fingerprint: str, adapter_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        with self._lock:
            if adapter_id in self._weights:
                self._weights.move_to_end(adapter_id)
                return self._weights[adapter_id]
        from safetensors.torch import load

        path = self._dir(tenant, user, fingerprint) / f"{adapter_id}.lora"
        blob = self._keyring.cipher(tenant).decrypt(
            path.read_bytes(), self._aad(tenant, user, fingerprint, adapter_id)
        )
        metadata = safetensors_metadata(blob)
        if metadata.get("format") != _FORMAT:
            raise ValueError("not a memos adapter")
        weights = (load(blob), json.loads(metadata["lora_config"]))
        size = sum(int(t.numel()) * int(t.element_size()) for t in weights[0].values())
        with self._lock:
            if self._max_bytes is None or size <= self._max_bytes:
                self._weights[adapter_id] = weights
                self._weight_bytes[adapter_id] = size
                while self._max_bytes is not None and sum(self._weight_bytes.values()) > self._max_bytes:
                    evicted, _ = self._weights.popitem(last=False)
                    del self._weight_bytes[evicted]
        return weights

    @property
    def memory_limit_bytes(self) -> int | None:
        return self._max_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes of decrypted adapter weights held in memory now."""
        with self._lock:
            return sum(self._weight_bytes.values())

    def adapter_ids(self, tenant: str, owner: str) -> list[str]:
        directory = user_dir(self.root, self._keyring, tenant, owner)
        return sorted(p.stem for p in directory.rglob("*.lora")) if directory.exists() else []

    def erase_user(self, tenant: str, owner: str) -> int:
        """UserDataEraser: every adapter of the user. Returns files removed."""
        with self._lock:
            for key in [k for k in self._latest if k[0] == tenant and k[1] == owner]:
                del self._latest[key]
            self._weights.clear()
            self._weight_bytes.clear()
        directory = user_dir(self.root, self._keyring, tenant, owner)
        count = sum(1 for _ in directory.rglob("*.lora")) if directory.exists() else 0
        shutil.rmtree(directory, ignore_errors=True)
        return count
