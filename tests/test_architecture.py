"""The package's layers: data flows one way, and the library never imports its command line.

Each top-level part of ``dramatiq_mollifier`` has a rank; a module may import a part of a lower
rank, or its own part, never a part of the same or a higher rank. The test reads every module's
imports with ``ast`` (module-level and function-level alike), so a lazy import cannot hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dramatiq_mollifier

PACKAGE = Path(dramatiq_mollifier.__file__).parent

#: Lower ranks are foundations; equal ranks do not know each other.
RANKS = {
    "_version": 0,
    "errors": 0,
    "models": 0,
    "breaker": 0,
    "redis_urls": 0,
    "setting_reports": 0,
    "settings": 1,
    "telemetry": 1,
    "embedded": 1,
    "buffer": 2,
    "gate": 3,
    "drain": 3,
    "crash": 4,
    "middleware": 4,
    "console": 4,
    "demo": 5,
    "dashboard": 5,
    "cli": 6,
    "__init__": 7,
    "__main__": 8,
}


def part_of(module: str) -> str:
    """``dramatiq_mollifier.gate.cascade`` -> ``gate``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        found.append((name.removesuffix(".__init__"), path))
    return found


def imports_of(module: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if node.module:
                found.add(target)
            else:
                # "from .. import console" names a module of the package, not the package's own
                # namespace (an attribute imported so, like a name from the root, has no rank).
                found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("dramatiq_mollifier")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[name for name, _ in modules()])
def test_no_module_imports_a_part_above_it(module: str, path: Path) -> None:
    own = part_of(module)
    assert own in RANKS, f"{module}: new top-level part {own!r}: give it a rank in RANKS"
    upward = sorted(
        target
        for target in imports_of(module, path)
        if part_of(target) != own and RANKS.get(part_of(target), 99) >= RANKS[own]
    )
    assert upward == [], f"{module} (rank {RANKS[own]}) imports from the same rank or above: {upward}"


def test_the_library_never_imports_its_command_line() -> None:
    offenders = sorted(
        name
        for name, path in modules()
        if part_of(name) not in ("cli", "__main__")
        and any(part_of(target) == "cli" for target in imports_of(name, path))
    )
    assert offenders == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a buffer module importing the middleware is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("from ..middleware import Mollifier\n")
    targets = imports_of("dramatiq_mollifier.buffer.bad", bad)
    assert targets == {"dramatiq_mollifier.middleware"}
    assert RANKS[part_of("dramatiq_mollifier.middleware")] >= RANKS["buffer"]


def test_every_module_is_under_400_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules()}
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}


def test_every_test_and_benchmark_module_is_under_400_lines() -> None:
    root = Path(__file__).resolve().parent.parent
    paths = [*(root / "tests").rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    assert len(paths) > 50
    sizes = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in paths}
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}


def test_the_library_never_imports_the_dashboard() -> None:
    # The dashboard's web framework is an extra: only the command line may reach for it.
    offenders = sorted(
        name
        for name, path in modules()
        if part_of(name) not in ("dashboard", "cli", "__main__")
        and any(part_of(target) == "dashboard" for target in imports_of(name, path))
    )
    assert offenders == []
