"""Shared fixtures for the vault's tests: a vault on SQLite and on PostgreSQL (the `pg_url` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memos.db import Database
from memos.embeddings import HashEmbedder
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memos.db'}"
    return request.getfixturevalue("pg_url")


@dataclass
class VaultEnv:
    db: Database
    keyring: Keyring
    vault: MemVault
    embedder: HashEmbedder
    data_dir: Path
    vector_uri: str
    master: MasterKey

    def second_replica(self) -> MemVault:
        """Another process's view: its own engine, keyring and vector index over the same stores."""
        db = Database(self.db.url)
        return MemVault(db, Keyring(db, self.master), VectorIndex(self.vector_uri), self.embedder)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[VaultEnv]:
    db = Database(db_url)
    db.create_all()
    master = MasterKey.generate()
    keyring = Keyring(db, master)
    vector_uri = str(tmp_path / "vectors")
    embedder = HashEmbedder()
    vault = MemVault(db, keyring, VectorIndex(vector_uri), embedder)
    yield VaultEnv(db, keyring, vault, embedder, tmp_path, vector_uri, master)
    db.dispose()
