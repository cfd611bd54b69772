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

    from memos import (
        LoraTraining,
        UnknownLocalModel,
        UserErasedMeanwhile,
        build_local_models,
        build_scheduler,
        open_vault,
    )
    from proxy.services import memory_config, open_core

    config = memory_config(settings)
    if args.steps is not None:
        config = replace(config, lora=LoraTraining(steps=args.steps))
    models = build_local_models(config)
    if models is None:
        print("no local models are configured (MEMOS_LOCAL_MODELS)", file=sys.stderr)
        return 2
    core = open_core(settings)
    try:
        vault = open_vault(config, core.db, core.keyring)
        scheduler = build_scheduler(config, core.keyring, vault, core.audit, models)
        try:
            name = models.registry.name_of(args.model)
        except UnknownLocalModel:
            names = ", ".join("local/" + n for n in models.registry.names())
            print(f"unknown local model {args.model!r}; configured: {names}", file=sys.stderr)
            return 2
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
