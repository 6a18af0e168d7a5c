"""Conformance case: mamba-ssm's hybrid ``MambaLMHeadModel`` (``attn_layer_idx``: MHA
attention layers between Mamba-1 or Mamba-2 layers; grouped key/value heads, the MHA's
conv over ``[q, k, v]`` and its gated-MLP channels, gated MLPs; tied embeddings).

Like the Mamba-only case (``tests/cases/mamba_ssm.py``, whose independent reference this
one extends with a causal attention loop over query positions), it runs only in the
mamba-ssm subprocess. The "own output" is the reference with every rule off: mamba-ssm's
own Mamba forward needs CUDA (its MHA alone runs on CPU and is compared with it in
``tests/test_mamba_ssm.py``).
"""

from __future__ import annotations

import torch
from mamba_ssm_subprocess import IN_SUBPROCESS
from mamba_ssm_subprocess import SKIP_REASON as SKIP_REASON
from torch import nn

from captum_mamba import MambaRules
from cases import ArchitectureCase
from cases.mamba_ssm import _lm, _lm_logits, lm_inputs

HYBRID_CONFIGS = {
    "mamba1-attention-mlp": dict(
        n_layer=3, ssm_cfg={"d_state": 4}, d_intermediate=12, attn_layer_idx=[1],
        attn_cfg={"num_heads": 2, "causal": True},
    ),
    "mamba2-gqa-conv-mlp-channels-layernorm": dict(
        n_layer=3, ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 4, "ngroups": 2},
        d_intermediate=0, rms_norm=False, attn_layer_idx=[0, 2],
        attn_cfg={
            "num_heads": 4, "num_heads_kv": 2, "causal": True, "d_conv": 3, "mlp_dim": 8,
            "softmax_scale": 0.5,
        },
    ),
}  # fmt: skip


def _hybrid_lm(config: str, seed: int, zero_biases: bool = False) -> nn.Module:
    model = _lm(config, seed, zero_biases, configs=HYBRID_CONFIGS)
    with torch.no_grad():
        for block in model.backbone.layers:
            if hasattr(block.mixer, "num_heads_kv"):
                block.mixer.in_proj.weight.mul_(4.0)  # peaked attention: the softmax matters
    return model


ADAPTER = "mamba-ssm"

CASE = (
    ArchitectureCase(
        name="mamba_ssm_hybrid",
        adapter=ADAPTER,
        configs=tuple(HYBRID_CONFIGS),
        build=_hybrid_lm,
        inputs=lm_inputs,
        reference=_lm_logits,
        own_output=lambda model, embeds: _lm_logits(model, embeds, MambaRules.gradient_x_input()),
        layer="backbone.layers.1.mixer.out_proj",
        num_layers=lambda model: len(model.backbone.layers),
        rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
        isolated=True,
        conserving="cp_lrp",
    )
    if IN_SUBPROCESS
    else None
)
