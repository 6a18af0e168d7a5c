"""Architecture adapters: which module of a model gets which MambaLRP rule."""

from importlib.util import find_spec

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

# Adapters for model families that older transformers releases lack register only
# where their modules exist.
if find_spec("transformers.models.mamba2") is not None:
    from captum_mamba.adapters import hf_mamba2  # noqa: F401
if find_spec("transformers.models.falcon_mamba") is not None:
    from captum_mamba.adapters import hf_falcon_mamba  # noqa: F401

from captum_mamba.adapters import vim  # noqa: F401

# mamba-ssm is optional and imports only with its compiled extension (or a stand-in
# for it on CPU); without them its adapter stays unregistered and can be imported
# explicitly (``import captum_mamba.adapters.mamba_ssm``) once mamba_ssm imports.
if find_spec("mamba_ssm") is not None and find_spec("selective_scan_cuda") is not None:
    from captum_mamba.adapters import mamba_ssm  # noqa: F401

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
