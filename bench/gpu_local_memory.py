"""Benchmark: activation memory vs plaintext on a GPU, bf16, a 1.5B or 7B model shape (random weights).

The same measurements as bench/local_memory.py (time to first token per memory block size in both
modes, cache build / seal / load, LoRA training, adapter switch), on CUDA in bf16 with the shape of
Qwen2-1.5B (default) or Qwen2-7B, built from a config straight on the GPU (nothing is downloaded).
Writes bench/results/gpu_local_memory.json. MemOS reports 18-94% TTFT reductions on GPUs.

    .venv/bin/python bench/gpu_local_memory.py                       # Qwen2-1.5B shape, cuda, bf16
    .venv/bin/python bench/gpu_local_memory.py --shape 7b --blocks 512,2048,4096,8192
    .venv/bin/python bench/gpu_local_memory.py --tiny                # CPU smoke check (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_memory import REPO, print_table, run

from memos.local.synthetic import QWEN2_1_5B, QWEN2_7B, TINY

SHAPES = {"1.5b": QWEN2_1_5B, "7b": QWEN2_7B}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.5b")
    parser.add_argument("--tiny", action="store_true", help="smoke check on CPU with the tiny test shape")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    parser.add_argument("--blocks", default="512,2048,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora-steps", type=int, default=20)
    parser.add_argument("--lora-memories", type=int, default=32)
    parser.add_argument(
        "--out", default=None, help="default bench/results/gpu_local_memory.json (--tiny: none)"
    )
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cpu" if args.tiny else "cuda")
    dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for a CPU smoke check", file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(2)
    shape = TINY if args.tiny else SHAPES[args.shape]
    label = "tiny smoke run" if args.tiny else f"Qwen2-{args.shape.upper()} shape"
    result = run(
        shape,
        device=device,
        dtype=dtype,
        blocks=[int(b) for b in args.blocks.split(",")],
        repeats=args.repeats,
        lora_steps=args.lora_steps,
        lora_memories=args.lora_memories,
        label=label,
    )
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["command"] = "python bench/gpu_local_memory.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print_table(result)
    if args.out is None and args.tiny:
        return 0
    out = Path(args.out or "bench/results/gpu_local_memory.json")
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
