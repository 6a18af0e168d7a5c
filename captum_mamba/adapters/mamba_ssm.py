"""Architecture adapter for the ``mamba-ssm`` package (state-spaces/mamba):
``MambaLMHeadModel`` with Mamba-1 or Mamba-2 mixers, and stand-alone ``Mamba`` /
``Mamba2`` modules (or ``Block``, ``GatedMLP``, mamba-ssm's RMSNorms) in any network.

The forwards read the modules' parameters and compute with this package's own scans,
in plain PyTorch: they run on CPU, where mamba-ssm's fused CUDA and Triton kernels do
not. With all rules off they compute the model's function, so a CPU forward pass of a
mamba-ssm model is::

    with rules_applied(model, MambaRules.gradient_x_input()):
        logits = model(input_ids).logits

Rule assignment:

- ``RMSNorm`` (``mamba_ssm.ops.triton.layer_norm``, with its optional residual input),
  and the ``nn.LayerNorm`` of a ``Block`` or ``MixerModel``: LN-rule.
- ``Mamba``: identity rule on both SiLUs, SSM rule, half rule on ``y * silu(z)``
  (:func:`~captum_mamba.adapters.blocks.selective_branch`). Vim's fork of mamba-ssm
  (``bimamba_type="v2"``: a second scan over the flipped sequence with parameters
  ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``) is supported: each
  direction gets the same rules and the outputs are added (halved with
  ``if_devide_out``).
- ``Mamba2``: :func:`~captum_mamba.adapters.blocks.ssd_mixer`; the gated RMSNorm
  ``norm(y * silu(z))`` (or ``norm(y) * silu(z)``) gets the identity, half and LN-rules,
  the optional gated-MLP channels ``x0 * silu(z0)`` the identity and half rules.
- ``MHA`` (the attention layers of a hybrid ``MambaLMHeadModel``, ``attn_layer_idx``):
  softmax attention with grouped key/value heads, causal or not as configured: AttnLRP or
  CP-LRP; its optional conv over ``[q, k, v]`` is linear, its optional gated-MLP channels
  get the identity and half rules. Its rotary embedding (flash-attn's CUDA kernel) is
  refused in one line.
- ``GatedMLP``: identity and half rules on ``y * silu(gate)``.
- ``Block`` and ``MixerModel``: the residual stream, computed without the fused Triton
  add+norm and keeping a float64 explanation in float64 (``residual_in_fp32`` only
  widens half-precision residuals). ``MixerModel`` also accepts ``inputs_embeds``, so
  ``MambaLRP(model)`` explains embeddings of a ``MambaLMHeadModel`` directly.
- ``MambaLMHeadModel``: container.

Importing this module imports ``mamba_ssm``, which needs its compiled extension
``selective_scan_cuda`` (a stand-in module that only has to be importable is enough
on CPU; see the project's documentation). Importing ``mamba_ssm`` also makes
transformers' Mamba models bind to mamba-ssm's CUDA kernels, so keep it out of
processes that run transformers' Mamba on CPU; without the extension this module
raises ``FamilyUnavailable`` before importing ``mamba_ssm`` and the adapter stays
unregistered.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import (
    ArchitectureAdapter,
    ModuleHandler,
    register_adapter,
)
from captum_mamba.adapters.blocks import (
    GATED_NORM_SITES,
    SELECTIVE_SITES,
    SSD_EXTRA_SITES,
    SSD_SITES,
    SelectiveParams,
    SSDNames,
    check_silu,
    gated_norm,
    selective_branch,
    selective_params,
    ssd_mixer,
    ssd_params,
    suffixed,
)
from captum_mamba.adapters.families import FamilyUnavailable, declare_family
from captum_mamba.ops.ssd_scan import DEFAULT_CHUNK_SIZE

FAMILY = declare_family(
    __name__,
    "mamba-ssm",
    (
        "MambaLMHeadModel (Mamba-1 and Mamba-2 mixers, MHA attention layers)",
        "models containing Mamba/Mamba2/MHA",
    ),
    (
        "mamba_ssm.models.mixer_seq_simple",
        "mamba_ssm.modules.block",
        "mamba_ssm.modules.mamba2",
        "mamba_ssm.modules.mamba_simple",
        "mamba_ssm.modules.mha",
        "mamba_ssm.modules.mlp",
        "mamba_ssm.ops.triton.layer_norm",
        "mamba_ssm.ops.triton.layernorm_gated",
    ),
)
if find_spec("selective_scan_cuda") is None:
    raise FamilyUnavailable("mamba-ssm or its compiled extension selective_scan_cuda is missing")


(MambaLMHeadModel, MixerModel) = FAMILY.load("MambaLMHeadModel", "MixerModel")
(Block,) = FAMILY.load("Block", source="mamba_ssm.modules.block")
(Mamba2,) = FAMILY.load("Mamba2", source="mamba_ssm.modules.mamba2")
(Mamba,) = FAMILY.load("Mamba", source="mamba_ssm.modules.mamba_simple")
(MHA,) = FAMILY.load("MHA", source="mamba_ssm.modules.mha")
(GatedMLP,) = FAMILY.load("GatedMLP", source="mamba_ssm.modules.mlp")
(RMSNorm,) = FAMILY.load("RMSNorm", source="mamba_ssm.ops.triton.layer_norm")
(RMSNormGated,) = FAMILY.load("RMSNorm", source="mamba_ssm.ops.triton.layernorm_gated")

#: The names of the sizes of mamba-ssm's ``Mamba2``.
SSD_NAMES = SSDNames("d_ssm", "ngroups", "d_state", "nheads", "headdim", "dt_limit")


def _full_sequence_only(inference_params: Any, **options: Any) -> None:
    if inference_params is not None:
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without inference_params "
            "and pass the full prefix instead"
        )
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise NotImplementedError(
            f"packed or sharded sequences ({', '.join(given)}) are not supported; "
            "pass a (batch, seq, hidden) tensor"
        )


def residual_norm_forward(
    ops: BlockOps,
    norm: RMSNorm,
    x: Tensor,
    residual: Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's (optionally residual-adding) RMSNorm with the LN-rule."""
    x = ops.compute(x)
    if residual is not None:
        x = ops.add("residual", x, residual)
    out = ops.rms_norm("norm", x, norm.weight, norm.eps)
    return (out, x) if prenorm else out


