"""Baselines: the attribution methods MambaLRP is compared with.

Hidden-attention methods for Mamba (attention rollout, Mamba-Attr), a random
baseline, and uniform token-level wrappers around Captum's gradient methods and the
MambaLRP ablations (:mod:`captum_mamba.baselines.captum_methods`).
"""

from captum_mamba.baselines.hidden_attention import (
    SelectiveSSMInputs,
    find_mixers,
    hf_mamba_ssm_inputs,
    hidden_attention_matrices,
    mean_hidden_attention,
    positive_hidden_attention,
)
from captum_mamba.baselines.mamba_attr import MambaAttr
from captum_mamba.baselines.random import RandomAttribution
from captum_mamba.baselines.rollout import MambaAttentionRollout, attention_rollout

__all__ = [
    "MambaAttentionRollout",
    "MambaAttr",
    "RandomAttribution",
    "SelectiveSSMInputs",
    "attention_rollout",
    "find_mixers",
    "hf_mamba_ssm_inputs",
    "hidden_attention_matrices",
    "mean_hidden_attention",
    "positive_hidden_attention",
]
