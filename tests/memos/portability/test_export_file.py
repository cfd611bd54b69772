"""The export file (memos.portability.export_file) and the checks on its records
(memos.portability.transfer.parse_document)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from memos.portability.export_file import ExportFileError, is_sealed, read_export, write_export
from memos.portability.transfer import InvalidExport, parse_document

PASS = "a long enough passphrase"
RECORDS = [{"type": "export", "n": 1}, {"type": "memory", "text": "Zoë's café ☕ quibbleworth"}]


def test_sealed_round_trip_holds_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "x.export"
    assert write_export(path, RECORDS, PASS) == 2
    assert is_sealed(path)
    assert read_export(path, PASS) == RECORDS
    raw = path.read_bytes()
    assert b"quibbleworth" not in raw and "café".encode() not in raw and b"memory" not in raw


def test_plaintext_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_export(path, RECORDS, None)
    assert not is_sealed(path)
    assert read_export(path, None) == RECORDS
    assert [json.loads(line) for line in path.read_text().splitlines()][1:] == [
        *RECORDS,
        {"type": "end", "records": 2},
    ]


def test_file_is_0600_even_over_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.export"
    path.write_text("old")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        write_export(path, RECORDS, None)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.export"]  # no temporary file left


def test_wrong_or_missing_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "x.export"
    write_export(path, RECORDS, PASS)
    with pytest.raises(ExportFileError, match="wrong passphrase"):
        read_export(path, "another passphrase")
    with pytest.raises(ExportFileError, match="encrypted"):
        read_export(path, None)
    with pytest.raises(ExportFileError, match="at least"):
        write_export(tmp_path / "y.export", RECORDS, "short")


def test_header_cannot_be_altered(tmp_path: Path) -> None:
    path = tmp_path / "x.export"
    write_export(path, RECORDS, PASS)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["encryption"]["n"] = 2**16  # a cheaper KDF: another key, and another header digest
    path.write_text("\n".join([json.dumps(header, sort_keys=True), *lines[1:]]) + "\n")
    with pytest.raises(ExportFileError):
        read_export(path, PASS)
    header["encryption"]["n"] = 2**30  # hostile cost parameters are refused before deriving
    path.write_text("\n".join([json.dumps(header, sort_keys=True), *lines[1:]]) + "\n")
    with pytest.raises(ExportFileError, match="out of bounds"):
        read_export(path, PASS)


def test_records_from_another_file_or_place_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.export", tmp_path / "b.export"
    write_export(a, RECORDS, PASS)
    write_export(b, [RECORDS[0], {"type": "memory", "text": "planted"}], PASS)
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    spliced = tmp_path / "spliced.export"
    spliced.write_text("\n".join([la[0], la[1], lb[2], la[3]]) + "\n")
    with pytest.raises(ExportFileError, match="record 1"):
        read_export(spliced, PASS)
    extra = tmp_path / "extra.export"
    extra.write_text("\n".join([*la, la[1]]) + "\n")
    with pytest.raises(ExportFileError):
        read_export(extra, PASS)
    plain = tmp_path / "plain.jsonl"
    write_export(plain, RECORDS, None)
    lines = plain.read_text().splitlines()
    plain.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ExportFileError, match="truncated"):
        read_export(plain, None)


def _memory(**changes: object) -> dict:
    version = {
        "version": 1,
        "reason": "create",
        "text": "t",
        "sources": [],
        "scope": "user",
        "kind": "plaintext",
        "state": "active",
        "importance": 0.5,
    }
    record = {"type": "memory", "id": "mem_1", "owner": "u", **version, "versions": [version]}
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        (_memory(versions=[]), "`versions` must be a non-empty list"),
        (_memory(state="deleted"), "`state` must be one of"),
        (_memory(text="other"), "must equal its last version"),
        (_memory(owner=""), "`owner`"),
        (_memory(observed_at="yesterday"), "`observed_at`"),
        (_memory(sources=[{"metadata": "x"}]), "sources"),
        (_memory(versions=[{**_memory()["versions"][0], "version": 2}, _memory()["versions"][0]]), "order"),
    ],
)
def test_document_checks_name_the_problem(memory: dict, message: str) -> None:
    with pytest.raises(InvalidExport, match=message):
        parse_document([{"type": "export", "memories": 1}, memory])


def test_document_count_must_match() -> None:
    with pytest.raises(InvalidExport, match="does not match"):
        parse_document([{"type": "export", "memories": 2}, _memory()])
    document = parse_document([{"type": "export", "memories": 1, "tenant": "acme"}, _memory()])
    assert document.tenant == "acme" and [m.owner for m in document.memories] == ["u"]
