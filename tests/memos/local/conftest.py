"""Fixtures for the local runtime: one tiny random Qwen2-shaped model (2 layers, hidden 64) with a
tokenizer trained here, built once per session; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memos.db import Database
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from memos.local.synthetic import build_model_dir

    torch.set_num_threads(2)
    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def registry(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from memos.local.model_registry import LocalModelRegistry

    return LocalModelRegistry({"tiny": tiny_model_dir}, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def loaded(registry):  # type: ignore[no-untyped-def]
    return registry.load("tiny")


@pytest.fixture
def runtime() -> Iterator[object]:
    from memos.local.runtime import LocalRuntime

    rt = LocalRuntime()
    yield rt
    rt.close()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.create_all()
    return Keyring(db, MasterKey.generate())
