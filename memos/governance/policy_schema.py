"""Publish and check policy files: the JSON Schema in policies/ is generated from the pydantic model.

memos-proxy policy schema [--output FILE]   (or: python -m memos.governance.policy_schema schema)
memos-proxy policy check FILE...             exit 1 naming file:line: field
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from memos.governance.policy_store import PolicyError, load_policy_file, policy_json_schema

DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "policies" / "policy.schema.json"


def schema_text() -> str:
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = DEFAULT_SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_text(), encoding="utf-8")
    return path


def check_files(paths: Sequence[Path]) -> list[str]:
    """Validate each file as its tenant's policy (tenant = file name stem); return the error messages."""
    errors: list[str] = []
    for path in paths:
        try:
            load_policy_file(path)
        except PolicyError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror or exc}")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memos-proxy policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schema", help="write (or print) the policy JSON Schema")
    s.add_argument("--output", "-o", type=Path, default=None, help="file to write; '-' prints it")
    c = sub.add_parser("check", help="validate policy files")
    c.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    return run(args)


def add_arguments(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `policy schema|check` on a CLI's subparsers (used by proxy.cli)."""
    policy = sub.add_parser("policy", help="policy files: publish the schema, check files")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    s = psub.add_parser("schema", help="write (or print) the policy JSON Schema")
    s.add_argument("--output", "-o", type=Path, default=None, help="file to write; '-' prints it")
    c = psub.add_parser("check", help="validate policy files; exit 1 naming file:line: field")
    c.add_argument("files", nargs="+", type=Path)


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "policy_command", None) or args.command
    if command == "schema":
        if args.output is not None and str(args.output) == "-":
            sys.stdout.write(schema_text())
        else:
            print(write_schema(args.output or DEFAULT_SCHEMA_PATH))
        return 0
    errors = check_files(args.files)
    for message in errors:
        print(message, file=sys.stderr)
    if not errors:
        print(f"{len(args.files)} policy file(s) valid")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
