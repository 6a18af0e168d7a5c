"""Architecture adapters: which module of a model gets which MambaLRP rule."""

from captum_mamba.adapters import hf_mamba
from captum_mamba.adapters.base import (
    ArchitectureAdapter,
    UnsupportedModelError,
    plan_rules,
    register_adapter,
    registered_adapters,
    rules_applied,
    supported_architectures,
)

__all__ = [
    "ArchitectureAdapter",
    "UnsupportedModelError",
    "hf_mamba",
    "plan_rules",
    "register_adapter",
    "registered_adapters",
    "rules_applied",
    "supported_architectures",
]
