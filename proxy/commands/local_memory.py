"""`memos-proxy memory train`: train a user's LoRA adapter (parametric memory) for a local model."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import CommandRegistry
from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    memory = cli.group("memory", "manage memories")
    train = memory.add_parser(
        "train",
        help="train a user's LoRA adapter on their stable memories for a local model (local/<name>)",
    )
    train.add_argument("--tenant", required=True)
    train.add_argument("--user", required=True)
    train.add_argument("--model", required=True, help="local/<name> or <name> from MEMOS_LOCAL_MODELS")
    train.add_argument(
        "--min-age-s",
        type=float,
        default=0.0,
        help="only memories at least this old count as stable (default 0: every active memory)",
    )
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default 60)")
    train.set_defaults(handler=train_adapter)


def train_adapter(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from memos.local.lora import LoraTraining
    from memos.local.model_registry import UnknownLocalModel
    from memos.local.scheduler import UserErasedMeanwhile
    from memos.storage.vault import MemVault
    from memos.storage.vectors import VectorIndex
    from proxy.services import open_core
    from proxy.upstream.local import build_local_memory

    core = open_core(settings)
    try:
        vault = MemVault(core.db, core.keyring, VectorIndex(settings.resolved_vector_uri))
        scheduler, _ = build_local_memory(settings, core.keyring, vault, core.audit)
        if scheduler.registry is None:
            print("no local models are configured (MEMOS_LOCAL_MODELS)", file=sys.stderr)
            return 2
        try:
            name = scheduler.registry.name_of(args.model)
        except UnknownLocalModel:
            names = ", ".join("local/" + n for n in scheduler.registry.names())
            print(f"unknown local model {args.model!r}; configured: {names}", file=sys.stderr)
            return 2
        if args.steps is not None:
            scheduler.config = replace(scheduler.config, lora=LoraTraining(steps=args.steps))
        try:
            meta = scheduler.train(args.tenant, args.user, name, min_age_s=args.min_age_s)
        except (ValueError, UserErasedMeanwhile) as exc:
            print(f"nothing trained: {exc}", file=sys.stderr)
            return 1
    finally:
        core.close()
    print(
        f"trained adapter {meta.adapter_id} for user {args.user} of tenant {args.tenant} on local/{name}: "
        f"{len(meta.memory_ids)} memories, {meta.steps} steps, "
        f"loss on them {meta.base_loss:.3f} (base) -> {meta.adapter_loss:.3f} (adapter)"
    )
    return 0
