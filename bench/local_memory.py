"""Benchmark: activation memory (a stored KV cache) against plaintext memory on a local model, on CPU.

For memory blocks of 512, 2048 and 4096 tokens it measures the time to first token of one request
(the memory block followed by a short conversation) in both modes, through the same code that serves
requests (memos.local.runtime.LocalRuntime.generate, greedy, one new token):

- plaintext: the whole prompt (block + conversation) is prefilled;
- activation: generation starts from a copy of the block's cache (copy included in the time), so only
  the conversation is prefilled; "cold" adds loading the cache from its encrypted file first.

It also measures building a cache (prefill), extending it when one newer memory joins the block (only
the tokens after the common prefix are prefilled, on top of the stored cache) against rebuilding it
from scratch, with the largest difference between the two caches, sealing and writing it, its size on
disk, LoRA training time on the user's memories, adapter switch time on the shared base model (first
load: decrypt and inject; switch between loaded adapters), and the TTFT of activation and parametric
together (the block's cache built through the adapter) against plaintext with the adapter. The model
has random weights built from a config: by default the width of Qwen2-0.5B (hidden 896, 14 heads, 2 KV
heads, MLP 4864, vocab 151936) with 6 of its 24 layers, to keep the run short on a shared CPU (both
modes scale linearly with depth, so the ratio holds). Nothing is downloaded. Prints a table and
writes bench/results/local_memory.json.

    .venv/bin/python bench/local_memory.py                 # defaults: 2 threads, blocks 512,2048,4096
    .venv/bin/python bench/local_memory.py --layers 24     # the full 0.5B depth (slower)
    .venv/bin/python bench/local_memory.py --tiny          # seconds: a smoke run on the tiny test shape
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memos.local.synthetic import QWEN2_0_5B, TINY, ModelShape  # noqa: E402
from memos.recall import injection  # noqa: E402

CONVERSATION = [{"role": "user", "content": "What should I cook tonight, given what you know about me?"}]
FACTS = [
    "lives in Lisbon and works as a nurse",
    "is allergic to peanuts",
    "has a dog called Pixel",
    "plays the piano on weekends",
    "prefers tea over coffee",
    "runs every morning before work",
    "speaks Portuguese and English",
    "likes hiking in the mountains",
    "has a meeting with the design team on Thursday at ten",
    "the project deadline is the end of March",
]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def memory_block(tokenizer: Any, target_tokens: int) -> tuple[str, int, list[injection.RenderedMemory]]:
    """A rendered memory block (memos.recall.injection) of about `target_tokens` tokens, as the scheduler
    makes, and its memories."""
    from datetime import UTC, datetime, timedelta

    from memos.local.runtime import block_ids

    memories: list[injection.RenderedMemory] = []
    start = datetime(2025, 1, 1, tzinfo=UTC)
    text, n = "", 0
    i = 0
    while True:
        fact = FACTS[i % len(FACTS)]
        memories.append(
            injection.RenderedMemory(
                f"mem{i:05d}", f"The user {fact} (note {i}).", start + timedelta(hours=i)
            )
        )
        candidate = injection.render(memories)
        count = len(block_ids(tokenizer, candidate))
        if count > target_tokens and text:
            return text, n, memories[:-1]
        text, n = candidate, count
        i += 1


def grown(memories: list[injection.RenderedMemory]) -> str:
    """The block with one more memory, newer than the others (so it goes to the end)."""
    from datetime import timedelta

    last = memories[-1]
    assert last.when is not None
    new = injection.RenderedMemory(
        "mem-new", "The user just adopted a cat called Miso.", last.when + timedelta(days=1)
    )
    return injection.render([*memories, new])


def median_time(fn: Any, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def run(
    shape: ModelShape,
    *,
    device: str,
    dtype: str,
    blocks: list[int],
    repeats: int,
    lora_steps: int,
    lora_memories: int,
    label: str,
) -> dict[str, Any]:
    import torch

    from memos.db import Database
    from memos.keys.crypto import MasterKey
    from memos.keys.keyring import Keyring
    from memos.local.kvcache import KVCacheStore, KVKey, prefill
    from memos.local.lora import AdapterStore, LoraTraining, select_adapter, train_adapter
    from memos.local.runtime import LocalRuntime, SamplingParams, block_ids, build_prompt
    from memos.local.synthetic import random_loaded_model

    load_before = os.getloadavg()
    started = time.perf_counter()
    loaded = random_loaded_model(shape, device=device, dtype=dtype)
    print(f"model ready in {time.perf_counter() - started:.1f}s: {shape.describe()} on {device} ({dtype})")
    runtime = LocalRuntime()
    one_token = SamplingParams(max_tokens=1, temperature=0.0)
    tmp = Path(tempfile.mkdtemp(prefix="memos-bench-"))
    db = Database(f"sqlite:///{tmp / 'keys.db'}")
    db.create_all()
    keyring = Keyring(db, MasterKey.generate())
    store = KVCacheStore(tmp / "kv", keyring)
    # Warm-up (one-time allocations, kernels).
    runtime.generate(loaded, build_prompt(loaded.tokenizer, CONVERSATION, "warm up"), one_token)

    rows = []
    prompts = []
    for target in blocks:
        block, n_block, memories = memory_block(loaded.tokenizer, target)
        prompt = build_prompt(loaded.tokenizer, CONVERSATION, block)
        key = KVKey("bench", f"user{target}", loaded.fingerprint)

        t0 = time.perf_counter()
        kv = prefill(loaded, prompt.block_ids)
        sync(device)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = store.save(key, kv)
        save_s = time.perf_counter() - t0

        def cold_load(key: KVKey = key) -> float:
            t = time.perf_counter()
            KVCacheStore(tmp / "kv", keyring).load(key, device)
            sync(device)
            return time.perf_counter() - t

        load_s = median_time(cold_load, repeats)
        new_ids = block_ids(loaded.tokenizer, grown(memories))
        extend_times, rebuild_times = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            extended = prefill(loaded, new_ids, reuse=kv)
            sync(device)
            extend_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            rebuilt = prefill(loaded, new_ids)
            sync(device)
            rebuild_times.append(time.perf_counter() - t)
        pairs = zip((*extended.keys, *extended.values), (*rebuilt.keys, *rebuilt.values), strict=True)
        extend_diff = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
        reused = extended.reused_tokens
        del extended, rebuilt
        plain, act = [], []
        for _ in range(repeats):  # interleaved, so that load from elsewhere hits both modes alike
            plain.append(runtime.generate(loaded, prompt, one_token))
            act.append(runtime.generate(loaded, prompt, one_token, kv=kv))
        ttft_plain = statistics.median(r.time_to_first_token_s for r in plain)
        ttft_act = statistics.median(r.time_to_first_token_s for r in act)
        row = {
            "block_tokens": n_block,
            "conversation_tokens": len(prompt.rest_ids),
            "ttft_plaintext_s": ttft_plain,
            "ttft_activation_s": ttft_act,
            "ttft_activation_cold_s": ttft_act + load_s,
            "speedup": ttft_plain / ttft_act,
            "ttft_plaintext_samples_s": [r.time_to_first_token_s for r in plain],
            "ttft_activation_samples_s": [r.time_to_first_token_s for r in act],
            "speedup_cold": ttft_plain / (ttft_act + load_s),
            "cache_build_s": build_s,
            "cache_seal_write_s": save_s,
            "cache_load_decrypt_s": load_s,
            "cache_bytes_on_disk": path.stat().st_size,
            "extend_reused_tokens": reused,
            "extend_prefilled_tokens": len(new_ids) - reused,
            "extend_s": statistics.median(extend_times),
            "rebuild_s": statistics.median(rebuild_times),
            "extend_max_abs_diff": extend_diff,
            "same_first_token": plain[0].token_ids == act[0].token_ids,
        }
        rows.append(row)
        prompts.append(prompt)
        print(
            f"  block {n_block:>5} tok: plaintext {ttft_plain * 1000:9.1f} ms, activation "
            f"{ttft_act * 1000:8.1f} ms ({row['speedup']:.1f}x), build {build_s:.2f}s, "
            f"+1 memory: extend {row['extend_s']:.3f}s vs rebuild {row['rebuild_s']:.3f}s"
        )
        del kv

    # Parametric memory: LoRA training on a private copy, then adapter loads and switches on `loaded`.
    texts = [f"The user {FACTS[i % len(FACTS)]} (note {i})." for i in range(lora_memories)]
    trainee = random_loaded_model(shape, device=device, dtype=dtype)
    cfg = LoraTraining(steps=lora_steps, batch_size=4)
    trained = train_adapter(trainee.model, trainee.tokenizer, texts, cfg)
    del trainee
    adapters = AdapterStore(tmp / "adapters", keyring)
    handles = []
    for user in ("alice", "bob"):
        adapters.save("bench", user, loaded.fingerprint, trained, [])
        handles.append(adapters.handle("bench", user, loaded.fingerprint))

    def timed_select(handle: Any) -> float:
        with loaded.lock, torch.inference_mode():
            t = time.perf_counter()
            select_adapter(loaded, handle)
            sync(device)
            return time.perf_counter() - t

    first_load = [timed_select(h) for h in handles]  # decrypt + inject, each adapter once
    switches = [timed_select(handles[i % 2]) for i in range(20)]
    to_base = [timed_select(None) for _ in range(5)]
    lora = {
        "memories": lora_memories,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "rank": cfg.rank,
        "train_s": trained.seconds,
        "train_s_per_step": trained.seconds / cfg.steps,
        "loss_base": trained.base_loss,
        "loss_adapter": trained.adapter_loss,
        "adapter_bytes_on_disk": sum(p.stat().st_size for p in (tmp / "adapters").rglob("*.lora")) // 2,
        "adapter_first_load_s": statistics.median(first_load),
        "adapter_switch_s": statistics.median(switches),
        "adapter_off_s": statistics.median(to_base),
    }

    # Activation and parametric together: the block's cache built through the adapter, then served
    # with it, against plaintext with the adapter (the whole prompt prefilled through it).
    combined = []
    for row, prompt in zip(rows, prompts, strict=True):
        kv_adapter = prefill(loaded, prompt.block_ids, adapter=handles[0])
        both = [
            runtime.generate(loaded, prompt, one_token, kv=kv_adapter, adapter=handles[0])
            for _ in range(repeats)
        ]
        plain_adapter = [
            runtime.generate(loaded, prompt, one_token, adapter=handles[0]) for _ in range(repeats)
        ]
        combined.append(
            {
                "block_tokens": row["block_tokens"],
                "ttft_plaintext_adapter_s": statistics.median(r.time_to_first_token_s for r in plain_adapter),
                "ttft_activation_adapter_s": statistics.median(r.time_to_first_token_s for r in both),
                "same_first_token": both[0].token_ids == plain_adapter[0].token_ids,
            }
        )
        del kv_adapter
    runtime.close()
    db.dispose()
    return {
        "label": label,
        "model": {**asdict(shape), "describe": shape.describe(), "random_weights": True},
        "device": device,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # The machine is shared: its load average before and after the run, for reading the numbers.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "blocks": rows,
        "lora": lora,
        "combined": combined,
    }


def print_table(result: dict[str, Any]) -> None:
    print()
    print(
        f"{result['label']}: {result['model']['describe']}, {result['device']} {result['dtype']}, "
        f"{result['torch_threads']} threads, median of {result['repeats']}; load average "
        f"{result['loadavg_before'][0]:.1f} before, {result['loadavg_after'][0]:.1f} after "
        f"on {result['cpu_count']} CPUs"
    )
    columns = [
        ("block tok", 9, lambda r: f"{r['block_tokens']}"),
        ("plaintext TTFT", 15, lambda r: f"{r['ttft_plaintext_s'] * 1000:.1f} ms"),
        ("activation TTFT", 16, lambda r: f"{r['ttft_activation_s'] * 1000:.1f} ms"),
        ("speedup", 8, lambda r: f"{r['speedup']:.1f}x"),
        ("cold act. TTFT", 15, lambda r: f"{r['ttft_activation_cold_s'] * 1000:.1f} ms"),
        ("cold speedup", 12, lambda r: f"{r['speedup_cold']:.1f}x"),
        ("cache build", 12, lambda r: f"{r['cache_build_s']:.2f} s"),
        ("cache on disk", 14, lambda r: f"{r['cache_bytes_on_disk'] / 2**20:.1f} MiB"),
        ("+1 mem extend", 13, lambda r: f"{r['extend_s'] * 1000:.1f} ms"),
        ("+1 mem rebuild", 14, lambda r: f"{r['rebuild_s'] * 1000:.1f} ms"),
        (
            "prefilled",
            10,
            lambda r: (
                f"{r['extend_prefilled_tokens']}/{r['extend_prefilled_tokens'] + r['extend_reused_tokens']}"
            ),
        ),
        ("ext. max diff", 13, lambda r: f"{r['extend_max_abs_diff']:.1e}"),
        ("same 1st tok", 12, lambda r: str(r["same_first_token"])),
    ]
    head = " ".join(f"{name:>{width}}" for name, width, _ in columns)
    print(head)
    print("-" * len(head))
    for row in result["blocks"]:
        print(" ".join(f"{cell(row):>{width}}" for _, width, cell in columns))
    lo = result["lora"]
    print()
    print(
        f"LoRA (rank {lo['rank']}, {lo['memories']} memories, {lo['steps']} steps x batch "
        f"{lo['batch_size']}): train {lo['train_s']:.1f} s ({lo['train_s_per_step']:.2f} s/step), "
        f"loss on the memories {lo['loss_base']:.3f} -> {lo['loss_adapter']:.3f}; "
        f"adapter on disk {lo['adapter_bytes_on_disk'] / 2**20:.2f} MiB"
    )
    print(
        f"adapter first load (decrypt + inject) {lo['adapter_first_load_s'] * 1000:.1f} ms; "
        f"switch between loaded adapters {lo['adapter_switch_s'] * 1000:.2f} ms; "
        f"back to the base model {lo['adapter_off_s'] * 1000:.2f} ms (the base model is never reloaded)"
    )
    for c in result.get("combined", []):
        print(
            f"activation + adapter, block {c['block_tokens']} tok: TTFT "
            f"{c['ttft_activation_adapter_s'] * 1000:.1f} ms vs plaintext + adapter "
            f"{c['ttft_plaintext_adapter_s'] * 1000:.1f} ms; same first token: {c['same_first_token']}"
        )


def main(argv: list[str] | None = None, *, default_out: str = "bench/results/local_memory.json") -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny test shape: a smoke run in seconds")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers of the 0.5B-width model")
    parser.add_argument("--blocks", default="512,2048,4096", help="memory block sizes in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    parser.add_argument("--lora-steps", type=int, default=6)
    parser.add_argument("--lora-memories", type=int, default=16)
    parser.add_argument("--out", default=None, help=f"JSON results (default {default_out}; --tiny: none)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    shape = TINY if args.tiny else replace(QWEN2_0_5B, num_hidden_layers=args.layers)
    label = "tiny smoke run" if args.tiny else f"Qwen2-0.5B width, {args.layers} layers"
    result = run(
        shape,
        device="cpu",
        dtype="float32",
        blocks=[int(b) for b in args.blocks.split(",")],
        repeats=args.repeats,
        lora_steps=args.lora_steps,
        lora_memories=args.lora_memories,
        label=label,
    )
    result["command"] = "python bench/local_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print_table(result)
    if args.out is None and args.tiny:
        return 0
    out = Path(args.out or default_out)
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
