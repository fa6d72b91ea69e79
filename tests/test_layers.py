"""The layers go one way, with no exemptions:

    cli  ->  flows  ->  tasks  ->  usersync (the engine)
    cli, flows  ->  sandbox  ->  usersync's public API

The engine imports no Prefect, no sandbox and no outer layer; the sandbox and the outer layers
use the engine only through `usersync`'s public API (`usersync.__all__`); nothing imports the
command line. The folders are the design's (flows/, tasks/, cli/, sandbox/), installed as
usersync_flows, usersync_tasks, usersync_cli and usersync_sandbox.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import usersync

ROOT = Path(__file__).resolve().parents[1]
#: Installed name -> folder.
LAYERS = {
    "usersync": ROOT / "usersync",
    "usersync_tasks": ROOT / "tasks",
    "usersync_flows": ROOT / "flows",
    "usersync_cli": ROOT / "cli",
    "usersync_sandbox": ROOT / "sandbox",
}
#: What each layer may import of the project (besides itself).
ALLOWED = {
    "usersync": set(),
    "usersync_sandbox": {"usersync"},
    "usersync_tasks": {"usersync"},
    "usersync_flows": {"usersync", "usersync_tasks", "usersync_sandbox"},
    "usersync_cli": {"usersync", "usersync_tasks", "usersync_flows", "usersync_sandbox"},
}
OUTER = ("usersync_tasks", "usersync_flows", "usersync_cli", "usersync_sandbox")
#: Third-party packages only the outer layers may import.
PREFECT = "prefect"


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


def _imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = _parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def _modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module] if node.module and node.level == 0 else []


def _sources(layer: str) -> list[Path]:
    return sorted(LAYERS[layer].rglob("*.py"))


def test_each_layer_imports_only_the_layers_below_it():
    offenders = {}
    for layer in LAYERS:
        for path in _sources(layer):
            for node in _imports(path):
                for module in _modules(node):
                    top = module.split(".")[0]
                    if top in LAYERS and top != layer and top not in ALLOWED[layer]:
                        offenders.setdefault(str(path.relative_to(ROOT)), []).append(module)
                    if top in {"flows", "tasks", "cli", "sandbox"}:
                        offenders.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert offenders == {}


def test_the_engine_never_imports_prefect():
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in _sources("usersync")
        for node in _imports(path)
        for module in _modules(node)
        if module.split(".")[0] == PREFECT
    )
    assert offenders == []


def _engine_names_used(layer: str) -> dict[str, set[str]]:
    """Each `from usersync... import name` / `engine.name` of a layer, by module imported."""
    used: dict[str, set[str]] = {}
    for path in _sources(layer):
        tree = _parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == "usersync":
                    used.setdefault(node.module, set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "usersync":
                        used.setdefault(alias.name, set())
                        aliases.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                used.setdefault("usersync", set()).add(node.attr)
    return used


def test_the_outer_layers_use_the_engine_only_through_its_public_api():
    for layer in OUTER:
        used = _engine_names_used(layer)
        assert set(used) <= {"usersync"}, f"{layer} imports engine modules: {sorted(used)}"
        unknown = used.get("usersync", set()) - set(usersync.__all__)
        assert not unknown, f"{layer} uses names the engine does not export: {sorted(unknown)}"


def test_the_public_api_is_exactly_what_the_outer_layers_use():
    """`usersync.__all__` lists every name flows/, tasks/, cli/ and sandbox/ use, and no more:
    a name added to the API without a user, or used without being added, fails here."""
    used = set()
    for layer in OUTER:
        used |= _engine_names_used(layer).get("usersync", set())
    assert sorted(usersync.__all__) == sorted(used)


def test_every_public_name_resolves():
    for name in usersync.__all__:
        assert getattr(usersync, name) is not None, name


def test_nothing_imports_the_command_line():
    importers = sorted(
        str(path.relative_to(ROOT))
        for layer in LAYERS
        if layer != "usersync_cli"
        for path in _sources(layer)
        for node in _imports(path)
        for module in _modules(node)
        if module.split(".")[0] == "usersync_cli"
    )
    assert importers == []


def test_no_generic_top_level_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = config["tool"]["setuptools"]["packages"]
    tops = {name.split(".")[0] for name in packages}
    assert tops == set(LAYERS)
    # every engine package folder is listed (a new subpackage left out would not install)
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "usersync").rglob("__init__.py")
    }
    assert folders <= set(packages)


def test_no_module_is_called_utils_helpers_misc_or_common():
    names = {p.stem for folder in LAYERS.values() for p in folder.rglob("*.py")}
    assert not names & {"utils", "helpers", "misc", "common"}
