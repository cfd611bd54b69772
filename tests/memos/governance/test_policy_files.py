"""The published schema is the model's, and the example policies are valid."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from memos.governance.policy_schema import check_files, schema_text
from memos.governance.policy_store import parse_policy

ROOT = Path(__file__).resolve().parents[3] / "policies"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_published_schema_is_current():
    assert (ROOT / "policy.schema.json").read_text() == schema_text(), (
        "policies/policy.schema.json is stale: run `memos-proxy policy schema`"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    assert check_files([path]) == []
    schema = json.loads((ROOT / "policy.schema.json").read_text())
    data = yaml.safe_load(path.read_text().replace(" off]", " 'off']"))
    jsonschema.validate(data, schema)


def test_examples_exist():
    assert len(EXAMPLES) >= 3


def test_yaml_off_is_a_string():
    policy = parse_policy("audit_level: off\nmemory:\n  allowed_modes: [plaintext, off]\n", "x.yaml", "x")
    assert policy.audit_level == "off" and policy.memory.allowed_modes == ["plaintext", "off"]