def gated_norm_forward(ops: BlockOps, norm: RMSNormGated, x: Tensor, z: Tensor | None = None):
    """Gated RMSNorm of Mamba-2 with the identity, half and LN-rules."""
    return gated_norm(
        ops, x, z, norm.weight, norm.eps, norm.group_size, norm_before_gate=norm.norm_before_gate
    )


def _direction(mixer: Mamba, suffix: str) -> SelectiveParams:
    return selective_params(
        getattr(mixer, f"conv1d{suffix}"),
        getattr(mixer, f"x_proj{suffix}"),
        getattr(mixer, f"dt_proj{suffix}"),
        getattr(mixer, f"A{suffix}_log"),
        getattr(mixer, f"D{suffix}"),
        mixer.dt_rank,
        mixer.d_state,
    )


def mamba_forward(
    ops: BlockOps, mixer: Mamba, hidden_states: Tensor, inference_params: Any = None
) -> Tensor:
    """Mamba-1 mixer (and Vim's bidirectional variant) with the SiLU, SSM and half rules."""
    _full_sequence_only(inference_params)
    check_silu(mixer, mixer.activation)
    x, z = mixer.in_proj(ops.compute(hidden_states)).chunk(2, dim=-1)
    y = selective_branch(ops, _direction(mixer, ""), x, z)
    bidirectional = getattr(mixer, "bimamba_type", "none")
    if bidirectional == "v2":
        backward = selective_branch(ops, _direction(mixer, "_b"), x, z, suffix="_b", reverse=True)
        y = ops.add("directions", y, backward)
        if getattr(mixer, "if_devide_out", False):
            y = ops.scale("halve", y, 0.5)
    elif bidirectional not in ("none", None):
        raise NotImplementedError(f"bimamba_type {bidirectional!r} is not supported (only v2)")
    return mixer.out_proj(y)


