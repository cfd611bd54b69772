"""Publish and check policy files: the JSON Schema in policies/ is generated from the pydantic model.

The CLI (`memos-proxy policy schema|check`, proxy/commands/governance.py) calls these.
"""

from __future__ import annotations

import json
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
