"""The import graph confirms the layers: no module imports from a layer above its own, and
the applications (``captum_mamba.apps``) are the top layer, which nothing below imports;
no modules import each other in a cycle, counting imports inside functions too, and the
package's modules import each other only at module level (so no import inside a function
hides a cycle); only ``captum_mamba._captum`` imports Captum's private modules; adapters
share code only through the adapter infrastructure (never import one another)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from captum_mamba.adapters import INFRASTRUCTURE

PACKAGE = Path(__file__).resolve().parents[1] / "captum_mamba"

#: Module prefixes by layer, lowest first; a module may import its own layer and below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("captum_mamba.ops", "captum_mamba._captum"),
    ("captum_mamba.rules",),
    ("captum_mamba.adapters",),
    ("captum_mamba.attr", "captum_mamba.lrp"),
    ("captum_mamba.baselines", "captum_mamba.metrics"),
    ("captum_mamba.visualization",),
    ("captum_mamba.models", "captum_mamba.vision"),
    ("captum_mamba.apps", "captum_mamba.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of a module: that of its longest matching prefix."""
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py")
    return best


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "captum_mamba":  # the package namespace re-exports every layer
            found[name] = path
    return found


def _imported(nodes: Iterable[ast.AST], package: str) -> list[str]:
    """The modules that the import statements among ``nodes`` import (relative ones
    resolved against ``package``)."""
    result: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            result += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                result.append(".".join([*base, node.module] if node.module else base))
            else:
                result.append(node.module or "")
            # ``from package import module`` imports the module too
            result += [
                f"{result[-1]}.{a.name}" for a in node.names if f"{result[-1]}.{a.name}" in MODULES
            ]
    return result


def _package(path: Path, name: str) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports(path: Path, name: str) -> list[str]:
    """Every module the file imports, at module level or inside functions."""
    return _imported(ast.walk(ast.parse(path.read_text())), _package(path, name))


def imports_inside_functions(path: Path, name: str) -> list[str]:
    """The package modules the file imports inside a function (where an import could
    hide a cycle)."""
    functions = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nodes = [node for function in functions for node in ast.walk(function)]
    found = _imported(nodes, _package(path, name))
    return list(dict.fromkeys(m for m in found if m.startswith("captum_mamba")))


MODULES = modules()


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 30
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_runs_up(name: str) -> None:
    own = layer_of(name)
    for imported in imports(MODULES[name], name):
        if imported == "captum_mamba":
            raise AssertionError(f"{name} imports the package namespace; import the module")
        if imported.startswith("captum_mamba."):
            assert layer_of(imported) <= own, f"{name} (layer {own}) imports {imported}"


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of ``graph`` (module -> the modules it imports) as ``[a, b, ..., a]``, or
    ``[]`` when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str]:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return []
        path.append(name)
        for imported in sorted(graph.get(name, ())):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(name)
        return []

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return []


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports anywhere in its
    source (at module level or inside a function)."""
    return {
        name: {imported for imported in imports(path, name) if imported in MODULES}
        for name, path in MODULES.items()
    }


def test_no_import_cycle() -> None:
    cycle = import_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_package_modules_are_imported_at_module_level(name: str) -> None:
    inner = imports_inside_functions(MODULES[name], name)
    assert not inner, f"{name} imports {inner} inside a function; import at the top"


def test_only_the_applications_are_in_the_top_layer() -> None:
    top = len(LAYERS) - 1
    for name in MODULES:
        application = name.split(".")[1] in ("apps", "__main__")
        assert (layer_of(name) == top) == application, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_private_captum_names_only_in_the_compat_module(name: str) -> None:
    private = [
        imported
        for imported in imports(MODULES[name], name)
        if imported.startswith("captum.") and any(p.startswith("_") for p in imported.split("."))
    ]
    assert name == "captum_mamba._captum" or not private, f"{name} imports {private}"


def is_adapter(name: str) -> bool:
    """Whether a module is an architecture adapter (a module of ``captum_mamba.adapters``
    other than its infrastructure)."""
    package, _, module = name.rpartition(".")
    return package == "captum_mamba.adapters" and module not in INFRASTRUCTURE


@pytest.mark.parametrize("name", sorted(filter(is_adapter, MODULES)))
def test_adapters_import_no_other_adapter(name: str) -> None:
    for imported in imports(MODULES[name], name):
        assert not is_adapter(imported), f"{name} imports the adapter {imported}"


def test_the_checks_can_fail() -> None:
    assert layer_of("captum_mamba.adapters.hf_mamba") < layer_of("captum_mamba.attr.mamba_lrp")
    source = (
        "from captum_mamba.baselines import MambaAttr\nimport captum._utils.common\n"
        "def inside():\n    from captum_mamba.apps import cli\n"
    )
    path = Path(__file__).with_name("layering_probe.py")
    try:
        path.write_text(source)
        found = imports(path, "captum_mamba.rules.probe")
        inside = imports_inside_functions(path, "captum_mamba.rules.probe")
    finally:
        path.unlink()
    assert found == [
        "captum_mamba.baselines",
        "captum._utils.common",
        "captum_mamba.apps",
        "captum_mamba.apps.cli",
    ]
    assert inside == ["captum_mamba.apps", "captum_mamba.apps.cli"]
    assert layer_of(found[0]) > layer_of("captum_mamba.rules.probe")
    assert layer_of("captum_mamba.visualization.text") < layer_of("captum_mamba.apps.study")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycle(graph) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set(), "d": {"a", "b"}}) == []
    assert is_adapter("captum_mamba.adapters.hf_mamba")
    assert not is_adapter("captum_mamba.adapters.blocks")
