"""Random-weight local models built from a config, for tests, benchmarks and smoke checks.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in corpus, a Qwen2-shaped
model gets random weights from its config, and both are saved to a directory that `MEMOS_LOCAL_MODELS`
can name. Other layouts people run are built the same way (`ARCHITECTURES`): Qwen2 and Mistral with
their sliding window on, Gemma-2 (local and global layers alternating) and Gemma-3 (five local layers
to one global), and two whose layers keep more than keys and values (Qwen3-Next's linear attention,
Llama-4's chunked attention), which activation memory must refuse. The chat template is ChatML (as in
Qwen2), so a memory block rendered as a system message ends at the special token `<|im_end|>` followed
by a newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.local.model_registry import LoadedModel

if TYPE_CHECKING:
    from transformers import (
        PretrainedConfig,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    from memos.local.model_registry import LoadedModel

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = """\
The user lives in Lisbon and works as a nurse. She prefers tea over coffee and runs every morning.
My name is Ana. I have a dog called Pixel. I am allergic to peanuts. My favourite colour is green.
Remember that the meeting with the design team moved to Thursday at ten in the morning.
The project deadline is the end of March; the budget is forty thousand euros.
What do you know about me? Where do I live? What should I cook tonight without peanuts?
Hello! How are you today? I am fine, thank you. Can you help me plan a trip to Porto?
Memories about the user, given as data and not as instructions:
- likes hiking in the mountains - speaks Portuguese and English - plays the piano on weekends
The quick brown fox jumps over the lazy dog. 0123456789 , . ; : ! ? ( ) [ ] { } " ' - _ / # @
"""


@dataclass(frozen=True)
class ModelShape:
    """A decoder shape (Qwen2 family). `tiny` is for tests; `qwen2_0_5b` is Qwen2-0.5B's width."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    max_position_embeddings: int = 8192
    # Wider than the usual 0.02 for tiny models, so that random weights give varied (not constant) text.
    initializer_range: float = 0.2

    def describe(self) -> str:
        return (
            f"Qwen2 hidden={self.hidden_size} intermediate={self.intermediate_size} "
            f"layers={self.num_hidden_layers} heads={self.num_attention_heads} "
            f"kv_heads={self.num_key_value_heads} vocab={self.vocab_size}"
        )


TINY = ModelShape()
QWEN2_0_5B = ModelShape(896, 4864, 24, 14, 2, 151936, 32768, 0.02)
QWEN2_1_5B = ModelShape(1536, 8960, 28, 12, 2, 151936, 32768, 0.02)
QWEN2_7B = ModelShape(3584, 18944, 28, 28, 4, 152064, 32768, 0.02)


def train_tokenizer(vocab_size: int = 512, extra_text: str = "") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS.splitlines(), *extra_text.splitlines()], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise ValueError(f"the tokenizer has no single id for {token!r}")
    return token_id


def qwen2_config(
    shape: ModelShape, tokenizer: PreTrainedTokenizerBase, dtype: str = "float32"
) -> Qwen2Config:
    from transformers import Qwen2Config

    eos_id, pad_id = _token_id(tokenizer, "<|im_end|>"), _token_id(tokenizer, "<|endoftext|>")

    return Qwen2Config(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.hidden_size < 1024,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        use_sliding_window=False,
        initializer_range=shape.initializer_range,
        dtype=dtype,
    )


# name -> what it is; `architecture_config` builds each (qwen2: the default, full attention everywhere).
ARCHITECTURES = {
    "qwen2": "Qwen2, full attention, grouped-query (4 query heads, 2 key/value heads)",
    "qwen2-sliding": "Qwen2 with use_sliding_window (layers from max_window_layers=1 on are local)",
    "mistral": "Mistral, every layer a sliding window",
    "gemma2": "Gemma-2, local and global layers alternating, logit soft-capping",
    "gemma3": "Gemma-3 text, five local layers to one global, local and global RoPE bases",
    "qwen3-next": "Qwen3-Next, linear-attention layers between full ones (not cacheable as keys/values)",
    "llama4": "Llama-4 text, chunked-attention layers (not cacheable as a key/value prefix)",
}


def architecture_config(
    architecture: str,
    shape: ModelShape,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str = "float32",
    *,
    sliding_window: int = 16,
) -> PretrainedConfig:
    """The config of a random model of `architecture` (see ARCHITECTURES) at `shape`'s width; local
    layers see `sliding_window` tokens (small, so that a test's memory block is longer than it)."""
    if architecture == "qwen2":
        return qwen2_config(shape, tokenizer, dtype)
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        Llama4TextConfig,
        MistralConfig,
        Qwen3NextConfig,
    )

    head_dim = shape.hidden_size // shape.num_attention_heads
    common: dict[str, Any] = dict(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        initializer_range=shape.initializer_range,
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
        pad_token_id=_token_id(tokenizer, "<|endoftext|>"),
        bos_token_id=None,
        dtype=dtype,
    )
    if architecture == "qwen2-sliding":
        from transformers import Qwen2Config

        return Qwen2Config(
            **common,
            tie_word_embeddings=shape.hidden_size < 1024,
            use_sliding_window=True,
            sliding_window=sliding_window,
            max_window_layers=1,
        )
    if architecture == "mistral":
        return MistralConfig(**common, head_dim=head_dim, sliding_window=sliding_window)
    # Gemma scales embeddings by sqrt(hidden): with the wide tiny-model init its random text is constant.
    gemma = {**common, "initializer_range": min(shape.initializer_range, 0.02)}
    if architecture == "gemma2":
        return Gemma2Config(**gemma, head_dim=head_dim, sliding_window=sliding_window)
    if architecture == "gemma3":
        return Gemma3TextConfig(**gemma, head_dim=head_dim, sliding_window=sliding_window)
    if architecture == "qwen3-next":
        return Qwen3NextConfig(
            **common,
            head_dim=head_dim,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=head_dim,
            linear_value_head_dim=head_dim,
            num_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=shape.intermediate_size // 4,
            shared_expert_intermediate_size=shape.intermediate_size // 4,
        )
    if architecture == "llama4":
        return Llama4TextConfig(
            **common,
            head_dim=head_dim,
            attention_chunk_size=sliding_window,
            num_local_experts=2,
            intermediate_size_mlp=shape.intermediate_size,
        )
    raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")


def build_model_dir(
    path: Path,
    shape: ModelShape = TINY,
    *,
    seed: int = 0,
    dtype: str = "float32",
    tokenizer_vocab: int = 512,
    architecture: str = "qwen2",
    sliding_window: int = 16,
) -> Path:
    """Write a random model of `architecture` (Qwen2 by default) and a trained tokenizer to `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(min(tokenizer_vocab, shape.vocab_size))
    tokenizer.save_pretrained(path)
    config = architecture_config(architecture, shape, tokenizer, dtype, sliding_window=sliding_window)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(path)
    return path


def random_loaded_model(
    shape: ModelShape, *, device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> LoadedModel:
    """A LoadedModel with random weights built straight on `device` (no disk round trip): benchmarks."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(min(512, shape.vocab_size))
    config = qwen2_config(shape, tokenizer, dtype)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    fingerprint = f"random-{shape.hidden_size}x{shape.num_hidden_layers}-{dtype}-{seed}"
    return LoadedModel("bench", Path("."), model, tokenizer, fingerprint, device, torch_dtype)
