"""Rules: the maths of MambaLRP, as forward functions with a modified backward."""

from captum_mamba.rules.config import MambaRules
from captum_mamba.rules.functional import (
    gated_product,
    gated_rms_norm,
    multihead_ssm,
    rms_norm,
    selective_ssm,
    silu,
)
from captum_mamba.rules.linear import LRP0, Epsilon, Gamma, LinearRule

__all__ = [
    "LRP0",
    "Epsilon",
    "Gamma",
    "LinearRule",
    "MambaRules",
    "gated_product",
    "gated_rms_norm",
    "multihead_ssm",
    "rms_norm",
    "selective_ssm",
    "silu",
]
