"""Fixtures of the fault suite; its helpers are in tests/support/faults.py.

Every test here ends the same way: each exchange the client saw acknowledged (a 200 with the whole
answer) is findable through the memory API, and `memos-proxy audit verify --all` says the chains are
intact. Traffic stays on loopback; counts and deadlines are bounded; waits poll with a deadline.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`small_tmpfs(mib)`: a fresh tmpfs of that size, mounted on a temp dir (unmounted after). Skips,
    printing why, where this machine cannot mount one (not root, no tmpfs, a container without
    CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("cannot mount a tmpfs here: no `mount` command")
        point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            print(f"full-disk test skipped: cannot mount a tmpfs ({reason})")
            pytest.skip(f"cannot mount a tmpfs on {point}: {reason}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
