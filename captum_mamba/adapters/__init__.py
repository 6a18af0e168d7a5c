"""Architecture adapters: which module of a model is computed how under the rules.

Every module of this package other than the infrastructure (:mod:`.backend`,
:mod:`.base`, :mod:`.blocks`, :mod:`.families`, :mod:`.recompute`) is an adapter and is
imported here, so adding an architecture is adding one file. Adapters share code only
through the infrastructure, never import each other, and each is loaded on its own: an
adapter whose model library is missing, too old or lacks one of its classes (an optional
dependency such as mamba-ssm, a family that an older transformers lacks, a class renamed
by a newer one) stays unregistered while every other family works;
:func:`family_statuses` says which and why.
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
    describe_architectures,
    plain_forward,
    plan_rules,
    register_adapter,
    register_container,
    register_leaf,
    registered_adapters,
    rules_applied,
)
from captum_mamba.adapters.families import (
    FamilyStatus,
    FamilyUnavailable,
    family_statuses,
    mark_unavailable,
)
from captum_mamba.adapters.recompute import RecomputeBackend, recomputing

#: Modules of this package that are not adapters.
INFRASTRUCTURE = frozenset({"backend", "base", "blocks", "families", "recompute"})


def _import_adapters() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in INFRASTRUCTURE or info.name.startswith("_"):
            continue
        adapter = f"{__name__}.{info.name}"
        try:
            import_module(adapter)
        except ImportError as error:
            ours = (error.name or "").split(".")[0] == "captum_mamba"
            if ours and not isinstance(error, FamilyUnavailable):
                raise
            mark_unavailable(adapter, str(error).splitlines()[0])


_import_adapters()

__all__ = [
    "ArchitectureAdapter",
    "Backend",
    "BlockOps",
    "FamilyStatus",
    "ModuleHandler",
    "Plan",
    "PlanEntry",
    "RecomputeBackend",
    "UnsupportedModelError",
    "describe_architectures",
    "family_statuses",
    "plain_forward",
    "plan_rules",
    "recomputing",
    "register_adapter",
    "register_container",
    "register_leaf",
    "registered_adapters",
    "rules_applied",
]
