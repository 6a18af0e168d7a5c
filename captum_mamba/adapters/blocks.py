"""Architecture adapters: the maths of the blocks, written once for every family.

- :func:`selective_branch`: the Mamba-1 branch ``scan(silu(conv(x))) * silu(z)``, used by
  transformers' ``MambaMixer``, ``FalconMambaMixer``, ``JambaMambaMixer`` and the per-head
  ``ZambaMambaMixer``, mamba-ssm's ``Mamba`` (both directions of Vim's fork) and this
  package's Vision Mamba; :func:`selective_params` builds its parameters from one
  projection to ``(dt, B, C)``, :func:`mamba_mixer_forward` is transformers' mixer.
- :func:`ssd_mixer`: the Mamba-2 mixer, used by transformers' ``Mamba2Mixer`` (and the
  Mamba-2 mixers of Bamba, Nemotron-H, Granite-4.0, Zamba2, Falcon-H1) and mamba-ssm's
  ``Mamba2``; :func:`ssd_params` reads transformers' mixers, :func:`ssd_mixer_forward`
  is their forward.
- :func:`residual_block`: the pre-norm residual block ``x + mixer(norm(x))``.
- :func:`rms_norm_forward`, :func:`weightless_norm_forward`, :func:`gated_norm_forward`:
  transformers' RMS norms.
- :func:`self_attention`: the softmax self-attention of transformers' hybrid and
  transformer models (rotary embedding, grouped heads, the model's mask).
- :func:`glu`: the gated product ``act(gate) * up`` of gated MLPs and experts;
  :func:`gated_mlp_forward` the MLP ``down(act(gate(x)) * up(x))``.
- :func:`mixture_of_experts`: routed experts combined by their router weights.
- :func:`shared_attention` and :func:`shared_mamba_layer_forward`: the shared attention
  block and the Mamba layers of Zamba and Zamba2.
- :class:`HybridModel`: the model and language-model forwards that Falcon-H1 and
  Granite-4.0 re-implement (their embedding and logit multipliers are operations).

Each is written in the operations of :class:`~captum_mamba.adapters.backend.BlockOps`
and so runs on every backend. The site names used here are listed in
:data:`SELECTIVE_SITES`, :data:`SSD_SITES`, :data:`RESIDUAL_SITES`,
:data:`ATTENTION_SITES`, :data:`GLU_SITES` and :data:`MOE_SITES` for the handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.families import optional, resolve

#: Sites of :func:`selective_branch` (with ``suffix=""``).
SELECTIVE_SITES = {
    "conv_act": "silu",
    "time_step": "time_step",
    "ssm": "ssm",
    "gate_act": "silu",
    "gate": "gate",
}
#: Sites of :func:`ssd_mixer` with a gated-norm module.
SSD_SITES = {"conv_act": "silu", "time_step": "time_step", "ssd": "ssd"}
#: Further sites of :func:`ssd_mixer` without a gated norm (``gate``) and with gated-MLP
#: channels (``mlp_gate``).
SSD_EXTRA_SITES = {"gate_act": "silu", "gate": "gate", "mlp_act": "silu", "mlp_gate": "gate"}
#: Sites of :func:`residual_block`.
RESIDUAL_SITES = {"residual": "add"}


def suffixed(sites: dict[str, str], suffix: str) -> dict[str, str]:
    """``sites`` with ``suffix`` appended to every name (second direction of a mixer)."""
    return {f"{name}{suffix}": kind for name, kind in sites.items()}


def mask_padding(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero the padded positions of ``x`` ``(batch, seq, ...)``, as transformers does."""
    if attention_mask is None:
        return x
    return x * attention_mask[:, :, None].to(x.dtype)


def check_silu(mixer: nn.Module, activation: Any) -> None:
    """Refuse a mixer whose activation is not SiLU (the identity rule assumes it)."""
    if activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"MambaLRP supports SiLU mixers only, {type(mixer).__name__} uses {activation!r}"
        )


def check_no_past_state(mixer: nn.Module, kwargs: Mapping[str, Any]) -> None:
    """Refuse a filled generation cache (``cache`` or ``cache_params`` in ``kwargs``):
    explanations run over whole sequences."""
    cache = kwargs.get("cache", kwargs.get("cache_params"))
    has_previous = getattr(cache, "has_previous_state", None)
    if callable(has_previous) and has_previous(mixer.layer_idx):
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without a filled cache "
            "(use_cache=False) and pass the full prefix instead"
        )


#: Sites of a module that is one operation (a norm).
NORM_SITES = {"": "rms_norm"}


def norm_epsilon(norm: nn.Module) -> float:
    """The epsilon of a transformers RMS norm (``variance_epsilon``, or ``eps``)."""
    return norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps


def rms_norm_forward(ops: BlockOps, norm: nn.Module, hidden_states: Tensor) -> Tensor:
    """RMSNorm ``weight * x / rms(x)`` of transformers with the LN-rule."""
    x = ops.compute(hidden_states)
    return ops.rms_norm("", x, norm.weight, norm_epsilon(norm))


def weightless_norm_forward(ops: BlockOps, norm: nn.Module, hidden_states: Tensor) -> Tensor:
    """RMSNorm without weight ``x / rms(x)`` (FalconMamba's norms of ``dt``, ``B`` and
    ``C``) with the LN-rule."""
    return ops.rms_norm("", hidden_states, None, norm_epsilon(norm))


@dataclass(frozen=True)
class SelectiveParams:
    """Parameters of one Mamba-1 branch, whatever the names in its family.

    Args:
        conv (nn.Module): causal depthwise ``nn.Conv1d``.
        coefficients (Callable): ``coefficients(x) -> (raw_dt, B, C)`` from the scan
            input ``(batch, seq, channels)``: the time step before its bias and
            softplus ``(batch, seq, channels)``, and ``B``, ``C`` as
            :meth:`~captum_mamba.adapters.backend.BlockOps.ssm` takes them (one per
            position, or one per head of channels). Written in the operations of the
            calling module where the projections are operations (per-head
            projections).
        A_log (Tensor): ``(channels, state)``, ``A = -exp(A_log)``.
        D (Tensor): ``(channels,)`` skip weight.
        dt_bias (Tensor, optional): ``(channels,)`` time-step bias, where the
            projection does not add it. Default: None.
    """

    conv: nn.Module
    coefficients: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    A_log: Tensor
    D: Tensor
    dt_bias: Tensor | None = None


