"""Architecture adapter for the ``mamba-ssm`` package (state-spaces/mamba):
``MambaLMHeadModel`` with Mamba-1 or Mamba-2 mixers, and stand-alone ``Mamba`` /
``Mamba2`` modules (or ``Block``, ``GatedMLP``, mamba-ssm's RMSNorms) in any network.

The rule forwards read the modules' parameters and compute with this package's own
scans (:func:`captum_mamba.ops.selective_scan` for Mamba-1, the SSD scan behind
:func:`captum_mamba.rules.functional.multihead_ssm` for Mamba-2), in plain PyTorch: they
run on CPU, where mamba-ssm's fused CUDA and Triton kernels do not. With all rules
off they compute the model's function, so a CPU forward pass of a mamba-ssm model is::

    with rules_applied(model, MambaRules.gradient_x_input()):
        logits = model(input_ids).logits

Rule assignment:

- ``RMSNorm`` (``mamba_ssm.ops.triton.layer_norm``), and the ``nn.LayerNorm`` of a
  ``Block`` or ``MixerModel``: LN-rule (``1 / std`` constant).
- ``Mamba``: identity rule on both SiLUs, SSM rule, half rule on ``y * silu(z)``. Vim's
  fork of mamba-ssm (``bimamba_type="v2"``: a second scan over the flipped sequence
  with parameters ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``) is
  supported: each direction gets the same rules and the outputs are added (halved
  with ``if_devide_out``).
- ``Mamba2``: identity rule on the SiLU after the causal conv, SSM rule on the
  multi-head scan; the gated RMSNorm ``norm(y * silu(z))`` (or ``norm(y) * silu(z)``)
  gets the identity, half and LN-rules; the optional gated-MLP channels
  ``x0 * silu(z0)`` the identity and half rules.
- ``GatedMLP``: identity and half rules on ``y * silu(gate)``.
- ``Block`` and ``MixerModel``: the residual stream, re-implemented to skip the fused
  Triton add+norm and to keep a float64 explanation in float64 (``residual_in_fp32``
  only widens half-precision residuals). ``MixerModel`` also accepts
  ``inputs_embeds``, so ``MambaLRP(model)`` explains embeddings of a
  ``MambaLMHeadModel`` directly.

Importing this module imports ``mamba_ssm``, which needs its compiled extension
``selective_scan_cuda`` (a stand-in module that only has to be importable is enough
on CPU; see the project's documentation). Importing ``mamba_ssm`` also makes
transformers' Mamba models bind to mamba-ssm's CUDA kernels, so keep it out of
processes that run transformers' Mamba on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mamba_ssm.models.mixer_seq_simple import MixerModel
from mamba_ssm.modules.block import Block
from mamba_ssm.modules.mamba2 import Mamba2
from mamba_ssm.modules.mamba_simple import Mamba
from mamba_ssm.modules.mlp import GatedMLP
from mamba_ssm.ops.triton.layer_norm import RMSNorm
from mamba_ssm.ops.triton.layernorm_gated import RMSNorm as RMSNormGated
from torch import Tensor, nn

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.selective_branch import gated_selective_branch
from captum_mamba.ops.ssd_scan import DEFAULT_CHUNK_SIZE
from captum_mamba.rules import MambaRules, gated_product, rms_norm, silu
from captum_mamba.rules.functional import gated_rms_norm, multihead_ssm


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


def _norm(norm: nn.Module, rules: MambaRules, x: Tensor) -> Tensor:
    """RMSNorm or LayerNorm of ``x`` with the LN-rule, in the dtype of ``x``."""
    weight = None if norm.weight is None else norm.weight.to(x.dtype)
    if isinstance(norm, nn.LayerNorm):
        out = rms_norm(x - x.mean(-1, keepdim=True), weight, norm.eps, rules.norm)
        return out if norm.bias is None else out + norm.bias.to(x.dtype)
    if isinstance(norm, RMSNorm):
        return rms_norm(x, weight, norm.eps, rules.norm)
    raise NotImplementedError(f"MambaLRP has no rule for the norm {type(norm).__name__}")


def rms_norm_forward(
    norm: RMSNorm,
    rules: MambaRules,
    x: Tensor,
    residual: Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's (optionally residual-adding) RMSNorm with the LN-rule."""
    if residual is not None:
        x = x + residual
    out = _norm(norm, rules, x)
    return (out, x) if prenorm else out


def gated_norm_forward(
    norm: RMSNormGated, rules: MambaRules, x: Tensor, z: Tensor | None = None
) -> Tensor:
    """Gated RMSNorm of Mamba-2 with the identity, half and LN-rules."""
    weight = norm.weight.to(x.dtype)
    group_size = norm.group_size or x.shape[-1]
    if z is None or not norm.norm_before_gate:
        return gated_rms_norm(
            x, z, weight, norm.eps, group_size, rules.silu, rules.gate, rules.norm
        )
    normed = gated_rms_norm(x, None, weight, norm.eps, group_size, False, False, rules.norm)
    return gated_product(normed, silu(z, rules.silu), rules.gate)


