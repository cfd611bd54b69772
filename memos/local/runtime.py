"""Generation on a local model: chat template, sampling, stop strings, streaming, memory modes.

Prompt layout. With memory, the request's tokens are the memory block followed by the conversation.
The block is the first message (a system message) and its rendering by the chat template is
tokenized on its own, the rest of the prompt on its own, and the two id lists are concatenated. The
block's ids therefore never depend on the conversation (no BPE merge can cross the boundary), which is
what lets a KV cache of the block be reused. Plaintext and activation modes build exactly the same ids;
they differ only in whether the block is prefilled now or taken from a stored cache.

The fence. memos.recall.injection fences the block with an id hashed from its whole body, which sits
on the block's second line: any added memory would change it, and with it every token after it, so a
stored cache could never be extended. For a local model the fence id is instead hashed from the first
memory line (`cacheable_block`; both modes and the cache use it), so a memory appended at the end
(memories are ordered oldest first) leaves the cached prefix intact, and a cache is extended by the
appended lines only. Memory text cannot contain `<` (injection.escape), so no memory can close the
fence either way.

Generation runs in a worker thread under the model's lock; streaming hands text deltas to the event
loop through an asyncio queue, and closing the stream stops the thread at the next token.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos.local.kvcache import BASE_ADAPTER
from memos.local.lora import select_adapter
from memos.modes import MemoryMode
from memos.recall.injection import FENCE_TAG

if TYPE_CHECKING:
    from memos.local.kvcache import KVBlock
    from memos.local.lora import AdapterHandle
    from memos.local.model_registry import LoadedModel


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any], *, default_max_tokens: int = 256) -> SamplingParams:
        stop = body.get("stop")
        if isinstance(stop, str):
            stops: tuple[str, ...] = (stop,)
        else:
            stops = tuple(s for s in (stop or ()) if isinstance(s, str) and s)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
        temperature = body.get("temperature")
        top_p = body.get("top_p")
        seed = body.get("seed")
        return cls(
            max_tokens=max(1, int(max_tokens)),
            temperature=1.0 if temperature is None else max(0.0, float(temperature)),
            top_p=1.0 if top_p is None else min(1.0, max(0.0, float(top_p))),
            stop=stops,
            seed=None if seed is None else int(seed),
        )


@dataclass(frozen=True)
class Prompt:
    """Token ids of one request: `block_ids` (the memory block, possibly empty) then `rest_ids`."""

    block_ids: tuple[int, ...]
    rest_ids: tuple[int, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return self.block_ids + self.rest_ids


@dataclass(frozen=True)
class LocalMemory:
    """What the scheduler decided for one local request (carried in MemoryPlan.local)."""

    mode: MemoryMode
    block: str | None = None  # the memory block (placed first as a system message); None: no block
    kv: KVBlock | None = None  # activation: the block's stored cache (never mutated)
    adapter: AdapterHandle | None = None  # parametric: the user's LoRA adapter
    memory_ids: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    token_ids: list[int] = field(default_factory=list)
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0


def message_content(message: dict[str, Any]) -> str:
    """OpenAI content (a string or a list of parts) as plain text."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        elif isinstance(part, str):
            parts.append(part)
    return "".join(parts)


def _template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": str(m.get("role", "user")), "content": message_content(m)} for m in messages]


def render_block_prefix(tokenizer: Any, block: str) -> str:
    """The chat template's rendering of the memory block as the first (system) message."""
    return tokenizer.apply_chat_template(
        [{"role": "system", "content": block}], tokenize=False, add_generation_prompt=False
    )


def encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    # The template's text carries its own special tokens; nothing is added.
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


_OPENING = re.compile(rf'^<{FENCE_TAG} id="([0-9a-f]{{16}})">$')


def cacheable_block(block: str) -> str:
    """The block as a local model sees it: the fence id hashed from the first memory line instead of
    the whole body, so appending memories keeps every earlier token (see the module docstring). A text
    that is not a fenced memory block is returned unchanged."""
    lines = block.split("\n")
    for at, line in enumerate(lines[:-1]):
        match = _OPENING.match(line)
        if match is None:
            continue
        closing = f'</{FENCE_TAG} id="{match.group(1)}">'
        if lines[-1] != closing or at + 1 >= len(lines) - 1:
            return block
        fence = hashlib.sha256(("memos-local-fence\0" + lines[at + 1]).encode("utf-8")).hexdigest()[:16]
        lines[at] = f'<{FENCE_TAG} id="{fence}">'
        lines[-1] = f'</{FENCE_TAG} id="{fence}">'
        return "\n".join(lines)
    return block


def block_ids(tokenizer: Any, block: str) -> tuple[int, ...]:
    return encode(tokenizer, render_block_prefix(tokenizer, cacheable_block(block)))


def build_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]], block: str | None = None) -> Prompt:
    """The request's ids: the block's rendering tokenized alone, then the rest of the prompt."""
    convo = _template_messages(messages)
    if not block:
        text = tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        return Prompt((), encode(tokenizer, text))
    block = cacheable_block(block)
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": block}, *convo], tokenize=False, add_generation_prompt=True
    )
    prefix = render_block_prefix(tokenizer, block)
    if not full.startswith(prefix):
        # A template that renders a lone system message differently from a leading one (rare): cut
        # the full rendering right after the block's text instead; ids stay concatenated either way.
        cut = full.index(block) + len(block)
        prefix = full[:cut]
    return Prompt(encode(tokenizer, prefix), encode(tokenizer, full[len(prefix) :]))


