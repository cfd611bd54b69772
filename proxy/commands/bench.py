"""`memos-proxy bench NAME [ARGS...]`: run one of the repository's benchmarks (bench/NAME.py).

The benchmarks live beside the source, not in the installed package (they start proxies, LiteLLM and
models of their own), so this runs them from a checkout: `--bench-dir`, else ./bench.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from proxy.cli import CommandRegistry
from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    parser = cli.command(
        "bench", "run a benchmark from bench/ (latency, scale, locomo, locomo_chat, local_memory, ...)"
    )
    parser.add_argument("name", help="the benchmark: a file bench/NAME.py")
    parser.add_argument("--bench-dir", type=Path, default=Path("bench"), help="where the benchmarks are")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    parser.set_defaults(handler=run_bench)


def available(bench_dir: Path) -> list[str]:
    return sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    script = args.bench_dir / f"{args.name}.py"
    if not script.is_file():
        names = ", ".join(available(args.bench_dir)) or f"none found in {args.bench_dir}"
        print(f"memos-proxy bench: no benchmark {args.name!r} (available: {names})", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *args.args], check=False).returncode
