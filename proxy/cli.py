"""`memos-proxy`: one entry point, subcommands contributed by modules listed in COMMAND_MODULES.

A command module defines `register(cli: CommandRegistry) -> None` and adds its parsers there:

    def register(cli: CommandRegistry) -> None:
        keys = cli.group("keys", "manage tenant API keys")       # shared with other modules
        parser = keys.add_parser("rotate-master", help="...")
        parser.set_defaults(handler=_rotate_master)               # handler(args, settings) -> int | None

Top-level commands use `cli.command("serve", help)`. Import heavy things inside handlers, not at module
level, so that `memos-proxy --help` stays fast. Settings come from the environment (`MEMOS_*`) and the
optional `--config FILE`, read once here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.settings import Settings

# Every module that contributes subcommands; add yours here.
COMMAND_MODULES: tuple[str, ...] = (
    "proxy.commands.serve",
    "proxy.commands.worker",
    "proxy.commands.keys",
    "proxy.commands.governance",
    "proxy.commands.local_memory",
    "proxy.commands.portability",
    "proxy.commands.bench",
)

Handler = Callable[[argparse.Namespace, Settings], "int | None"]


class CommandRegistry:
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, Any] = {}

    def command(self, name: str, help: str) -> argparse.ArgumentParser:
        """A top-level command (`memos-proxy NAME ...`)."""
        return self._top.add_parser(name, help=help, description=help)

    def group(self, name: str, help: str) -> Any:
        """The subparsers of a command group (`memos-proxy NAME SUB ...`), created on first use."""
        group = self._groups.get(name)
        if group is None:
            parser = self._top.add_parser(name, help=help, description=help)
            parser.set_defaults(handler=lambda args, settings: _usage(parser))
            group = parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
            self._groups[name] = group
        return group


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memos-proxy", description="OpenAI-compatible proxy with memory.")
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file (env MEMOS_* wins)")
    registry = CommandRegistry(parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(registry)
    return parser


def load_settings(config: Path | None) -> Settings:
    return Settings(config_file=config) if config is not None else Settings()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except Exception as exc:
        print(f"memos-proxy: bad settings: {exc}", file=sys.stderr)
        return 2
    result = handler(args, settings)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