# ------------------------------------------------------------------------------------------ sampling


def _next_token(logits: Any, params: SamplingParams, generator: Any) -> int:
    import torch

    if params.temperature <= 1e-5:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = cumulative - sorted_probs < params.top_p  # always keeps the most likely token
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


class _Detokenizer:
    """Incremental text of the completion, holding back what could still be the start of a stop string.

    Only a short window of ids is decoded per token (the usual prefix/read offsets), so the cost per
    token does not grow with the length of the answer."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0  # ids[_prefix:_read] decode to the end of `text`
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence (or nothing visible yet): wait for more ids
        searched = len(self.text)
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        hits = [
            at for stop in self.stops if (at := self.text.find(stop, max(0, searched - len(stop) + 1))) != -1
        ]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
        limit = len(self.text) if self.stopped else max(self.emitted, len(self.text) - self.holdback)
        return self._take(limit)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, limit: int) -> str:
        piece = self.text[self.emitted : limit]
        self.emitted = max(self.emitted, limit)
        return piece


# ------------------------------------------------------------------------------------------ runtime


class LocalRuntime:
    """Runs generations on loaded models in its own threads (never on the event loop)."""

    def __init__(self, *, max_workers: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="memos-local")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def generate(
        self,
        loaded: LoadedModel,
        prompt: Prompt,
        params: SamplingParams,
        *,
        kv: KVBlock | None = None,
        adapter: AdapterHandle | None = None,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Blocking. With `kv`, generation starts from a copy of that cache (which must hold exactly
        `prompt.block_ids`); without it, the whole prompt is prefilled."""
        import torch
        from transformers import DynamicCache

        if kv is not None and kv.token_ids != prompt.block_ids:
            raise ValueError("the KV cache does not hold this prompt's memory block")
        if kv is not None and kv.model_fingerprint != loaded.fingerprint:
            raise ValueError("the KV cache was built for another model")
        expected_adapter = adapter.adapter_id if adapter is not None else BASE_ADAPTER
        if kv is not None and kv.adapter_id != expected_adapter:
            raise ValueError("the KV cache was built under another adapter")
        generator = None
        if params.temperature > 1e-5:
            generator = torch.Generator(device=loaded.device)
            generator.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))
        detok = _Detokenizer(loaded.tokenizer, params.stop)
        eos = loaded.eos_token_ids
        model = loaded.model
        finish = "length"
        started = time.perf_counter()
        first_token_at = 0.0
        with loaded.lock, torch.inference_mode():
            select_adapter(loaded, adapter)
            if kv is not None:
                cache = kv.new_cache(model.config)
                feed = prompt.rest_ids
            else:
                cache = DynamicCache(config=model.config)
                feed = prompt.ids
            if not feed:
                raise ValueError("empty prompt")
            input_ids = torch.tensor([feed], device=loaded.device)
            for step in range(params.max_tokens):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                token = _next_token(out.logits[0, -1], params, generator)
                if step == 0:
                    first_token_at = time.perf_counter()
                if token in eos:
                    finish = "stop"
                    break
                piece = detok.add(token)
                if piece and on_text is not None:
                    on_text(piece)
                if detok.stopped:
                    finish = "stop"
                    break
                input_ids = torch.tensor([[token]], device=loaded.device)
        rest = detok.flush()
        if rest and on_text is not None:
            on_text(rest)
        return GenerationResult(
            text=detok.text,
            finish_reason=finish,
            prompt_tokens=len(prompt.ids),
            completion_tokens=len(detok.ids),
            cached_tokens=len(kv.token_ids) if kv is not None else 0,
            token_ids=list(detok.ids),
            time_to_first_token_s=(first_token_at or time.perf_counter()) - started,
            total_s=time.perf_counter() - started,
        )

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking model work (prefill, adapter loads) on the runtime's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def complete(
        self,
        loaded: LoadedModel,
        prompt: Prompt,
        params: SamplingParams,
        *,
        kv: KVBlock | None = None,
        adapter: AdapterHandle | None = None,
    ) -> GenerationResult:
        cancel = threading.Event()
        try:
            return await self.run(
                self.generate, loaded, prompt, params, kv=kv, adapter=adapter, cancel=cancel
            )
        finally:
            cancel.set()  # the caller went away (task cancelled): stop at the next token

    async def stream(
        self,
        loaded: LoadedModel,
        prompt: Prompt,
        params: SamplingParams,
        *,
        kv: KVBlock | None = None,
        adapter: AdapterHandle | None = None,
    ) -> AsyncIterator[str | GenerationResult]:
        """Text deltas as they are decoded, then the GenerationResult. Closing the iterator cancels."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))

        def work() -> None:
            try:
                result = self.generate(
                    loaded, prompt, params, kv=kv, adapter=adapter, on_text=emit, cancel=cancel
                )
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            else:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", result))

        future = loop.run_in_executor(self._executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    yield value
                    return
                else:
                    raise value
        finally:
            cancel.set()
            if not future.done():
                # Let the worker notice the cancellation; do not wait for it here.
                future.add_done_callback(lambda f: f.exception())
