import os
import time

import pytest

from memos.governance.policy import MemoryPolicy
from memos.governance.policy_store import PolicyError, PolicyStore, parse_policy

GOOD = """\
upstream:
  base_url: https://example.invalid/v1
  api_key_env: ACME_KEY
memory:
  top_k: 5
  token_budget: 300
"""


def _write(path, text):
    path.write_text(text)
    st = path.stat()
    # make sure the poller sees a new stamp even on coarse-mtime filesystems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("memory:\n  top_k: 500\n", 2, "memory.top_k"),
        ("memory:\n  inject: true\n  bogus: 1\n", 3, "memory.bogus"),
        ("memory:\n  fail_mode: sideways\n", 2, "memory.fail_mode"),
        ("upstream:\n  base_url: x\nacl:\n  roles:\n    r: [chat, nope]\n", 5, "acl.roles.r[1]"),
        (
            "memory:\n  redaction:\n    custom:\n      - name: x\n        pattern: '('\n",
            5,
            "memory.redaction.custom[0].pattern",
        ),
        ("memory:\n  redaction:\n    builtin: [email, ssn]\n", 3, "memory.redaction.builtin[1]"),
        ("audit_level: loud\n", 1, "audit_level"),
        ("identity:\n  headers: [X-OpenWebUI-User-Id, Authorization]\n", 2, "identity.headers"),
        ("identity:\n  headers: ['bad header']\n", 2, "identity.headers[0]"),
        ("identity:\n  body_fields: [prompt-cache-key]\n", 2, "identity.body_fields[0]"),
        (
            "memory:\n  placement:\n    single_system_message: maybe\n",
            3,
            "memory.placement.single_system_message",
        ),
        ("tenant: other\n", 1, "tenant"),
    ],
)
def test_errors_name_file_line_and_field(text, line, field):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policies/acme.yaml", "acme")
    err = info.value
    assert (err.file, err.line, err.field) == ("policies/acme.yaml", line, field), str(err)
    assert str(err).startswith(f"policies/acme.yaml:{line}: {field}: ")


def test_identity_and_placement_are_read():
    policy = parse_policy(
        "memory:\n  placement:\n    single_system_message: true\n"
        "identity:\n  body_fields: [prompt_cache_key]\n  headers: [X-OpenWebUI-User-Id]\n",
        "acme.yaml",
        "acme",
    )
    assert policy.memory.placement.single_system_message is True
    assert (policy.identity.body_fields, policy.identity.headers) == (
        ["prompt_cache_key"],
        ["X-OpenWebUI-User-Id"],
    )
    default = parse_policy("{}\n", "acme.yaml", "acme")
    assert default.memory.placement.single_system_message is False
    assert (default.identity.body_fields, default.identity.headers) == ([], [])


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(PolicyError) as info:
        parse_policy("memory:\n  top_k: 5\n  inject: [true\n", "acme.yaml", "acme")
    assert info.value.line is not None and "YAML" in str(info.value)


def test_store_defaults_good_and_broken(tmp_path):
    (tmp_path / "acme.yaml").write_text(GOOD)
    (tmp_path / "beta.yaml").write_text("memory: [\n")
    store = PolicyStore(tmp_path)
    assert store.get("acme").memory.top_k == 5
    assert store.get("acme").tenant == "acme"
    assert store.get("beta").memory.top_k == MemoryPolicy().top_k  # broken and never good: defaults
    assert store.get("nobody").memory.top_k == MemoryPolicy().top_k
    assert list(store.errors()) == [str(tmp_path / "beta.yaml")]


def test_reload_keeps_last_good_and_isolates(tmp_path, audit):
    acme, beta = tmp_path / "acme.yaml", tmp_path / "beta.yaml"
    acme.write_text(GOOD)
    beta.write_text("memory:\n  top_k: 7\n")
    store = PolicyStore(tmp_path, audit=audit)
    _write(acme, "memory:\n  top_k: 9999\n")
    changes = store.reload()
    assert [t for t, _ in changes] == ["acme"] and "acme.yaml:2: memory.top_k" in changes[0][1]
    assert store.get("acme").memory.top_k == 5  # last good
    assert store.get("beta").memory.top_k == 7
    _write(acme, "memory:\n  top_k: 3\n")
    assert store.reload() == [("acme", None)]
    assert store.get("acme").memory.top_k == 3 and not store.errors()
    acme.unlink()
    store.reload()
    assert store.get("acme").memory.top_k == MemoryPolicy().top_k
    actions = [(e.action, e.detail["ok"]) for e in audit.list("acme", 10)[0]]
    assert actions == [("policy.reload", False), ("policy.reload", True), ("policy.reload", True)]


def test_hot_reload_thread(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text(GOOD)
    store = PolicyStore(tmp_path, poll_interval_s=0.05)
    store.start()
    try:
        _write(path, "memory:\n  top_k: 42\n")
        deadline = time.monotonic() + 5
        while store.get("acme").memory.top_k != 42 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get("acme").memory.top_k == 42
    finally:
        store.stop()


def test_missing_dir_is_fine(tmp_path):
    store = PolicyStore(tmp_path / "nope")
    assert store.get("x").memory.inject is True
    assert store.reload() == []
