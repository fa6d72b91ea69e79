"""Imports go one way: flows → tasks → usersync. The engine never imports Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "usersync"
#: The CLI is the outermost layer: its `sync`, `demo` and `inbox serve` commands start flows or
#: wire Prefect events, importing them inside the command function only.
OUTERMOST = {"cli.py"}
FORBIDDEN = ("prefect", "flows", "tasks")


def _parse(source: str) -> ast.Module:
    # CPython 3.11's AST conversion keeps its recursion depth in state that other threads
    # touch too; with Prefect's background threads alive (earlier tests in the session) a parse
    # was seen to fail with "SystemError: AST constructor recursion depth mismatch". The
    # source is the same every time, so parsing again is safe.
    for _ in range(4):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def imported_modules(path: Path, *, top_level_only: bool) -> set[str]:
    tree = _parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_engine_never_imports_prefect_flows_or_tasks():
    offenders = {}
    for path in ENGINE.rglob("*.py"):
        relative = path.relative_to(ENGINE)
        modules = imported_modules(path, top_level_only=str(relative) in OUTERMOST)
        bad = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)
        if bad:
            offenders[str(relative)] = bad
    assert offenders == {}


def test_no_module_is_called_utils_helpers_misc_or_common():
    names = {p.stem for p in ENGINE.rglob("*.py")}
    assert not names & {"utils", "helpers", "misc", "common"}
