"""memos-proxy CLI: the registry, keys create/list/revoke (in-process; the e2e test runs the binary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import cli
from proxy.services import open_core
from proxy.settings import Settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEMOS_DATA_DIR", str(tmp_path))
    return tmp_path


def test_keys_create_prints_the_key_last(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--tenant", "acme", "--role", "user", "--user", "alice"]) == 0
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    core = open_core(Settings(data_dir=data_dir))
    principal = core.api_keys.resolve(raw)
    assert principal is not None and principal.bound_user == "alice"
    entries, _ = core.audit.list("acme", 10, None)
    assert [e.action for e in entries] == ["key.create"]
    core.close()


def test_keys_list_and_revoke(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["keys", "create", "--tenant", "acme", "--role", "app"])
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    key_id = raw.split("-")[1]
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "active" in listing and raw not in listing
    assert cli.main(["keys", "revoke", key_id]) == 0
    assert cli.main(["keys", "revoke", key_id]) == 1
    assert cli.main(["keys", "revoke", "nope"]) == 1
    cli.main(["keys", "list", "--tenant", "acme"])
    assert "revoked" in capsys.readouterr().out


def test_bad_role_and_missing_command(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--tenant", "acme", "--role", "root"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["keys"]) == 2


def test_groups_are_shared_between_modules() -> None:
    parser = cli.build_parser()
    registry = cli.CommandRegistry(parser.__class__(prog="x"))
    first = registry.group("keys", "keys")
    assert registry.group("keys", "keys") is first
