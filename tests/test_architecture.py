"""The layout the code promises (docs/ARCHITECTURE.md), checked by parsing every import.

- proxy/ reaches memory only through the `memos` public API (`from memos import ...`);
- the public API names what exists, and the proxy's app imports neither torch nor litellm;
- memos/ has no import cycle between its parts (a subpackage, or a top-level module, is one part).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import memos

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, *, type_checking: bool = True) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every absolute import in the file (`import x` gives names [])."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                guarded.update(id(inner) for inner in ast.walk(node))
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
    return found


def test_proxy_imports_only_the_memos_public_api() -> None:
    offending = []
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        for line, module, names in _imports(path):
            if module == "memos":
                offending += [f"{path.relative_to(ROOT)}:{line} {n}" for n in names if n not in memos.__all__]
            elif module.startswith("memos."):
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offending == []


def test_every_public_name_exists() -> None:
    for name in memos.__all__:
        module, attribute = memos._EXPORTS[name]
        assert getattr(importlib.import_module(module), attribute) is getattr(memos, name)
    assert sorted(memos._EXPORTS) == sorted(memos.__all__)


def _part(module: str) -> str:
    """memos.storage.vault -> storage; memos.item -> item."""
    return module.split(".")[1]


def test_memos_parts_import_each_other_without_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in (ROOT / "memos").rglob("*.py"):
        relative = path.relative_to(ROOT).with_suffix("")
        if relative == Path("memos/__init__"):
            continue  # the public API re-exports every part
        source = _part(".".join(relative.parts))
        for _, module, names in _imports(path, type_checking=False):
            targets = [f"memos.{n}" for n in names] if module == "memos" else [module]
            for target in targets:
                if target.startswith("memos.") and _part(target) != source:
                    edges[source].add(_part(target))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(part: str, path: list[str]) -> None:
        state[part] = 1
        for nxt in sorted(edges.get(part, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[part] = 2

    for part in sorted(edges):
        if part not in state:
            visit(part, [part])
    assert cycles == []
    assert "memos" not in edges  # no part imports the public API (it would import every part)


def test_the_app_imports_neither_torch_nor_litellm() -> None:
    code = (
        "import sys\n"
        "import proxy.app, proxy.services, proxy.routes.chat, memos\n"
        "from memos import MemScheduler, LocalMemory, MemoryService, build_memory\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'litellm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
