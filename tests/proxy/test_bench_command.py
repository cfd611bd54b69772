"""`memos-proxy bench NAME ARGS...` runs bench/NAME.py with the arguments and returns its exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main


def test_runs_the_named_benchmark_with_its_arguments(tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    (tmp_path / "probe.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\nsys.exit(3)\n"
    )
    rc = main(["bench", "--bench-dir", str(tmp_path), "probe", str(out), "--quick", "x"])
    assert rc == 3
    assert out.read_text() == "--quick x"


def test_unknown_benchmark_names_the_available_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "latency.py").write_text("")
    assert main(["bench", "--bench-dir", str(tmp_path), "nope"]) == 2
    assert "available: latency" in capsys.readouterr().err


def test_the_repository_benchmarks_are_found() -> None:
    from proxy.commands.bench import available

    assert {"latency", "scale", "locomo", "local_memory"} <= set(
        available(Path(__file__).parents[2] / "bench")
    )
