"""Random-weight local models built from a config, for tests, benchmarks and smoke checks.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in corpus, a Qwen2-shaped
model gets random weights from its config, and both are saved to a directory that `MEMOS_LOCAL_MODELS`
can name. The chat template is ChatML (as in Qwen2), so a memory block rendered as a system message ends
at the special token `<|im_end|>` followed by a newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memos.local.model_registry import LoadedModel

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config

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


def build_model_dir(
    path: Path, shape: ModelShape = TINY, *, seed: int = 0, dtype: str = "float32", tokenizer_vocab: int = 512
) -> Path:
    """Write a random Qwen2-shaped model and a trained tokenizer to `path`; returns `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(min(tokenizer_vocab, shape.vocab_size))
    tokenizer.save_pretrained(path)
    config = qwen2_config(shape, tokenizer, dtype)
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