def selective_params(
    conv: nn.Module,
    x_proj: nn.Module,
    dt_proj: nn.Module,
    A_log: Tensor,
    D: Tensor,
    dt_rank: int,
    state: int,
    norms: tuple[nn.Module, nn.Module, nn.Module] | None = None,
) -> SelectiveParams:
    """Parameters of a Mamba-1 branch that projects ``(dt_low, B, C) = x_proj(x)`` and
    ``raw_dt = dt_proj(dt_low)`` (with its bias).

    Args:
        conv (nn.Module): causal depthwise ``nn.Conv1d``.
        x_proj (nn.Module): projection of the scan input to ``(dt_low, B, C)``.
        dt_proj (nn.Module): projection of ``dt_low`` to the time step.
        A_log (Tensor): ``(channels, state)``.
        D (Tensor): ``(channels,)``.
        dt_rank (int): width of ``dt_low``.
        state (int): SSM state size.
        norms (tuple of nn.Module, optional): norms of ``dt_low``, ``B`` and ``C``
            (FalconMamba, Jamba). Default: None.

    Returns:
        SelectiveParams: the branch's parameters.
    """

    def coefficients(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        low, B, C = torch.split(x_proj(x), [dt_rank, state, state], dim=-1)
        if norms is not None:
            low, B, C = norms[0](low), norms[1](B), norms[2](C)
        return dt_proj(low), B, C

    return SelectiveParams(conv, coefficients, A_log, D)


def selective_branch(
    ops: BlockOps,
    params: SelectiveParams,
    x: Tensor,
    z: Tensor,
    attention_mask: Tensor | None = None,
    suffix: str = "",
    reverse: bool = False,
) -> Tensor:
    r"""``(scan(silu(conv(x))) + D x) * silu(z)`` with the SiLU, SSM and half rules.

    Args:
        ops (BlockOps): the operations of the calling module.
        params (SelectiveParams): the branch's parameters.
        x (Tensor): ``(batch, seq, channels)`` branch input (before the causal conv).
        z (Tensor): ``(batch, seq, channels)`` gate input.
        attention_mask (Tensor, optional): ``(batch, seq)`` padding mask applied to the
            scan input. Default: None.
        suffix (str, optional): appended to the site names. Default: ``""``.
        reverse (bool, optional): scan the sequence backwards (flip, scan, flip back).
            Default: False.

    Returns:
        Tensor: ``(batch, seq, channels)`` gated SSM output.
    """
    if reverse:
        x, z = x.flip(1), z.flip(1)
        attention_mask = None if attention_mask is None else attention_mask.flip(1)
    x = mask_padding(ops.silu(f"conv_act{suffix}", ops.causal_conv(params.conv, x)), attention_mask)
    raw, B, C = params.coefficients(x)
    dt = ops.time_step(f"time_step{suffix}", raw, params.dt_bias)
    A = -torch.exp(params.A_log.to(x.dtype))
    y = ops.ssm(f"ssm{suffix}", x, dt, A, B, C, params.D, reverse=reverse)
    out = ops.gate(f"gate{suffix}", y, ops.silu(f"gate_act{suffix}", z))
    return out.flip(1) if reverse else out


def mamba_mixer_forward(
    ops: BlockOps,
    mixer: nn.Module,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """transformers' Mamba-1 mixer (full-sequence form; with the ``dt``, ``B`` and ``C``
    norms of FalconMamba and Jamba where it has them) with the SiLU, SSM and half
    rules."""
    check_no_past_state(mixer, kwargs)
    check_silu(mixer, mixer.activation)
    hidden_states = ops.compute(hidden_states)
    x, z = mixer.in_proj(mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)
    norms = None
    if hasattr(mixer, "dt_layernorm"):
        norms = (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm)
    params = selective_params(
        mixer.conv1d,
        mixer.x_proj,
        mixer.dt_proj,
        mixer.A_log,
        mixer.D,
        mixer.time_step_rank,
        mixer.ssm_state_size,
        norms,
    )
    return mixer.out_proj(selective_branch(ops, params, x, z, attention_mask))


#: Children transformers' Mamba-1 mixer calls.
MAMBA_MIXER_CALLS = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj")
#: Further children of a mixer with ``dt``, ``B`` and ``C`` norms.
MIXER_NORM_CALLS = ("dt_layernorm", "b_layernorm", "c_layernorm")


@dataclass(frozen=True)
class SSDParams:
    """Parameters of one Mamba-2 mixer, whatever the names in its family.

    Args:
        in_proj (nn.Module or Callable): projection to ``[z0, x0, z, xBC, dt]``
            (``z0``/``x0``: the optional gated-MLP channels of mamba-ssm, ``d_mlp`` each);
            a function of the operations where the family scales it (Falcon-H1).
        conv (nn.Module): causal depthwise ``nn.Conv1d`` over ``xBC``.
        out_proj (nn.Module): output projection.
        norm (nn.Module or None): gated norm ``norm(y, z)``; None to gate with
            ``y * silu(z)`` only.
        dt_bias (Tensor): ``(heads,)`` time-step bias.
        A_log (Tensor): ``(heads,)``, ``A = -exp(A_log)``.
        D (Tensor): ``(heads,)`` or ``(heads * head_dim,)`` skip weight.
        inner (int): SSM channels (``heads * head_dim``).
        groups (int): groups of heads sharing ``B`` and ``C``.
        state (int): state size.
        heads (int): number of heads.
        head_dim (int): channels per head.
        chunk_size (int): time steps per chunk of the scan.
        dt_limit (tuple of float): clamp of the time step.
    """

    in_proj: nn.Module | Callable[[Tensor], Tensor]
    conv: nn.Module
    out_proj: nn.Module
    norm: nn.Module | None
    dt_bias: Tensor
    A_log: Tensor
    D: Tensor
    inner: int
    groups: int
    state: int
    heads: int
    head_dim: int
    chunk_size: int
    dt_limit: tuple[float, float]


def ssd_mixer(
    ops: BlockOps, params: SSDParams, u: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    r"""Mamba-2 mixer with the SiLU, SSM, half and LN-rules.

    Computes, from the normalised block input ``u``::

        z0, x0, z, xBC, dt = in_proj(u)
        x, B, C = silu(conv(xBC))
        dt = clamp(softplus(dt + dt_bias), *dt_limit)
        y = ssd(x; exp(dt A), dt B, C) + D x
        out = out_proj(cat(x0 * silu(z0), norm(y, z)))

    Args:
        ops (BlockOps): the operations of the calling module.
        params (SSDParams): the mixer's parameters.
        u (Tensor): ``(batch, seq, hidden)`` mixer input.
        attention_mask (Tensor, optional): ``(batch, seq)`` padding mask. Default: None.

    Returns:
        Tensor: ``(batch, seq, hidden)`` mixer output.
    """
    p = params
    batch, length, _ = u.shape
    projected = p.in_proj(mask_padding(u, attention_mask))
    xbc_width = p.inner + 2 * p.groups * p.state
    d_mlp = (projected.shape[-1] - p.inner - xbc_width - p.heads) // 2
    z0, x0, z, xBC, dt = torch.split(projected, [d_mlp, d_mlp, p.inner, xbc_width, p.heads], dim=-1)
    xBC = mask_padding(ops.silu("conv_act", ops.causal_conv(p.conv, xBC)), attention_mask)
    x, B, C = torch.split(xBC, [p.inner, p.groups * p.state, p.groups * p.state], dim=-1)
    dt = ops.time_step("time_step", dt, p.dt_bias, *p.dt_limit)
    A = -torch.exp(p.A_log.to(x.dtype))
    D = p.D if p.D.numel() == p.heads else p.D.reshape(p.heads, p.head_dim)
    y = ops.ssd(
        "ssd",
        x.reshape(batch, length, p.heads, p.head_dim),
        dt,
        A,
        B.reshape(batch, length, p.groups, p.state),
        C.reshape(batch, length, p.groups, p.state),
        D,
        p.chunk_size,
    ).reshape(batch, length, p.inner)
    y = p.norm(y, z) if p.norm is not None else ops.gate("gate", y, ops.silu("gate_act", z))
    if d_mlp > 0:
        y = torch.cat([ops.gate("mlp_gate", x0, ops.silu("mlp_act", z0)), y], dim=-1)
    return p.out_proj(y)


@dataclass(frozen=True)
class SSDNames:
    """The attribute names of a Mamba-2 mixer's sizes in its library (the parameters are
    ``in_proj``, ``conv1d``, ``out_proj``, ``norm``, ``dt_bias``, ``A_log``, ``D`` in all).

    Args:
        inner (str): SSM channels.
        groups (str): groups of heads sharing ``B`` and ``C``.
        state (str): state size.
        heads (str): number of heads.
        head_dim (str): channels per head.
        dt_limit (str): clamp of the time step.
    """

    inner: str
    groups: str
    state: str
    heads: str
    head_dim: str
    dt_limit: str


#: The names of transformers' Mamba-2 mixers (``Mamba2Mixer`` and the mixers of Bamba,
#: Nemotron-H, Granite-4.0, Zamba2, Falcon-H1).
TRANSFORMERS_SSD_NAMES = SSDNames(
    "intermediate_size", "n_groups", "ssm_state_size", "num_heads", "head_dim", "time_step_limit"
)


def ssd_params(
    mixer: nn.Module,
    chunk_size: int | None = None,
    in_proj: nn.Module | Callable[[Tensor], Tensor] | None = None,
    gated_norm: bool = True,
    names: SSDNames = TRANSFORMERS_SSD_NAMES,
) -> SSDParams:
    """Parameters of a Mamba-2 mixer.

    Args:
        mixer (nn.Module): the mixer.
        chunk_size (int, optional): time steps per chunk of the scan. Default: the
            mixer's ``chunk_size``.
        in_proj (nn.Module or Callable, optional): the input projection, where the
            family scales it. Default: ``mixer.in_proj``.
        gated_norm (bool, optional): gate with the mixer's gated norm; False to gate
            with ``y * silu(z)`` only. Default: True.
        names (SSDNames, optional): the names of its sizes. Default: transformers'.

    Returns:
        SSDParams: the mixer's parameters.
    """
    return SSDParams(
        in_proj=mixer.in_proj if in_proj is None else in_proj,
        conv=mixer.conv1d,
        out_proj=mixer.out_proj,
        norm=mixer.norm if gated_norm else None,
        dt_bias=mixer.dt_bias,
        A_log=mixer.A_log,
        D=mixer.D,
        inner=getattr(mixer, names.inner),
        groups=getattr(mixer, names.groups),
        state=getattr(mixer, names.state),
        heads=getattr(mixer, names.heads),
        head_dim=getattr(mixer, names.head_dim),
        chunk_size=mixer.chunk_size if chunk_size is None else chunk_size,
        dt_limit=tuple(getattr(mixer, names.dt_limit)),
    )


def ssd_mixer_forward(
    ops: BlockOps,
    mixer: nn.Module,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """transformers' Mamba-2 mixer (full-sequence form) with the SiLU, SSM, half and
    LN-rules."""
    check_no_past_state(mixer, kwargs)
    check_silu(mixer, mixer.activation)
    return ssd_mixer(ops, ssd_params(mixer), ops.compute(hidden_states), attention_mask)


#: Children transformers' Mamba-2 mixers call.
SSD_CALLS = ("in_proj", "conv1d", "norm", "out_proj")


def residual_block(
    ops: BlockOps, block: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any
) -> Tensor:
    """Pre-norm residual block ``x + block.mixer(block.norm(x), ...)``, in the input dtype
    (at least float32; transformers casts the residual to float32, which would round a
    float64 explanation)."""
    x = ops.compute(hidden_states)
    return ops.add("residual", x, block.mixer(block.norm(x), *args, **kwargs))


def gated_norm(
    ops: BlockOps,
    y: Tensor,
    z: Tensor | None,
    weight: Tensor | None,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool = False,
) -> Tensor:
    """Gated RMSNorm of Mamba-2: ``norm(y * silu(z))`` or ``norm(y) * silu(z)``, with the
    identity, half and LN-rules (sites ``gate_act``, ``gate`` and ``norm``)."""
    if z is None:
        return ops.rms_norm("norm", y, weight, eps, group_size)
    if norm_before_gate:
        normed = ops.rms_norm("norm", y, weight, eps, group_size)
        return ops.gate("gate", normed, ops.silu("gate_act", z))
    gated = ops.gate("gate", y, ops.silu("gate_act", z))
    return ops.rms_norm("norm", gated, weight, eps, group_size)


#: Sites of :func:`gated_norm`.
GATED_NORM_SITES = {"norm": "rms_norm", "gate_act": "silu", "gate": "gate"}


def gated_norm_forward(
    ops: BlockOps, norm: nn.Module, hidden_states: Tensor, gate: Tensor | None = None
) -> Tensor:
    """transformers' gated RMSNorm ``weight * norm_groups(y * silu(gate))`` (or
    ``norm_before_gate``: ``weight * norm_groups(y) * silu(gate)``) with the SiLU, half
    and LN-rules.

    The groups are ``group_size`` channels wide, or ``n_groups`` per row (Falcon-H1); a
    norm with neither normalises the whole row (Mamba-2 before transformers 5.23)."""
    group_size = getattr(norm, "group_size", None)
    if group_size is None and hasattr(norm, "n_groups"):
        group_size = hidden_states.shape[-1] // norm.n_groups
    before = getattr(norm, "norm_before_gate", False)
    epsilon = norm.variance_epsilon
    return gated_norm(ops, hidden_states, gate, norm.weight, epsilon, group_size, before)


# --- the gated delta rule (Gated DeltaNet, Kimi Delta Attention) ------------------------

#: transformers' ``eps`` of the l2 normalisation of delta-rule queries and keys.
L2_EPS = 1e-6
#: Sites of :func:`gated_delta_rule`.
DELTA_RULE_SITES = {"q_norm": "rms_norm", "k_norm": "rms_norm", "delta_rule": "delta_rule"}
#: Sites of :func:`delta_rule_gates`.
DELTA_GATE_SITES = {"beta": "activation", "time_step": "time_step", "decay": "scale"}


def gated_rms_norm_before_gate(
    ops: BlockOps, norm: nn.Module, hidden_states: Tensor, gate: Tensor
) -> Tensor:
    """transformers' gated RMSNorm of delta-rule layers, ``weight * norm(x) * silu(gate)``
    (``variance_epsilon``, ``activation``) with the LN-, identity and half rules (sites
    :data:`GATED_NORM_SITES`)."""
    check_silu(norm, norm.activation)
    return gated_norm(ops, hidden_states, gate, norm.weight, norm.variance_epsilon, None, True)


def l2_normalised(ops: BlockOps, site: str, x: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * x / sqrt(sum(x^2) + eps)`` over the last dimension (``d`` channels), as
    the RMSNorm ``x / sqrt(mean(x^2) + eps / d)`` with the constant weight
    ``scale / sqrt(d)``: LN-rule."""
    width = x.shape[-1]
    weight = torch.full((width,), scale * width**-0.5, dtype=x.dtype, device=x.device)
    return ops.rms_norm(site, x, weight, L2_EPS / width)


def delta_rule_gates(
    ops: BlockOps, a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The step size ``beta = sigmoid(b)`` and the log decay
    ``g = -exp(A_log) softplus(a + dt_bias)`` (sites :data:`DELTA_GATE_SITES`), from
    ``(batch, seq, heads[, dk])`` inputs (``A_log`` broadcast to ``a``).

    Returns:
        tuple of Tensor: ``(beta, g)`` with the sequence after the heads.
    """
    beta = ops.activation("beta", b, "sigmoid")
    return beta.transpose(1, 2), delta_log_decay(ops, a, dt_bias, A_log).transpose(1, 2)


def delta_log_decay(ops: BlockOps, a: Tensor, dt_bias: Tensor | None, A_log: Tensor) -> Tensor:
    """The log decay ``g = -exp(A_log) softplus(a + dt_bias)`` of a delta rule (sites
    ``time_step``, ``decay``), per head or per key channel (``A_log`` broadcast to
    ``a``)."""
    rate = -torch.exp(A_log.to(a.dtype))
    return ops.scale("decay", ops.time_step("time_step", a, dt_bias), rate)


def heads_first(x: Tensor, heads: int) -> Tensor:
    """``(batch, seq, heads * d)`` as ``(batch, heads, seq, d)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def gated_delta_rule(
    ops: BlockOps,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    key_heads: int,
    value_heads: int,
) -> Tensor:
    """The gated delta rule of transformers' delta-rule layers: ``q`` and ``k``
    l2-normalised (LN-rule), ``q`` scaled by ``dk^-1/2``, each query/key head serving
    ``value_heads / key_heads`` consecutive value heads (sites :data:`DELTA_RULE_SITES`).

    Args:
        ops (BlockOps): the operations of the layer.
        q (Tensor): ``(batch, seq, key_heads * dk)`` queries.
        k (Tensor): ``(batch, seq, key_heads * dk)`` keys.
        v (Tensor): ``(batch, seq, value_heads * dv)`` values.
        beta (Tensor): ``(batch, value_heads, seq)`` step sizes.
        log_decay (Tensor): ``(batch, value_heads, seq[, dk])`` log decays.
        key_heads (int): query/key heads.
        value_heads (int): value heads.

    Returns:
        Tensor: ``(batch, seq, value_heads, dv)``.
    """
    group = value_heads // key_heads
    q, k = (heads_first(t, key_heads).repeat_interleave(group, 1) for t in (q, k))
    q = l2_normalised(ops, "q_norm", q, q.shape[-1] ** -0.5)
    k = l2_normalised(ops, "k_norm", k)
    out = ops.delta_rule("delta_rule", q, k, heads_first(v, value_heads), beta, log_decay)
    return out.transpose(1, 2)


# --- softmax attention -----------------------------------------------------------------

#: Sites of :func:`self_attention` without a rotary embedding.
ATTENTION_SITES = {"attention": "attention"}
#: Sites of :func:`self_attention` with a rotary embedding of queries and keys.
ROTARY_ATTENTION_SITES = {"q_rotary": "rotary", "k_rotary": "rotary", "attention": "attention"}
#: Children :func:`self_attention` calls.
ATTENTION_CALLS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: Attention implementations of transformers whose mask :func:`attention_bias` reads.
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def attention_bias(
    module: nn.Module,
    attention_mask: Tensor | None,
    queries: Tensor,
    keys: Tensor,
    is_causal: bool | None = None,
) -> tuple[Tensor | None, bool]:
    """The additive mask of an attention layer, read as the model's attention function
    reads the mask the model passes (``config._attn_implementation``).

    - ``"eager"``: a float mask is added to the scores as it is (0 where attended, the
      dtype's lowest value elsewhere); None is no mask.
    - ``"sdpa"``: a boolean mask marks the attended keys; None means causal attention
      when the module is causal (``is_causal``) and there is more than one query, as in
      ``scaled_dot_product_attention(..., is_causal=True)``.

    Sliding windows, chunked attention and padding are part of the mask that
    transformers builds for the layer type, so they are reproduced exactly.

    Args:
        module (nn.Module): the attention module (``config``, ``is_causal``).
        attention_mask (Tensor or None): the mask the layer received.
        queries (Tensor): ``(batch, heads, queries, dim)``.
        keys (Tensor): ``(batch, kv_heads, keys, dim)``.
        is_causal (bool, optional): ``is_causal`` passed to the attention function,
            overriding the module's. Default: None.

    Returns:
        tuple: ``(bias, causal)``: a bias broadcastable to ``(batch, heads, queries,
        keys)`` in the dtype of ``queries`` (or None), and whether the attention is
        causal on top of it (a mask that is then never materialised).

    Raises:
        NotImplementedError: for other attention implementations (flash, flex), whose
            masks are not tensors of this form.
    """
    implementation = getattr(module.config, "_attn_implementation", None) or "eager"
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise NotImplementedError(
            f"{type(module).__name__} uses the attention implementation {implementation!r}; "
            "explanations support 'eager' and 'sdpa': load the model with "
            "attn_implementation='sdpa'"
        )
    dtype, lowest = queries.dtype, torch.finfo(queries.dtype).min
    length, width = queries.shape[-2], keys.shape[-2]
    if attention_mask is None:
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        return None, implementation == "sdpa" and causal and length > 1
    mask = attention_mask[..., :width]
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, lowest)
        return bias, False
    return mask.to(dtype), False


def check_no_cached_keys(module: nn.Module, cache: Any, layer_idx: int | None = None) -> None:
    """Refuse a cache holding keys of earlier tokens: explanations run over whole
    sequences. ``layer_idx`` is the cache layer of the call (default: the module's, for
    attention modules shared by several depths pass the one of the call)."""
    length = getattr(cache, "get_seq_length", None)
    layer = getattr(module, "layer_idx", 0) if layer_idx is None else layer_idx
    if callable(length) and length(layer) > 0:
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without a filled cache "
            "(use_cache=False) and pass the full prefix instead"
        )


def self_attention(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    cache: Any = None,
    project: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]] | None = None,
    output_proj: str = "o_proj",
    **kwargs: Any,
) -> tuple[Tensor, None]:
    r"""Softmax self-attention of transformers' attention modules, with AttnLRP or CP-LRP.

    Computes::

        q, k, v = q_proj(x), k_proj(x), v_proj(x)        (split into heads)
        q, k = rotary(q), rotary(k)                      (if position embeddings are given)
        out = o_proj(softmax(q k^T * scaling + mask) v)  (key/value heads shared by groups)

    Args:
        ops (BlockOps): the operations of the module.
        module (nn.Module): the attention module (``q_proj``, ``k_proj``, ``v_proj``,
            ``o_proj``, ``head_dim``, ``scaling``, ``config``).
        hidden_states (Tensor): ``(batch, seq, hidden)``.
        attention_mask (Tensor, optional): the mask the model built for the layer.
            Default: None.
        position_embeddings (tuple of Tensor, optional): ``(cos, sin)`` of the rotary
            embedding. Default: None (no rotary embedding).
        cache (optional): must hold no keys yet. Default: None.
        project (Callable, optional): ``project(x) -> (q, k, v)`` before the split
            into heads, for modules that compute more than the three projections
            (Zamba2's per-depth adapters, Falcon-H1's key multiplier), written in the
            operations of ``ops``. Default: None (``q_proj``, ``k_proj``, ``v_proj``).
        output_proj (str, optional): the name of the output projection. Default:
            ``"o_proj"``.
        **kwargs: further arguments of the module's forward (``is_causal`` is read).

    Returns:
        tuple: ``(output, None)`` like the modules (no attention weights returned).
    """
    check_no_cached_keys(module, cache)
    x = ops.compute(hidden_states)
    batch, length, _ = x.shape
    shape = (batch, length, -1, module.head_dim)
    if project is None:
        projected = module.q_proj(x), module.k_proj(x), module.v_proj(x)
    else:
        projected = project(x)
    q, k, v = (t.view(shape).transpose(1, 2) for t in projected)
    if position_embeddings is not None:
        cos, sin = position_embeddings
        q, k = ops.rotary("q_rotary", q, cos, sin), ops.rotary("k_rotary", k, cos, sin)
    bias, causal = attention_bias(module, attention_mask, q, k, kwargs.get("is_causal"))
    out = ops.attention("attention", q, k, v, bias, module.scaling, causal)
    output = getattr(module, output_proj)
    return output(out.transpose(1, 2).reshape(batch, length, -1)), None


# --- gated MLPs and mixtures of experts ---------------------------------------------------

#: Activation modules of transformers' ``ACT2FN`` by the name of their function in
#: :data:`captum_mamba.rules.functional.ACTIVATIONS` (those the installed transformers
#: defines).
_ACTIVATION_MODULES: dict[type, str] = {
    nn.SiLU: "silu",
    nn.ReLU: "relu",
    **{
        cls: function
        for name, function in (
            ("SiLUActivation", "silu"),
            ("ReLUSquaredActivation", "relu2"),
            ("GELUActivation", "gelu"),
            ("GELUTanh", "gelu_pytorch_tanh"),
        )
        if (cls := optional("transformers.activations", name)) is not None
    },
}


def activation_name(module: nn.Module, act_fn: Any) -> str:
    """The name of the elementwise activation ``act_fn`` of ``module`` (an ``ACT2FN``
    module) for :meth:`~captum_mamba.adapters.backend.BlockOps.activation`.

    Raises:
        NotImplementedError: for an activation without an identity rule here.
    """
    cls = type(act_fn)
    known = [b for b in cls.__mro__ if b in _ACTIVATION_MODULES and cls.forward is b.forward]
    name = _ACTIVATION_MODULES[known[0]] if known else None
    if name is None:
        raise NotImplementedError(
            f"{type(module).__name__} uses the activation {type(act_fn).__name__}; the "
            f"identity rule supports {', '.join(sorted(set(_ACTIVATION_MODULES.values())))}"
        )
    return name


#: Sites of :func:`glu`.
GLU_SITES = {"act": "activation", "gate": "gate"}
#: Children :func:`gated_mlp_forward` calls.
GATED_MLP_CALLS = ("gate_proj", "up_proj", "down_proj")


def glu(ops: BlockOps, gate: Tensor, up: Tensor, function: str, suffix: str = "") -> Tensor:
    r"""Gated product ``act(gate) * up`` of a gated MLP (SwiGLU and friends): identity
    rule on the activation, half rule on the product (under the identity rule both
    factors are linear in the MLP input, so the product is homogeneous of degree two
    and Gradient x Input would count its relevance twice). ``suffix`` is appended to
    the site names (where the module has a child named ``gate``)."""
    return ops.gate(f"gate{suffix}", ops.activation(f"act{suffix}", gate, function), up)


def gated_mlp_forward(ops: BlockOps, mlp: nn.Module, x: Tensor) -> Tensor:
    """Gated MLP ``down(act(gate(x)) * up(x))`` (``gate_proj``, ``up_proj``,
    ``down_proj``, ``act_fn``) with the identity and half rules."""
    function = activation_name(mlp, mlp.act_fn)
    return mlp.down_proj(glu(ops, mlp.gate_proj(x), mlp.up_proj(x), function))


#: Sites of the routing, expert projections and mixture of :func:`mixture_of_experts`.
MOE_SITES = {
    "routing": "routing",
    "up": "grouped_linear",
    "act": "activation",
    "down": "grouped_linear",
    "mixture": "mixture",
}
#: Sites of :func:`mixture_of_experts` with gated experts.
GATED_MOE_SITES = {**MOE_SITES, "gate": "gate"}


@dataclass(frozen=True)
class Experts:
    """The routed experts of a mixture of experts, whatever the names in their family.

    Args:
        up (Tensor): ``(experts, width, in)`` input projections; for gated experts the
            gate and up projections stacked (``width = 2 * intermediate``, gate first).
        down (Tensor): ``(experts, out, intermediate)`` output projections.
        function (str): the activation (transformers name).
        gated (bool): ``down(act(gate) * up)`` rather than ``down(act(up))``.
    """

    up: Tensor
    down: Tensor
    function: str
    gated: bool


def mixture_of_experts(
    ops: BlockOps,
    experts: Experts,
    x: Tensor,
    select: Callable[[Tensor], Tensor],
    routed: Tensor,
    suffix: str = "",
) -> Tensor:
    r"""Routed experts combined by their router weights, with the router rule.

    Computes ``out[t] = sum_e w[t, e] expert_e(routed[t])`` over the experts ``e`` with a
    non-zero weight ``w = select(x)`` (the top-k of each token). The router weights
    feed the mixture, where the router rule treats them as constants: relevance flows
    into the selected experts only, in proportion to their weighted outputs, and is
    conserved exactly from the mixture to the experts' inputs (with bias-free
    experts: each expert is a gated or plain MLP under the identity and half rules).
    An expert whose weight is exactly zero contributes nothing and is not run.

    Args:
        ops (BlockOps): the operations of the mixture-of-experts module.
        experts (Experts): the expert weights.
        x (Tensor): ``(tokens, hidden)`` router input.
        select (Callable): ``select(x)`` -> ``(tokens, experts)`` router weights, zero
            for the experts a token is not sent to.
        routed (Tensor): ``(tokens, in)`` expert input (``x``, or its latent
            projection).
        suffix (str, optional): appended to every site name (:data:`MOE_SITES`, with
            :func:`suffixed`), where the module has a child of a site's name. Default:
            ``""``.

    Returns:
        Tensor: ``(tokens, out)``.
    """
    weights = ops.routing(f"routing{suffix}", x, select)
    with torch.no_grad():
        token, expert = weights.detach().nonzero().unbind(1)
        order = torch.argsort(expert, stable=True)
        token, expert = token[order], expert[order]
        sizes = torch.bincount(expert, minlength=experts.up.shape[0]).tolist()
    hidden = ops.grouped_linear(f"up{suffix}", routed[token], experts.up, sizes)
    if experts.gated:
        gate, up = hidden.chunk(2, dim=-1)
        hidden = glu(ops, gate, up, experts.function, suffix)
    else:
        hidden = ops.activation(f"act{suffix}", hidden, experts.function)
    values = ops.grouped_linear(f"down{suffix}", hidden, experts.down, sizes)
    return ops.mixture(f"mixture{suffix}", weights[token, expert], values, token, x.shape[0])


def gated_experts_forward(
    ops: BlockOps,
    moe: nn.Module,
    hidden_states: Tensor,
    router_weights: Callable[[nn.Module, Tensor], Tensor],
) -> Tensor:
    """transformers' mixture of gated-MLP experts (``moe.experts``: ``gate_up_proj``,
    ``down_proj``, ``act_fn``; ``moe.router``) with the router, identity and half rules.

    Args:
        ops (BlockOps): the operations of the mixture-of-experts module.
        moe (nn.Module): the module.
        hidden_states (Tensor): ``(batch, seq, hidden)``.
        router_weights (Callable): ``router_weights(router, x)`` -> ``(tokens, experts)``
            weights as the family's router computes them.

    Returns:
        Tensor: ``(batch, seq, hidden)``.
    """
    x = ops.compute(hidden_states)
    flat = x.reshape(-1, x.shape[-1])
    function = activation_name(moe.experts, moe.experts.act_fn)
    experts = Experts(moe.experts.gate_up_proj, moe.experts.down_proj, function, gated=True)
    out = mixture_of_experts(ops, experts, flat, lambda u: router_weights(moe.router, u), flat)
    return out.reshape(x.shape)


def top_k_dense(weights: Tensor, index: Tensor, experts: int) -> Tensor:
    """``(tokens, experts)`` router weights from the top-k ``weights`` and their expert
    ``index`` (both ``(tokens, k)``), zero elsewhere."""
    dense = weights.new_zeros(weights.shape[0], experts)
    return dense.scatter(1, index, weights)


def group_limited_sigmoid_router(router: nn.Module, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights of a DeepSeek-V3-style sigmoid router (Nemotron-H,
    Kimi-Linear): the ``topk_group`` groups with the largest sums of their two best
    bias-corrected scores, the ``top_k`` best scores inside them, renormalised
    (``norm_topk_prob``) and scaled by ``routed_scaling_factor``; zero elsewhere.

    Args:
        router (nn.Module): the router (``weight``, ``e_score_correction_bias``,
            ``num_experts``, ``num_group``, ``topk_group``, ``top_k``,
            ``norm_topk_prob``, ``routed_scaling_factor``).
        x (Tensor): ``(tokens, hidden)`` router input.

    Returns:
        Tensor: ``(tokens, experts)`` router weights.
    """
    experts, groups = router.num_experts, router.num_group
    scores = torch.sigmoid(F.linear(x, router.weight.to(x.dtype)))
    choice = scores + router.e_score_correction_bias.to(x.dtype)
    group_scores = choice.view(-1, groups, experts // groups).topk(2, dim=-1)[0].sum(-1)
    best = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
    allowed = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
    allowed = allowed.repeat_interleave(experts // groups, dim=1)
    index = torch.topk(choice.masked_fill(~allowed, float("-inf")), k=router.top_k, dim=-1)[1]
    weights = scores.gather(1, index)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return top_k_dense(weights * router.routed_scaling_factor, index, experts)


def unchanged_forward(ops: BlockOps, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The module's own forward, for modules whose output does not depend on the values
    of their tensor inputs (rotary position embeddings: site kind ``"constant"``)."""
    return type(module).forward(module, *args, **kwargs)


#: Sites of :func:`unchanged_forward`.
CONSTANT_SITES = {"": "constant"}


# --- the shared attention blocks of Zamba and Zamba2 ---------------------------------------


def shared_attention(
    ops: BlockOps,
    block: nn.Module,
    hidden_states: Tensor,
    original_hidden_states: Tensor | None,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """``norm(attn(norm([x, embeddings])))`` of a shared attention block (Zamba and
    Zamba2) at depth ``layer_idx``; ``kwargs`` go to the attention module.

    Args:
        ops (BlockOps): the operations of the block.
        block (nn.Module): the block (``input_layernorm``, ``self_attn``,
            ``pre_ff_layernorm``).
        hidden_states (Tensor): the hidden states ``x``, or their concatenation with the
            embeddings where the caller concatenates (Zamba from transformers 5.25).
        original_hidden_states (Tensor or None): the input embeddings; None where
            ``hidden_states`` is the concatenation.
        layer_idx (int): the depth of the call.
        attention_mask (Tensor, optional): the mask the model built. Default: None.
        cache (optional): must hold no keys yet. Default: None.
        **kwargs: further arguments of the attention module.

    Returns:
        Tensor: the normalised attention output, before the block's MLP.
    """
    check_no_cached_keys(block.self_attn, cache, layer_idx)
    x = ops.compute(hidden_states)
    if original_hidden_states is not None:
        x = torch.cat([x, ops.compute(original_hidden_states)], dim=-1)
    attended, _ = block.self_attn(
        block.input_layernorm(x), layer_idx=layer_idx, attention_mask=attention_mask, **kwargs
    )
    return block.pre_ff_layernorm(attended)


#: Children a shared attention block calls.
SHARED_BLOCK_CALLS = ("input_layernorm", "self_attn", "pre_ff_layernorm", "feed_forward")


def shared_mamba_layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    original_hidden_states: Tensor | None = None,
    layer_idx: int | None = None,
    attention_mask: Tensor | None = None,
    causal_mask: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_ids: Tensor | None = None,
    transformer_hidden_states: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba layer of Zamba and Zamba2 ``x + mamba(norm(x + t))``, ``t`` the shared
    block's contribution in a hybrid layer."""
    x = ops.compute(hidden_states)
    mixed = x
    if transformer_hidden_states is not None:
        mixed = ops.add("shared", x, transformer_hidden_states)
    out = layer.mamba(layer.input_layernorm(mixed), cache=cache, attention_mask=attention_mask)
    return ops.add("residual", x, out)


#: Sites of :func:`shared_mamba_layer_forward`.
SHARED_MAMBA_LAYER_SITES = {"shared": "add", "residual": "add"}


# --- the re-implemented model forwards of transformers hybrids -----------------------------

#: transformers' helpers that :class:`HybridModel` calls, as ``(module, name)``; a family
#: that uses it loads them at import (:meth:`HybridModel.check_helpers`), so that it is
#: unavailable, not broken, where a release lacks them.
HYBRID_MODEL_HELPERS = (
    ("transformers.masking_utils", "create_causal_mask"),
    ("transformers.masking_utils", "create_recurrent_attention_mask"),
)


def keep_logits(hidden_states: Tensor, logits_to_keep: int | Tensor) -> Tensor:
    """The positions of ``hidden_states`` whose logits a language model computes: the
    last ``logits_to_keep`` (all for 0), or the given indices."""
    index = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden_states[:, index, :]


#: Sites of :func:`soft_capped`.
SOFT_CAP_SITES = {"cap_in": "scale", "cap": "activation", "cap_out": "scale"}


def soft_capped(ops: BlockOps, logits: Tensor, cap: float) -> Tensor:
    """Soft-capped logits ``cap tanh(logits / cap)`` (RecurrentGemma, xLSTM): two scales
    around a tanh under the identity rule (sites :data:`SOFT_CAP_SITES`)."""
    capped = ops.activation("cap", ops.scale("cap_in", logits, 1.0 / cap), "tanh")
    return ops.scale("cap_out", capped, cap)


def whole_sequence_inputs(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None,
    attention_mask: Tensor | dict[str, Tensor] | None,
    position_ids: Tensor | None,
    cache: Any,
    inputs_embeds: Tensor | None,
) -> tuple[Tensor, Tensor, Mapping[str, Any]]:
    """The embedded input, the position ids and the mask of each layer type
    (``"full_attention"``, ``"linear_attention"``: transformers' causal and recurrent
    masks, built from keyword arguments as transformers >= 5.24 takes them) of a model
    with ``layer_types`` run on whole sequences without a cache (Qwen3-Next,
    OLMo-Hybrid, Kimi-Linear).

    Args:
        ops (BlockOps): the operations of the model.
        model (nn.Module): the model (``embed_tokens``, ``config``).
        input_ids (Tensor, optional): token ids.
        attention_mask (Tensor or dict, optional): the padding mask, or the masks by
            layer type.
        position_ids (Tensor, optional): positions (default: ``0 .. seq - 1``).
        cache (Any): must hold no keys (:func:`check_no_cached_keys`).
        inputs_embeds (Tensor, optional): embeddings given instead of ``input_ids``.

    Returns:
        tuple: ``(x, position_ids, masks)``.

    Raises:
        ValueError: unless exactly one of ``input_ids`` and ``inputs_embeds`` is given.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    check_no_cached_keys(model, cache)
    embeds = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    x = ops.compute(embeds)
    if position_ids is None:
        position_ids = torch.arange(x.shape[1], device=x.device)[None]
    masks = attention_mask
    if not isinstance(masks, dict):
        arguments = dict(
            config=model.config,
            inputs_embeds=x,
            attention_mask=masks,
            cache=None,
            position_ids=position_ids,
        )
        causal, recurrent = (resolve(*helper) for helper in HYBRID_MODEL_HELPERS)
        masks = {"full_attention": causal(**arguments), "linear_attention": recurrent(**arguments)}
    return x, position_ids, masks


def causal_lm_forward(
    ops: BlockOps,
    lm: nn.Module,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    labels: Tensor | None = None,
    use_cache: bool | None = None,
    output_router_logits: bool | None = None,
    logits_to_keep: int | Tensor = 0,
    **kwargs: Any,
) -> Any:
    """A transformers causal language model's forward without loss: ``lm_head`` of the
    last hidden states of ``lm.model`` (Qwen3-Next, OLMo-Hybrid, Kimi-Linear)."""
    if labels is not None or output_router_logits:
        raise NotImplementedError(
            f"explanations compute no loss; call {type(lm).__name__} without labels "
            "and output_router_logits"
        )
    outputs = lm.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        inputs_embeds=inputs_embeds,
        **kwargs,
    )
    logits = lm.lm_head(keep_logits(outputs.last_hidden_state, logits_to_keep))
    output = resolve("transformers.modeling_outputs", "CausalLMOutput")
    return output(logits=logits)


@dataclass(frozen=True)
class HybridModel:
    """The model and language-model forwards of a transformers hybrid whose embedding
    and logit multipliers are computed (Falcon-H1, Granite-4.0), for whole sequences
    without a cache: they are written once here and differ only in these fields.

    The model scales looked-up token embeddings by ``embedding_multiplier`` (an
    operation), builds transformers' causal and recurrent masks and the rotary
    embedding, runs the layers and the final norm; the language model multiplies the
    logits by a constant (an operation), so the explained logits are the model's.

    Args:
        final_norm (str): name of the model's final norm.
        layer_masks (Callable): ``layer_masks(model, index, masks)`` -> the mask
            arguments of layer ``index`` from ``{"full_attention": ...,
            "linear_attention": ...}``.
        logits_scale (Callable): ``logits_scale(lm)`` -> the factor of the logits.
        output (type): the model's output class.
        lm_output (type): the language model's output class.
        scale_given_embeddings (bool): whether given ``inputs_embeds`` are scaled too.
    """

    final_norm: str
    layer_masks: Callable[[nn.Module, int, Mapping[str, Any]], dict[str, Any]]
    logits_scale: Callable[[nn.Module], float]
    output: type
    lm_output: type
    scale_given_embeddings: bool

    @staticmethod
    def check_helpers() -> None:
        """Load the transformers helpers (:data:`HYBRID_MODEL_HELPERS`).

        Raises:
            FamilyUnavailable: where the installed release lacks one.
        """
        for module, name in HYBRID_MODEL_HELPERS:
            resolve(module, name)

    def model_forward(
        self,
        ops: BlockOps,
        model: nn.Module,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | dict[str, Tensor] | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """The model's forward for whole sequences (sites ``embedding_scale``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        check_no_cached_keys(model, cache)
        if inputs_embeds is None:
            x = ops.compute(model.embed_tokens(input_ids))
            x = ops.scale("embedding_scale", x, model.embedding_multiplier)
        elif self.scale_given_embeddings:
            x = ops.scale("embedding_scale", ops.compute(inputs_embeds), model.embedding_multiplier)
        else:
            x = ops.compute(inputs_embeds)
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)[None]
        masks = attention_mask
        if not isinstance(masks, dict):
            # config, inputs_embeds, attention_mask, no cache (``past_key_values`` before
            # transformers 5.24, ``cache`` since)
            arguments = (model.config, x, masks, None)
            causal, recurrent = (resolve(*helper) for helper in HYBRID_MODEL_HELPERS)
            masks = {
                "full_attention": causal(*arguments, position_ids=position_ids),
                "linear_attention": recurrent(*arguments, position_ids=position_ids),
            }
        position_embeddings = (
            None if model.rotary_emb is None else model.rotary_emb(x, position_ids)
        )
        for index, layer in enumerate(model.layers):
            out = layer(
                x,
                **self.layer_masks(model, index, masks),
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            x = out[0] if isinstance(out, tuple) else out
        return self.output(last_hidden_state=getattr(model, self.final_norm)(x))

    def model_calls(self) -> tuple[str, ...]:
        """Children :meth:`model_forward` calls."""
        return ("embed_tokens", "rotary_emb", "layers", self.final_norm)

    def lm_forward(
        self,
        ops: BlockOps,
        lm: nn.Module,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        """The language model's forward (site ``logits_scale``)."""
        if labels is not None or output_router_logits:
            raise NotImplementedError(
                f"explanations compute no loss; call {type(lm).__name__} without labels "
                "and output_router_logits"
            )
        outputs = lm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden = keep_logits(outputs.last_hidden_state, logits_to_keep)
        logits = ops.scale("logits_scale", lm.lm_head(hidden), self.logits_scale(lm))
        return self.lm_output(logits=logits)
