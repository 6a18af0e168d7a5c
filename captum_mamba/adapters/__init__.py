"""Architecture adapters: which module of a model is computed how under the rules.

Every module of this package other than the infrastructure (:mod:`.backend`,
:mod:`.base`, :mod:`.blocks`, :mod:`.recompute`) is an adapter and is imported here, so
adding an architecture is adding one file. An adapter whose model library is not
installed (an optional dependency such as mamba-ssm, or a model family that an older
transformers lacks) stays unregistered; :func:`unavailable_adapters` says why.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from captum_mamba.adapters.backend import Backend, BlockOps
from captum_mamba.adapters.base import (
    ArchitectureAdapter,
    ModuleHandler,
    Plan,
    PlanEntry,
    UnsupportedModelError,
    plain_forward,
    plan_rules,
    register_adapter,
    register_container,
    register_leaf,
    registered_adapters,
    rules_applied,
    supported_architectures,
)
from captum_mamba.adapters.recompute import RecomputeBackend, recomputing

_INFRASTRUCTURE = {"backend", "base", "blocks", "recompute"}
_UNAVAILABLE: dict[str, str] = {}


def _import_adapters() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
            continue
        try:
            import_module(f"{__name__}.{info.name}")
        except ModuleNotFoundError as error:
            if error.name is None or error.name.split(".")[0] == "captum_mamba":
                raise
            _UNAVAILABLE[info.name] = f"needs {error.name}, which is not installed"


def unavailable_adapters() -> dict[str, str]:
    """Adapter modules that could not be loaded, with the reason (module name -> reason)."""
    return dict(_UNAVAILABLE)


_import_adapters()

__all__ = [
    "ArchitectureAdapter",
    "Backend",
    "BlockOps",
    "ModuleHandler",
    "Plan",
    "PlanEntry",
    "RecomputeBackend",
    "UnsupportedModelError",
    "plain_forward",
    "plan_rules",
    "recomputing",
    "register_adapter",
    "register_container",
    "register_leaf",
    "registered_adapters",
    "rules_applied",
    "supported_architectures",
    "unavailable_adapters",
]