def mamba2_forward(
    ops: BlockOps,
    mixer: Mamba2,
    u: Tensor,
    seqlen: int | None = None,
    seq_idx: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    inference_params: Any = None,
) -> Tensor:
    """Mamba-2 mixer with the SiLU, SSM, half and LN-rules."""
    _full_sequence_only(inference_params, seqlen=seqlen, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
    if getattr(mixer, "process_group", None) is not None:
        raise NotImplementedError("tensor-parallel Mamba2 mixers are not supported")
    check_silu(mixer, mixer.activation)
    params = ssd_params(mixer, DEFAULT_CHUNK_SIZE, gated_norm=mixer.rmsnorm, names=SSD_NAMES)
    return ssd_mixer(ops, params, ops.compute(u))


def ssm_gated_mlp_forward(ops: BlockOps, mlp: GatedMLP, x: Tensor) -> Tensor:
    """Gated MLP ``fc2(y * silu(gate))`` with the identity and half rules."""
    if mlp.activation is not F.silu:
        raise NotImplementedError(
            f"MambaLRP supports SiLU-gated MLPs only, got activation {mlp.activation!r}"
        )
    y, gate = mlp.fc1(x).chunk(2, dim=-1)
    return mlp.fc2(ops.gate("gate", y, ops.activation("act", gate, "silu")))


def mha_forward(ops: BlockOps, mha: MHA, x: Tensor, inference_params: Any = None) -> Tensor:
    """mamba-ssm's multi-head attention (the attention layers of ``attn_layer_idx``):
    ``in_proj``, the optional causal depthwise conv over ``[q, k, v]`` (linear), softmax
    attention with grouped key/value heads (AttnLRP or CP-LRP), and the optional gated-MLP
    channels ``up * silu(gate)`` (identity and half rules) next to the attention output."""
    _full_sequence_only(inference_params)
    if mha.rotary_emb_dim > 0:
        raise NotImplementedError(
            f"MHA with rotary_emb_dim={mha.rotary_emb_dim} is not supported (its rotary "
            "embedding is flash-attn's CUDA kernel); explain attention layers without it"
        )
    x = ops.compute(x)
    batch, length, _ = x.shape
    projected = mha.in_proj(x)
    qkv, mlp = projected.split([projected.shape[-1] - mha.mlp_dim, mha.mlp_dim], dim=-1)
    if mha.d_conv > 0:
        qkv = ops.causal_conv(mha.conv1d, qkv)
    widths = [mha.num_heads * mha.head_dim] + [mha.num_heads_kv * mha.head_dim] * 2
    q, k, v = (
        t.view(batch, length, -1, mha.head_dim).transpose(1, 2) for t in qkv.split(widths, dim=-1)
    )
    scaling = mha.head_dim**-0.5 if mha.softmax_scale is None else mha.softmax_scale
    context = ops.attention("attention", q, k, v, None, scaling, mha.causal and length > 1)
    context = context.transpose(1, 2).flatten(2)
    if mha.mlp_dim > 0:
        up, gate = mlp.chunk(2, dim=-1)
        gated = ops.gate("mlp_gate", up, ops.activation("mlp_act", gate, "silu"))
        context = torch.cat([context, gated], dim=-1)
    return mha.out_proj(context)


def _residual_dtype(residual: Tensor, residual_in_fp32: bool) -> Tensor:
    if residual_in_fp32:
        return residual.to(torch.promote_types(residual.dtype, torch.float32))
    return residual


def block_forward(
    ops: BlockOps,
    block: Block,
    hidden_states: Tensor,
    residual: Tensor | None = None,
    inference_params: Any = None,
    **mixer_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """mamba-ssm's add-norm-mix block; returns ``(mixer output, residual stream)``."""
    hidden_states = ops.compute(hidden_states)
    residual = hidden_states if residual is None else ops.add("residual", hidden_states, residual)
    hidden_states = block.mixer(
        block.norm(residual), inference_params=inference_params, **mixer_kwargs
    )
    residual = _residual_dtype(residual, block.residual_in_fp32)
    if block.mlp is not None:
        residual = ops.add("mlp_residual", hidden_states, residual)
        hidden_states = block.mlp(block.norm2(residual))
        residual = _residual_dtype(residual, block.residual_in_fp32)
    return hidden_states, residual


def mixer_model_forward(
    ops: BlockOps,
    backbone: MixerModel,
    input_ids: Tensor | None = None,
    inference_params: Any = None,
    inputs_embeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    use_cache: bool | None = None,
    **mixer_kwargs: Any,
) -> Tensor:
    """Backbone of ``MambaLMHeadModel`` on token ids or on ``inputs_embeds``.

    ``attention_mask`` is accepted for the default forward of
    :class:`~captum_mamba.MambaLRP` only when it masks nothing: mamba-ssm models have
    no padding mask.
    """
    if attention_mask is not None and not bool((attention_mask == 1).all()):
        raise NotImplementedError(
            "mamba-ssm models take no attention mask; explain unpadded sequences one by one"
        )
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    hidden_states = backbone.embedding(input_ids) if inputs_embeds is None else inputs_embeds
    residual = None
    for layer in backbone.layers:
        hidden_states, residual = layer(
            hidden_states, residual, inference_params=inference_params, **mixer_kwargs
        )
    residual = hidden_states if residual is None else ops.add("residual", hidden_states, residual)
    return backbone.norm_f(residual)


RESIDUAL_NORM_SITES = {"norm": "rms_norm", "residual": "add"}

MAMBA_SSM = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(RMSNorm, residual_norm_forward, RESIDUAL_NORM_SITES),
            ModuleHandler(RMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(
                Mamba,
                mamba_forward,
                {
                    **SELECTIVE_SITES,
                    **suffixed(SELECTIVE_SITES, "_b"),
                    "directions": "add",
                    "halve": "scale",
                },
                (
                    "in_proj",
                    "conv1d",
                    "x_proj",
                    "dt_proj",
                    "conv1d_b",
                    "x_proj_b",
                    "dt_proj_b",
                    "out_proj",
                ),
            ),
            ModuleHandler(
                Mamba2,
                mamba2_forward,
                {**SSD_SITES, **SSD_EXTRA_SITES},
                ("in_proj", "conv1d", "norm", "out_proj"),
            ),
            ModuleHandler(
                MHA,
                mha_forward,
                {"attention": "attention", "mlp_act": "activation", "mlp_gate": "gate"},
                ("in_proj", "conv1d", "out_proj"),
            ),
            ModuleHandler(
                GatedMLP,
                ssm_gated_mlp_forward,
                {"act": "activation", "gate": "gate"},
                ("fc1", "fc2"),
            ),
            ModuleHandler(
                Block,
                block_forward,
                {"residual": "add", "mlp_residual": "add"},
                ("norm", "mixer", "norm2", "mlp"),
                role="block",
            ),
            ModuleHandler(
                MixerModel,
                mixer_model_forward,
                {"residual": "add"},
                ("embedding", "layers", "norm_f"),
            ),
        ),
        containers=(MambaLMHeadModel,),
        blocks=(Mamba, Mamba2, MHA),
    )
)
