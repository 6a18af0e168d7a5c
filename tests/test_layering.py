"""The import graph confirms the layers: no module imports from a layer above its own,
only ``captum_mamba._captum`` imports Captum's private modules, and adapters share code
only through the adapter infrastructure (never import one another)."""

from __future__ import annotations

import ast
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
    (
        "captum_mamba.visualization.render_readme",
        "captum_mamba.study",
        "captum_mamba.demo",
        "captum_mamba.benchmark",
        "captum_mamba.sentiment",
        "captum_mamba.data",
        "captum_mamba.models",
        "captum_mamba.vision",
        "captum_mamba.cli",
        "captum_mamba.dataset",
        "captum_mamba.loading",
        "captum_mamba.methods",
        "captum_mamba.sharding",
    ),
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


def imports(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            result += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                result.append(".".join([*base, node.module] if node.module else base))
            else:
                result.append(node.module or "")
    return result


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
    source = "from captum_mamba.baselines import MambaAttr\nimport captum._utils.common\n"
    path = Path(__file__).with_name("layering_probe.py")
    try:
        path.write_text(source)
        found = imports(path, "captum_mamba.rules.probe")
    finally:
        path.unlink()
    assert found == ["captum_mamba.baselines", "captum._utils.common"]
    assert layer_of(found[0]) > layer_of("captum_mamba.rules.probe")
    assert is_adapter("captum_mamba.adapters.hf_mamba")
    assert not is_adapter("captum_mamba.adapters.blocks")
