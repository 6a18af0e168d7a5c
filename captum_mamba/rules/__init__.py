"""Rules: the maths of MambaLRP, as forward functions with a modified backward."""

from captum_mamba.rules.config import PRESETS, MambaRules, Override
from captum_mamba.rules.functional import (
    activation,
    add,
    attention,
    attention_weights,
    gated_product,
    grouped_linear,
    layer_norm,
    mixture,
    multihead_ssm,
    rms_norm,
    rotary,
    scale,
    selective_ssm,
    silu,
    time_step,
)
from captum_mamba.rules.linear import LRP0, Epsilon, Gamma, LinearRule

__all__ = [
    "LRP0",
    "PRESETS",
    "Epsilon",
    "Gamma",
    "LinearRule",
    "MambaRules",
    "Override",
    "activation",
    "add",
    "attention",
    "attention_weights",
    "gated_product",
    "grouped_linear",
    "layer_norm",
    "mixture",
    "multihead_ssm",
    "rms_norm",
    "rotary",
    "scale",
    "selective_ssm",
    "silu",
    "time_step",
]
