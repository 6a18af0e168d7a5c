"""Baselines: the attribution methods MambaLRP is compared with.

Hidden-attention methods for Mamba (attention rollout, Mamba-Attr), a random
baseline, and uniform token-level wrappers around Captum's gradient methods and the
MambaLRP ablations (:mod:`captum_mamba.baselines.captum_methods`). The hidden-attention
methods read the scans recorded by :mod:`captum_mamba.baselines.recording`, so they run on
every architecture that MambaLRP explains.
"""

from captum_mamba.baselines.hidden_attention import (
    SelectiveSSMInputs,
    hidden_attention_matrices,
    mean_hidden_attention,
    positive_hidden_attention,
    ssd_as_selective,
)
from captum_mamba.baselines.implicit_attention import (
    ImplicitAttentionAttribution,
    ImplicitAttentionRollout,
    MixerAttention,
    mixer_attention,
)
from captum_mamba.baselines.latim import LaTIM
from captum_mamba.baselines.mamba_attr import MambaAttr
from captum_mamba.baselines.random import RandomAttribution
from captum_mamba.baselines.recording import LayerRecord, SSMRecord, SSMRecorder, record_layers
from captum_mamba.baselines.rollout import (
    MambaAttentionRollout,
    RawHiddenAttention,
    attention_rollout,
    compose_layers,
)

__all__ = [
    "ImplicitAttentionAttribution",
    "ImplicitAttentionRollout",
    "LaTIM",
    "LayerRecord",
    "MambaAttentionRollout",
    "MambaAttr",
    "MixerAttention",
    "RandomAttribution",
    "RawHiddenAttention",
    "SSMRecord",
    "SSMRecorder",
    "SelectiveSSMInputs",
    "attention_rollout",
    "compose_layers",
    "hidden_attention_matrices",
    "mean_hidden_attention",
    "mixer_attention",
    "positive_hidden_attention",
    "record_layers",
    "ssd_as_selective",
]
