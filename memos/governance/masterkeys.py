"""Master keys over time: the active key plus the previous ones, and how a running process learns a new one.

Where the keys live:

- **Key file** (the embedded default, `$MEMOS_DATA_DIR/master.key`, mode 0600): one base64 key per
  line, the first active, the others previous keys (lines starting with `#` are comments). A file
  holding a single key is the format `MasterKey.load_or_create` makes, so old files keep working.
- **Environment** (`MEMOS_MASTER_KEY`): the same list, comma-separated (`NEW,OLD`). A process's
  environment cannot change under it, so with keys in the environment a rotation is a rolling
  restart (see ROTATION below).

Why keep previous keys: a data key wrapped by an old master (a backup, a row re-wrapped while a
replica had not yet noticed) still opens, and audit entries MACed under an old master's audit-chain
key still verify. A previous key never wraps anything new.

ROTATION (`memos-proxy keys rotate-master`), with the key file:

1. A new key is generated and written first in the key file, the old active key second (atomic
   rename; 0600).
2. Every data key is re-wrapped under the new key (row by row, compare-and-swap, so a concurrent
   tenant creation or deletion is never overwritten); data is untouched. A second pass catches rows a
   replica wrapped under the old key in the instant before it noticed the new file.
3. Running processes notice without a restart: a `MasterKeyWatcher` (started with the server) polls
   the file's mtime about once a second and hands the new key set to the Keyring and the AuditLog;
   the Keyring also re-reads the source at once when it meets a data key wrapped by a master it does
   not know, and before it wraps a new tenant's key. Cached data keys stay valid throughout (a re-wrap
   does not change them).

With `MEMOS_MASTER_KEY`: (1) roll every replica to `MEMOS_MASTER_KEY=OLD,NEW` (they learn NEW, still
wrap with OLD); (2) run `MEMOS_MASTER_KEY=NEW,OLD memos-proxy keys rotate-master` (re-wraps under NEW);
(3) roll every replica to `MEMOS_MASTER_KEY=NEW,OLD`. Keep OLD listed for as long as its audit entries
and backups must verify or open.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlmodel import col, select

from memos.keys.crypto import MasterKey
from memos.keys.keyring import TenantKeyRow
from memos.polling import PollingThread

_HEADER = (
    "# memos-proxy master keys: the first line is the active key, the others are previous keys\n"
    "# (kept to open data keys and verify audit entries made under them). Keep this file secret.\n"
)


@dataclass(frozen=True)
class MasterKeySet:
    active: MasterKey
    previous: tuple[MasterKey, ...] = ()

    @property
    def all(self) -> tuple[MasterKey, ...]:
        return (self.active, *self.previous)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.all)

    def rotated(self, new: MasterKey) -> MasterKeySet:
        rest = tuple(k for k in self.all if k.key_id != new.key_id)
        return MasterKeySet(new, rest)


def parse_keys(text: str) -> MasterKeySet:
    """Keys separated by newlines or commas; `#` comments and blank lines ignored; the first is active."""
    keys: list[MasterKey] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                key = MasterKey(base64.b64decode(part, validate=True))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"not a base64 32-byte master key: {exc}") from None
            if key.key_id not in seen:
                seen.add(key.key_id)
                keys.append(key)
    if not keys:
        raise ValueError("no master key found")
    return MasterKeySet(keys[0], tuple(keys[1:]))


def format_keys(keys: MasterKeySet) -> str:
    return _HEADER + "".join(k.to_b64() + "\n" for k in keys.all)


def read_key_file(path: Path) -> MasterKeySet:
    return parse_keys(path.read_text())


def write_key_file(path: Path, keys: MasterKeySet) -> None:
    """Replace the key file atomically (write a 0600 temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(format_keys(keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_or_create_key_file(path: Path) -> MasterKeySet:
    if path.exists():
        return read_key_file(path)
    MasterKey.load_or_create(path)  # creates it exclusively (0600); a racing process may have won
    return read_key_file(path)


class MasterKeySource:
    """Where this process gets its master keys: a key file (re-read when it changes) or fixed keys."""

    def __init__(self, *, path: Path | None = None, fixed: MasterKeySet | None = None) -> None:
        if (path is None) == (fixed is None):
            raise ValueError("give either a key file path or fixed keys")
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        if fixed is not None:
            self._keys = fixed
        else:
            assert path is not None
            self._keys = load_or_create_key_file(path)
            self._stamp = self._file_stamp()
        self._listeners: list[Callable[[MasterKeySet], None]] = []

    @classmethod
    def from_settings(cls, master_key_env: str | None, data_dir: Path) -> MasterKeySource:
        if master_key_env:
            return cls(fixed=parse_keys(master_key_env))
        return cls(path=data_dir / "master.key")

    @property
    def is_file(self) -> bool:
        return self.path is not None

    def current(self) -> MasterKeySet:
        return self._keys

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the key file if it changed (or when forced). True when the key set changed."""
        if self.path is None:
            return False
        with self._lock:
            stamp = self._file_stamp()
            if not force and stamp == self._stamp:
                return False
            try:
                keys = read_key_file(self.path)
            except (OSError, ValueError):
                return False  # a half-written or broken file: keep what we have
            self._stamp = stamp
            changed = keys.ids != self._keys.ids
            self._keys = keys
        if changed:
            for listener in list(self._listeners):
                listener(keys)
        return changed

    def subscribe(self, listener: Callable[[MasterKeySet], None]) -> None:
        self._listeners.append(listener)

    def replace(self, keys: MasterKeySet) -> None:
        """Write a new key set (key file only) and adopt it."""
        if self.path is None:
            raise RuntimeError(
                "the master keys come from MEMOS_MASTER_KEY; change the environment (NEW,OLD) instead"
            )
        write_key_file(self.path, keys)
        self.refresh(force=True)


class MasterKeyWatcher:
    """Background job: polls the key file so a rotation made by another process is adopted within ~1 s."""

    def __init__(self, source: MasterKeySource, interval_s: float = 1.0) -> None:
        self.source = source
        self._thread = PollingThread("master-key-watch", interval_s, source.refresh)

    def start(self) -> None:
        if self.source.is_file:
            self._thread.start()

    def stop(self) -> None:
        self._thread.stop()


def connect(source: MasterKeySource, keyring: object, audit: object) -> None:
    """Keep a Keyring and an AuditLog in step with the source's keys."""

    def adopt(keys: MasterKeySet) -> None:
        set_masters = getattr(keyring, "set_masters", None)
        if set_masters is not None:
            set_masters(keys.active, keys.previous)
        for old in keys.previous:
            audit.add_mac_key(old.derive("audit-chain"))  # type: ignore[attr-defined]
        audit.use_mac_key(keys.active.derive("audit-chain"))  # type: ignore[attr-defined]

    source.subscribe(adopt)


def previous_audit_keys(keys: Sequence[MasterKey]) -> list[bytes]:
    return [k.derive("audit-chain") for k in keys]


@dataclass
class RewrapReport:
    rewrapped: list[str]
    already: int
    unknown: list[str]  # tenants whose key is wrapped by a master this key set does not hold


def rewrap_all(db: object, keys: MasterKeySet) -> RewrapReport:
    """Re-wrap every data key not yet under `keys.active`, row by row with compare-and-swap.

    A row changed meanwhile (deleted tenant, a concurrent re-wrap) is re-read once and otherwise left
    to the next pass. Data is untouched: only the wrapped copies of the data keys change.
    """

    by_id = {k.key_id: k for k in keys.all}
    target = keys.active
    report = RewrapReport([], 0, [])
    with db.session() as session:  # type: ignore[attr-defined]
        rows = [(r.tenant, r.wrapped_key, r.master_key_id) for r in session.exec(select(TenantKeyRow)).all()]
    for tenant, wrapped, master_id in rows:
        for _attempt in range(2):
            if master_id == target.key_id:
                report.already += 1
                break
            master = by_id.get(master_id)
            if master is None:
                report.unknown.append(tenant)
                break
            new_wrapped = target.wrap(master.unwrap(wrapped, tenant), tenant)
            with db.engine.begin() as conn:  # type: ignore[attr-defined]
                result = conn.execute(
                    update(TenantKeyRow)
                    .where(col(TenantKeyRow.tenant) == tenant, col(TenantKeyRow.wrapped_key) == wrapped)
                    .values(wrapped_key=new_wrapped, master_key_id=target.key_id)
                )
            if result.rowcount == 1:
                report.rewrapped.append(tenant)
                break
            with db.session() as session:  # type: ignore[attr-defined]
                row = session.get(TenantKeyRow, tenant)
                if row is None:
                    break  # deleted meanwhile
                wrapped, master_id = row.wrapped_key, row.master_key_id
    return report