def _mamba1_direction(mixer: Mamba, rules: MambaRules, x: Tensor, z: Tensor, suffix: str) -> Tensor:
    """Gated SSM output of one scan direction (parameters ``conv1d{suffix}`` etc.)."""

    def coefficients(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        time_step, B, C = torch.split(
            getattr(mixer, f"x_proj{suffix}")(x), [mixer.dt_rank, mixer.d_state, mixer.d_state], -1
        )
        dt = F.softplus(getattr(mixer, f"dt_proj{suffix}")(time_step))
        return dt, -torch.exp(getattr(mixer, f"A{suffix}_log").to(x.dtype)), B, C

    conv, D = getattr(mixer, f"conv1d{suffix}"), getattr(mixer, f"D{suffix}")
    return gated_selective_branch(rules, x, z, conv, coefficients, D)


def mamba_forward(
    mixer: Mamba, rules: MambaRules, hidden_states: Tensor, inference_params: Any = None
) -> Tensor:
    """Mamba-1 mixer (and Vim's bidirectional variant) with the SiLU, SSM and half rules."""
    _full_sequence_only(inference_params)
    if mixer.activation not in ("silu", "swish"):
        raise NotImplementedError(f"MambaLRP supports SiLU mixers only, got {mixer.activation!r}")
    x, z = mixer.in_proj(hidden_states).chunk(2, dim=-1)
    y = _mamba1_direction(mixer, rules, x, z, "")
    bidirectional = getattr(mixer, "bimamba_type", "none")
    if bidirectional == "v2":
        y = y + _mamba1_direction(mixer, rules, x.flip(1), z.flip(1), "_b").flip(1)
        if getattr(mixer, "if_devide_out", False):
            y = 0.5 * y
    elif bidirectional not in ("none", None):
        raise NotImplementedError(f"bimamba_type {bidirectional!r} is not supported (only v2)")
    return mixer.out_proj(y)


def mamba2_forward(
    mixer: Mamba2,
    rules: MambaRules,
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
    zxbcdt = mixer.in_proj(u)
    groups, state, heads = mixer.ngroups, mixer.d_state, mixer.nheads
    d_mlp = (zxbcdt.shape[-1] - 2 * mixer.d_ssm - 2 * groups * state - heads) // 2
    z0, x0, z, xBC, dt = torch.split(
        zxbcdt, [d_mlp, d_mlp, mixer.d_ssm, mixer.d_ssm + 2 * groups * state, heads], dim=-1
    )
    length = u.shape[1]
    xBC = mixer.conv1d(xBC.transpose(1, 2))[..., :length].transpose(1, 2)
    xBC = silu(xBC, rules.silu)
    x, B, C = torch.split(xBC, [mixer.d_ssm, groups * state, groups * state], dim=-1)
    dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype)).clamp(*mixer.dt_limit)
    A = -torch.exp(mixer.A_log.to(x.dtype))
    D = mixer.D.to(x.dtype)
    heads_x = x.unflatten(-1, (heads, mixer.headdim))
    y = multihead_ssm(
        heads_x,
        dt,
        A,
        B.unflatten(-1, (groups, state)),
        C.unflatten(-1, (groups, state)),
        None if mixer.D_has_hdim else D,
        rules.ssm,
        DEFAULT_CHUNK_SIZE,
    ).flatten(-2)
    if mixer.D_has_hdim:
        y = y + x * D
    gate = silu(z, rules.silu)
    y = mixer.norm(y, z) if mixer.rmsnorm else gated_product(y, gate, rules.gate)
    if d_mlp > 0:
        y = torch.cat([gated_product(x0, silu(z0, rules.silu), rules.gate), y], dim=-1)
    return mixer.out_proj(y)


def gated_mlp_forward(mlp: GatedMLP, rules: MambaRules, x: Tensor) -> Tensor:
    """Gated MLP ``fc2(y * silu(gate))`` with the identity and half rules."""
    if mlp.activation is not F.silu:
        raise NotImplementedError(
            f"MambaLRP supports SiLU-gated MLPs only, got activation {mlp.activation!r}"
        )
    y, gate = mlp.fc1(x).chunk(2, dim=-1)
    return mlp.fc2(gated_product(y, silu(gate, rules.silu), rules.gate))


def _residual_dtype(residual: Tensor, residual_in_fp32: bool) -> Tensor:
    if residual_in_fp32:
        return residual.to(torch.promote_types(residual.dtype, torch.float32))
    return residual


def block_forward(
    block: Block,
    rules: MambaRules,
    hidden_states: Tensor,
    residual: Tensor | None = None,
    inference_params: Any = None,
    **mixer_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """mamba-ssm's add-norm-mix block; returns ``(mixer output, residual stream)``."""
    if not isinstance(block.mixer, (Mamba, Mamba2)):
        raise NotImplementedError(
            f"MambaLRP has no rule for the {type(block.mixer).__name__} mixer of a hybrid "
            "mamba-ssm model; only Mamba and Mamba2 mixers are supported"
        )
    residual = hidden_states if residual is None else hidden_states + residual
    hidden_states = block.mixer(
        _norm(block.norm, rules, residual), inference_params=inference_params, **mixer_kwargs
    )
    residual = _residual_dtype(residual, block.residual_in_fp32)
    if block.mlp is not None:
        residual = hidden_states + residual
        hidden_states = block.mlp(_norm(block.norm2, rules, residual))
        residual = _residual_dtype(residual, block.residual_in_fp32)
    return hidden_states, residual


def mixer_model_forward(
    backbone: MixerModel,
    rules: MambaRules,
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
    residual = hidden_states if residual is None else hidden_states + residual
    return _norm(backbone.norm_f, rules, residual)


MAMBA_SSM = register_adapter(
    ArchitectureAdapter(
        name="mamba-ssm",
        models=("MambaLMHeadModel (Mamba-1 and Mamba-2 mixers)", "models containing Mamba/Mamba2"),
        blocks=(Mamba, Mamba2),
        forwards={
            RMSNorm: rms_norm_forward,
            RMSNormGated: gated_norm_forward,
            Mamba: mamba_forward,
            Mamba2: mamba2_forward,
            GatedMLP: gated_mlp_forward,
            Block: block_forward,
            MixerModel: mixer_model_forward,
        },
    )
)
