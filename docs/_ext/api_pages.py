"""The ``api-module`` directive: the API reference of one module, from its ``__all__``.

``.. api-module:: captum_mamba.attr`` renders the module's docstring and then every name in
its ``__all__`` with autodoc (``autoclass``, ``autoexception``, ``autofunction`` or
``autodata``). A name that the package namespace ``captum_mamba`` re-exports is documented
once, as ``captum_mamba.NAME`` on the page of the package; the module's page links to it.
A module without ``__all__`` lists the public names it defines.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

PACKAGE = "captum_mamba"


def public_names(module: ModuleType) -> list[str]:
    """``module.__all__``, or the public names defined in the module itself.

    Args:
        module (ModuleType): the module.

    Returns:
        list of str: the names, in ``__all__`` (or definition) order.
    """
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        and (inspect.isclass(value) or inspect.isfunction(value))
    ]


def documented_at(module_name: str, name: str) -> str:
    """Full name under which ``module_name.name`` is documented.

    Args:
        module_name (str): the module that exports ``name``.
        name (str): the exported name.

    Returns:
        str: ``captum_mamba.NAME`` for the same object re-exported by the package
        namespace, else ``module_name.NAME``.
    """
    package = importlib.import_module(PACKAGE)
    value = getattr(importlib.import_module(module_name), name)
    if name in package.__all__ and getattr(package, name) is value:
        return f"{PACKAGE}.{name}"
    return f"{module_name}.{name}"


def data_comment(name: str, value: Any) -> list[str]:
    """The ``#:`` comment above the assignment of a constant, in the module defining it.

    autodoc reads such comments only in the module being documented, and a constant
    re-exported by a package is assigned in one of its submodules.

    Args:
        name (str): the constant's name.
        value (Any): its value (to find the modules that hold it).

    Returns:
        list of str: the comment's lines; empty if there is none.
    """
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(PACKAGE) or getattr(module, name, None) is not value:
            continue
        comments = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        if ("", name) in comments:
            return [line for line in comments[("", name)] if line]
    return []


def _entry(full: str, name: str, value: Any) -> list[str]:
    """reStructuredText documenting one exported value."""
    if inspect.isclass(value) and issubclass(value, BaseException):
        return [f".. autoexception:: {full}", "   :show-inheritance:", ""]
    if inspect.isclass(value):
        return [f".. autoclass:: {full}", "   :members:", "   :show-inheritance:", ""]
    if callable(value):
        return [f".. autofunction:: {full}", ""]
    shown = dict(value) if isinstance(value, Mapping) else value
    module, _, short = full.rpartition(".")
    lines = [f".. py:data:: {short}", f"   :module: {module}", f"   :value: {shown!r}", ""]
    return lines + [f"   {line}" for line in data_comment(name, value)] + [""]


class ApiModule(SphinxDirective):
    """Render the API reference of the module named by the argument."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        lines = [f".. automodule:: {module_name}", ""]
        elsewhere = []
        for name in public_names(module):
            full = documented_at(module_name, name)
            if full != f"{module_name}.{name}":
                elsewhere.append(f"- :py:obj:`{name} <{full}>`: see :py:obj:`{full}`")
                continue
            lines += _entry(full, name, getattr(module, name))
        if elsewhere:
            lines += [
                ".. rubric:: Also exported by the package namespace",
                "",
                *elsewhere,
                "",
            ]
        container = nodes.Element()
        content = StringList(lines, source=f"api-module {module_name}")
        self.state.nested_parse(content, self.content_offset, container)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``api-module`` directive."""
    app.add_directive("api-module", ApiModule)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
