"""Rules: the MambaLRP propagation rules as forward functions with a modified backward.

Each function returns exactly the value of the original operation; switching its rule
on changes only which factors are treated as constants in the backward pass. With a
rule off, the function is the plain operation (its gradient is the true gradient).
Gradient x Input on a forward pass built from these functions is MambaLRP.

A function's argument ``rule`` is the value of the setting of
:class:`~captum_mamba.rules.MambaRules` that governs it (named in its docstring; the table
of operation kinds, :data:`captum_mamba.adapters.backend.KINDS`, links each operation to
its setting). Softmax attention takes the two mechanisms its setting chooses between
(AttnLRP's uniform rule, CP-LRP's constant weights) as two flags: its setting is not a
switch but a choice of rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops import selective_scan
from captum_mamba.ops.attention import causal_fill, chunked_attention, sdpa_attention
from captum_mamba.ops.attention import choose as choose_attention
from captum_mamba.ops.delta_rule import delta_rule
from captum_mamba.ops.mamba3 import mamba3_coefficients, mamba3_scan
from captum_mamba.ops.mlstm import mlstm_denominator, mlstm_gates, mlstm_scan
from captum_mamba.ops.rglru import rglru_gates, rglru_scan
from captum_mamba.ops.ssd_scan import ssd_scan
from captum_mamba.ops.wkv import wkv_chunked
from captum_mamba.rules.linear import LinearRule


def rms_norm(x: Tensor, weight: Tensor | None, eps: float, rule: bool) -> Tensor:
    r"""RMSNorm ``weight * x / rms(x)``; the LN-rule treats ``1 / rms(x)`` as a constant.

    Args:
        x (Tensor): input, normalised over its last dimension.
        weight (Tensor or None): elementwise scale, or None for no scale.
        eps (float): added to the mean square before the square root.
        rule (bool): the LN-rule (setting ``norm``): detach the normalising factor from
            the backward.

    Returns:
        Tensor: the normalised input, same shape as ``x``.
    """
    inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if rule:
        inv_rms = inv_rms.detach()
    out = x * inv_rms
    return out if weight is None else weight * out


def grouped_rms_norm(
    x: Tensor, weight: Tensor | None, eps: float, group_size: int | None, rule: bool
) -> Tensor:
    r"""RMSNorm over groups of ``group_size`` channels, ``weight * norm_groups(x)``, with the
    LN-rule on ``1 / rms`` of each group.

    Args:
        x (Tensor): input ``(..., channels)``.
        weight (Tensor or None): ``(channels,)`` scale, or None for no scale.
        eps (float): added to the mean square before the square root.
        group_size (int or None): channels normalised together (``channels`` must be a
            multiple); None for all of them.
        rule (bool): the LN-rule (setting ``norm``): detach the normalising factors from
            the backward.

    Returns:
        Tensor: the normalised input, same shape as ``x``.
    """
    if group_size is None or group_size == x.shape[-1]:
        return rms_norm(x, weight, eps, rule)
    out = rms_norm(x.unflatten(-1, (-1, group_size)), None, eps, rule).flatten(-2)
    return out if weight is None else weight * out


def layer_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, rule: bool
) -> Tensor:
    r"""LayerNorm ``weight * (x - mean(x)) / std(x) + bias``; the LN-rule treats ``1 / std(x)``
    as a constant.

    Centring is linear, so with the rule the map is affine in ``x`` and the bias absorbs
    its share of the relevance, as the bias of a linear layer does.

    Args:
        x (Tensor): input, normalised over its last dimension.
        weight (Tensor or None): elementwise scale, or None for no scale.
        bias (Tensor or None): elementwise shift, or None for no shift.
        eps (float): added to the variance before the square root.
        rule (bool): the LN-rule (setting ``norm``): detach the normalising factor from
            the backward.

    Returns:
        Tensor: the normalised input, same shape as ``x``.
    """
    out = rms_norm(x - x.mean(-1, keepdim=True), weight, eps, rule)
    return out if bias is None else out + bias


def add(a: Tensor, b: Tensor) -> Tensor:
    """Sum ``a + b`` (a residual connection or the sum of two branches); relevance is
    shared in proportion to the contributions (Gradient x Input, LRP-0)."""
    return a + b


def scale(x: Tensor, factor: float | Tensor) -> Tensor:
    """Product ``factor * x`` with a constant (a number or a tensor broadcast to ``x``);
    relevance passes unchanged."""
    return x * factor


def time_step(
    raw: Tensor, bias: Tensor | None = None, low: float = 0.0, high: float = float("inf")
) -> Tensor:
    """Time step ``clamp(softplus(raw + bias), low, high)`` of a selective SSM.

    It feeds ``exp(dt A)`` and ``dt B``, which the SSM rule treats as constants, so with
    that rule it receives no relevance; with the rule off its true gradient is used.

    Args:
        raw (Tensor): pre-activation time step.
        bias (Tensor, optional): bias added before the softplus. Default: None.
        low (float, optional): lower clamp. Default: 0.
        high (float, optional): upper clamp. Default: inf.

    Returns:
        Tensor: positive time steps, same shape as ``raw``.
    """
    dt = F.softplus(raw if bias is None else raw + bias)
    if low > 0.0 or high < float("inf"):
        dt = torch.clamp(dt, min=low, max=high)
    return dt


def silu(x: Tensor, rule: bool) -> Tensor:
    r"""SiLU ``x * sigmoid(x)``; the identity rule treats ``sigmoid(x)`` as a constant.

    Args:
        x (Tensor): input.
        rule (bool): the identity rule (setting ``silu``): detach the sigmoid factor, so
            relevance passes the activation unchanged (``R_in = R_out``).

    Returns:
        Tensor: ``silu(x)``.
    """
    if rule:
        return x * torch.sigmoid(x).detach()
    return F.silu(x)


def gated_product(y: Tensor, gate: Tensor, rule: bool) -> Tensor:
    r"""Gate ``y * gate``; the half rule passes half of the relevance to each factor.

    Both factors depend (linearly, under the other rules) on the input, so the product
    is homogeneous of degree two and Gradient x Input would count its relevance
    twice. The half rule uses ``0.5 * (y * gate) + 0.5 * [y * gate]_const``, whose
    value equals ``y * gate`` exactly.

    Args:
        y (Tensor): SSM output.
        gate (Tensor): gate activation, same shape as ``y``.
        rule (bool): the half rule (setting ``gate``).

    Returns:
        Tensor: ``y * gate``.
    """
    out = y * gate
    if rule:
        return 0.5 * out + 0.5 * out.detach()
    return out


def selective_ssm(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, rule: bool
) -> Tensor:
    r"""Selective SSM ``y = scan(x; exp(dt A), dt B, C) + D x``; the SSM rule keeps the
    input-dependent ``exp(dt A)``, ``dt B`` and ``C`` constant in the backward pass.

    Relevance then flows only through ``x``; the state matrix ``A`` and the skip
    weight ``D`` are parameters and never receive relevance.

    ``B`` and ``C`` are shared by all channels, or by consecutive groups of channels
    (the multi-head Mamba-1 mixer of Zamba gives each head its own): group ``g`` is
    then scanned on its own over channels ``g * channels / groups`` onwards.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` positive time steps.
        A (Tensor): ``(channels, state)`` continuous state matrix.
        B (Tensor): ``(batch, length, state)`` or ``(batch, length, groups, state)``
            input projection.
        C (Tensor): output projection, the shape of ``B``.
        D (Tensor or None): ``(channels,)`` skip weight.
        rule (bool): the SSM rule (setting ``ssm``): detach ``dt``, ``A``, ``B`` and ``C``.

    Returns:
        Tensor: ``(batch, length, channels)`` SSM output.
    """
    if rule:
        dt, A, B, C = dt.detach(), A.detach(), B.detach(), C.detach()
    if B.dim() == 3:
        y = selective_scan(x, dt, A, B, C)
    else:
        width = x.shape[-1] // B.shape[2]
        parts = [
            selective_scan(
                x[..., g * width : (g + 1) * width],
                dt[..., g * width : (g + 1) * width],
                A[g * width : (g + 1) * width],
                B[:, :, g],
                C[:, :, g],
            )
            for g in range(B.shape[2])
        ]
        y = torch.cat(parts, dim=-1)
    return y if D is None else y + x * D


def multihead_ssm(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    rule: bool,
    chunk_size: int,
) -> Tensor:
    r"""Mamba-2 SSM ``y = ssd(x; exp(dt A), dt B, C) + D x`` with one scalar decay per head;
    the SSM rule keeps the input-dependent ``exp(dt A)``, ``dt B`` and ``C`` constant.

    Relevance then flows only through ``x``; ``A`` and ``D`` are parameters and never
    receive relevance.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` scan input.
        dt (Tensor): ``(batch, length, heads)`` positive time steps.
        A (Tensor): ``(heads,)`` continuous decay rates.
        B (Tensor): ``(batch, length, groups, state)`` input projection, shared by the
            ``heads // groups`` consecutive heads of a group.
        C (Tensor): ``(batch, length, groups, state)`` output projection.
        D (Tensor or None): ``(heads,)`` or ``(heads, head_dim)`` skip weight.
        rule (bool): the SSM rule (setting ``ssm``): detach ``dt``, ``A``, ``B`` and ``C``.
        chunk_size (int): time steps per chunk of the scan.

    Returns:
        Tensor: ``(batch, length, heads, head_dim)`` SSM output.
    """
    if rule:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    y = ssd_scan(x, dt, A.detach() if rule else A, B, C, chunk_size)
    if D is None:
        return y
    return y + x * (D[:, None] if D.dim() == 1 else D)


def rg_lru(
    x: Tensor,
    input_weight: Tensor,
    input_bias: Tensor,
    recurrent_weight: Tensor,
    recurrent_bias: Tensor,
    rate: Tensor,
    rule: bool,
) -> Tensor:
    r"""Real-gated linear recurrent unit (Griffin's RG-LRU) of a sequence that starts at
    its first position: ``h[t] = a[t] h[t-1] + sqrt(1 - a[t]^2) i[t] x[t]`` with
    ``a[t] = exp(-rate r[t])`` and the gates ``i = sigmoid(x W_i + b_i)``,
    ``r = sigmoid(x W_r + b_r)`` (block-diagonal per head).

    The SSM rule keeps the input-dependent decay ``a``, the normaliser
    ``sqrt(1 - a^2)`` and both gates constant in the backward pass (as ``exp(dt A)``
    of Mamba): the unit is then linear in ``x`` with constant coefficients, relevance
    flows through ``x`` only and is conserved.

    Args:
        x (Tensor): ``(batch, length, channels)`` the unit's input.
        input_weight (Tensor): ``(heads, width, width)`` input-gate weights.
        input_bias (Tensor): ``(heads, width)`` input-gate bias.
        recurrent_weight (Tensor): ``(heads, width, width)`` recurrence-gate weights.
        recurrent_bias (Tensor): ``(heads, width)`` recurrence-gate bias.
        rate (Tensor): ``(channels,)`` positive decay rates ``c * softplus(Lambda)``.
        rule (bool): the SSM rule (setting ``ssm``): the gates (so ``a`` and the
            normaliser) are computed from a detached ``x``.

    Returns:
        Tensor: ``(batch, length, channels)`` the states ``h``.
    """
    gated = x.detach() if rule else x
    gates = rglru_gates(gated, input_weight, input_bias, recurrent_weight, recurrent_bias)
    return rglru_scan(x, *gates, rate.detach() if rule else rate)


def mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    igate: Tensor,
    fgate: Tensor,
    gate_cap: float | None,
    eps: float,
    chunk_size: int | None,
    uniform_rule: bool,
    constant_keys: bool,
) -> Tensor:
    r"""The mLSTM cell of xLSTM (:mod:`captum_mamba.ops.mlstm`):
    ``h[t] = q[t]^T C[t] / (max(|q[t]^T n[t]|, exp(-m[t])) + eps)`` with the exponential
    input gate, the sigmoid forget gate and their max-stabiliser ``m``.

    Both rules keep the gates (so the decays ``exp(ig[s] + b[t] - b[s] - m[t])``, the
    stabiliser included) constant, as the SSM rule keeps ``exp(dt A)``, and the
    normaliser ``max(|q^T n|, exp(-m)) + eps`` constant, as the LN-rule keeps ``1 / rms``.
    The output is then the trilinear form ``h_t = sum_s (q_t . k_s) c_ts v_s`` of the
    queries, keys and values with constant coefficients ``c``:

    - the uniform rule (``uniform_rule``, AttnLRP-style): each of the three factors of
      every term ``q k v`` gets a third of its relevance (Gradient x Input counts each
      term three times, once per factor), computed as ``1/3 h + 2/3 [h]const``;
      relevance is conserved exactly;
    - the CP-style rule (``constant_keys``): queries and keys are constants too, ``h``
      is linear in ``v``, relevance flows through the values only and is conserved.

    Args:
        q (Tensor): ``(batch, heads, length, d_qk)`` queries (unscaled).
        k (Tensor): ``(batch, heads, length, d_qk)`` keys.
        v (Tensor): ``(batch, heads, length, d_v)`` values.
        igate (Tensor): ``(batch, heads, length)`` input-gate pre-activations.
        fgate (Tensor): ``(batch, heads, length)`` forget-gate pre-activations.
        gate_cap (float or None): soft cap of the gate pre-activations; None for none.
        eps (float): the normaliser's epsilon.
        chunk_size (int or None): time steps per chunk of the scan; None for the
            sequential reference.
        uniform_rule (bool): the uniform rule on ``q``, ``k``, ``v`` (setting
            ``attention=True``).
        constant_keys (bool): the CP-style rule (``attention="cp_lrp"``; takes
            precedence).

    Returns:
        Tensor: ``(batch, heads, length, d_v)``.
    """
    rule = uniform_rule or constant_keys
    if rule:
        igate, fgate = igate.detach(), fgate.detach()
    if constant_keys:
        q, k = q.detach(), k.detach()
    log_i, log_f = mlstm_gates(igate, fgate, gate_cap)
    values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    read_out, m = mlstm_scan(q, k, values, log_i, log_f, chunk_size)
    numerator = read_out[..., :-1]
    denominator = mlstm_denominator(read_out[..., -1], m, eps)[..., None]
    if rule:
        denominator = denominator.detach()
    if uniform_rule and not constant_keys:
        numerator = _gradient_scaled(numerator, 1.0 / 3.0)
    return numerator / denominator


def mamba3_ssm(
    x: Tensor,
    B: Tensor,
    C: Tensor,
    dt: Tensor,
    decay: Tensor,
    trap: Tensor,
    angle: Tensor,
    dt_bias: Tensor,
    B_bias: Tensor,
    C_bias: Tensor,
    D: Tensor,
    x_weight: Tensor | None,
    a_floor: float,
    pairwise: bool,
    chunk_size: int,
    rule: bool,
) -> Tensor:
    r"""The Mamba-3 recurrence (:mod:`captum_mamba.ops.mamba3`): trapezoid rule, state
    rotated by data-dependent angles, SISO or MIMO.

    The SSM rule keeps every input-dependent coefficient constant in the backward pass:
    the decay ``exp(A dt)``, the trapezoid weights ``lam dt`` and ``(1 - lam) dt alpha``,
    the rotated ``B`` and ``C`` (so the rotary angles). The recurrence is then linear in
    the values ``x`` with constant coefficients (the MIMO up-projection is a constant
    weight), relevance flows through ``x`` only and is conserved.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` values.
        B (Tensor): ``(batch, length, ranks, groups, state)`` normalised input projection.
        C (Tensor): like ``B``, the output projection.
        dt (Tensor): ``(batch, length, heads)`` raw time steps.
        decay (Tensor): ``(batch, length, heads)`` raw decay rates.
        trap (Tensor): ``(batch, length, heads)`` raw trapezoid weights.
        angle (Tensor): ``(batch, length, angles)`` raw rotary angle rates.
        dt_bias (Tensor): ``(heads,)``.
        B_bias (Tensor): ``(heads, ranks, state)``.
        C_bias (Tensor): ``(heads, ranks, state)``.
        D (Tensor): ``(heads,)`` skip weights.
        x_weight (Tensor or None): ``(ranks, heads, head_dim)`` MIMO up-projection; None
            for SISO.
        a_floor (float): smallest decay rate ``-A``.
        pairwise (bool): rotary pairs ``(2i, 2i+1)`` (SISO) or ``(i, i + state/2)``
            (MIMO).
        chunk_size (int): time steps per chunk of the scan.
        rule (bool): the SSM rule (setting ``ssm``): the coefficients are computed from
            detached inputs.

    Returns:
        Tensor: ``(batch, length, ranks, heads, head_dim)`` the output of every rank.
    """
    inputs = (B, C, dt, decay, trap, angle, dt_bias, B_bias, C_bias)
    if rule:
        inputs = tuple(t.detach() for t in inputs)
    coefficients = mamba3_coefficients(*inputs, a_floor, pairwise)
    return mamba3_scan(x, *coefficients, D, x_weight, chunk_size)


def wkv(
    k: Tensor,
    v: Tensor,
    time_decay: Tensor,
    time_first: Tensor,
    uniform_rule: bool,
    constant_weights: bool,
) -> Tensor:
    r"""RWKV-4's WKV: per channel, the weighted mean
    ``sum_s exp(l[t, s]) v[s] / sum_s exp(l[t, s])`` over ``s <= t`` with
    ``l[t, s] = k[s] - (t - 1 - s) exp(time_decay)`` and ``l[t, t] = k[t] + time_first``
    (:mod:`captum_mamba.ops.wkv`), with the rule of softmax attention that its setting
    ``attention`` selects.

    WKV is softmax attention of each channel over its own keys: the weights
    ``a[t, s] = exp(l[t, s]) / sum_s exp(l[t, s])`` are a softmax of the keys plus a
    position bias made of the parameters ``time_decay`` and ``time_first`` (the decays
    are parameters, constants of the backward under either rule), the denominator is
    the softmax's normaliser. CP-LRP (``constant_weights``) keeps the weights constant,
    numerator's ``exp(k)`` and denominator alike: the output is then a fixed convex
    combination of the values, relevance flows through ``v`` only and is conserved
    exactly. AttnLRP (``uniform_rule``) applies the uniform rule to the product
    ``a[t, s] v[s]``: half of the gradient to the values, half through the softmax
    (Gradient x Input of the softmax, AttnLRP's softmax rule) to the keys; the position
    bias of the exponents is a constant, whose share of the softmax's linearisation is
    absorbed, so AttnLRP conserves only approximately. With both off, the true gradient.

    Args:
        k (Tensor): ``(batch, length, channels)`` keys.
        v (Tensor): ``(batch, length, channels)`` values.
        time_decay (Tensor): ``(channels,)`` log decay rates.
        time_first (Tensor): ``(channels,)`` the bonus of the current position.
        uniform_rule (bool): AttnLRP's uniform rule on ``weights * v``.
        constant_weights (bool): CP-LRP: the weights are constants (takes precedence).

    Returns:
        Tensor: ``(batch, length, channels)``.
    """
    if uniform_rule or constant_weights:
        time_decay, time_first = time_decay.detach(), time_first.detach()
    if constant_weights:
        return wkv_chunked(k.detach(), v, time_decay, time_first)
    factor, _ = attention_gradient_scales(uniform_rule, constant_weights)
    return _gradient_scaled(wkv_chunked(k, v, time_decay, time_first), factor)


def _gelu_ratio(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_tanh_ratio(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _relu_ratio(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def _relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _ratio(f: Tensor, x: Tensor, at_zero: float) -> Tensor:
    """``f / x`` elementwise, ``at_zero`` where ``x`` is exactly zero."""
    zero = x == 0
    return torch.where(zero, at_zero, f / torch.where(zero, 1.0, x))


def _tanh_ratio(x: Tensor) -> Tensor:
    return _ratio(torch.tanh(x), x, 1.0)


def _sigmoid_ratio(x: Tensor) -> Tensor:
    return _ratio(torch.sigmoid(x), x, 0.0)


def _leaky_relu_ratio(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, negative_slope))


#: Elementwise activations ``f(x) = x * r(x)`` by their transformers name: ``(f, r)``.
#: ``leaky_relu``'s two functions take the slope for negative inputs as a second
#: argument (default 0.01).
ACTIVATIONS: dict[str, tuple[Callable[..., Tensor], Callable[..., Tensor]]] = {
    "silu": (F.silu, torch.sigmoid),
    "swish": (F.silu, torch.sigmoid),
    "relu": (F.relu, _relu_ratio),
    "relu2": (_relu2, F.relu),
    "gelu": (F.gelu, _gelu_ratio),
    "gelu_pytorch_tanh": (_gelu_tanh, _gelu_tanh_ratio),
    "leaky_relu": (F.leaky_relu, _leaky_relu_ratio),
    "tanh": (torch.tanh, _tanh_ratio),
    "sigmoid": (torch.sigmoid, _sigmoid_ratio),
}


def activation(x: Tensor, function: str, rule: bool, negative_slope: float = 0.01) -> Tensor:
    r"""Elementwise activation ``f(x) = x * r(x)``; the identity rule treats the ratio
    ``r(x) = f(x) / x`` as a constant.

    With the rule, relevance passes the activation unchanged (``R_in = R_out``, Eq. 9 of
    AttnLRP). ``r`` is written in closed form where there is one (``sigmoid`` for SiLU,
    ``Phi`` for GELU, ``relu`` for the squared ReLU ``relu(x)^2``, ``1`` or the slope for
    the leaky ReLU), else as ``f(x) / x`` with its limit at ``x = 0`` (``tanh``: 1;
    ``sigmoid``, which is not zero at 0: 0); where an input is exactly zero, ``f(0)``
    is kept as a constant (``sigmoid(0) = 1/2`` passes no relevance, as a bias would
    not), so the forward value is unchanged. The squared ReLU is the
    product ``relu(x) * relu(x)`` of two factors that depend on the same input: its
    uniform rule (half of the relevance to each factor, each factor passing its half on
    as a ReLU does) gives the same ``R_in = R_out``.

    Args:
        x (Tensor): input.
        function (str): ``"silu"`` (``"swish"``), ``"relu"``, ``"relu2"``, ``"gelu"``,
            ``"gelu_pytorch_tanh"``, ``"leaky_relu"``, ``"tanh"`` or ``"sigmoid"``
            (transformers' ``ACT2FN`` names).
        rule (bool): the identity rule (setting ``activation``): detach ``r(x)``.
        negative_slope (float, optional): slope of ``"leaky_relu"`` for negative inputs;
            the other functions ignore it. Default: 0.01.

    Returns:
        Tensor: ``f(x)``.

    Raises:
        NotImplementedError: for another activation.
    """
    try:
        plain, ratio = ACTIVATIONS[function]
    except KeyError:
        raise NotImplementedError(
            f"the identity rule supports the activations {', '.join(ACTIVATIONS)}; got {function!r}"
        ) from None
    slope = (negative_slope,) if function == "leaky_relu" else ()
    if rule:
        # f(0) is a constant where x is exactly zero (sigmoid's 1/2 would be lost as 0 * r).
        return torch.where(x == 0, plain(x.new_zeros(()), *slope), x * ratio(x, *slope).detach())
    return plain(x, *slope)


def _repeat_heads(x: Tensor, heads: int) -> Tensor:
    """``(batch, kv_heads, len, dim)`` keys or values for ``heads`` query heads (grouped-
    and multi-query attention: query head ``h`` reads key/value head ``h // group``)."""
    group = heads // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def attention_gradient_scales(uniform_rule: bool, constant_weights: bool) -> tuple[float, float]:
    r"""The two factors by which the rules of softmax attention rescale its gradient.

    Both rules change only constants of the backward pass of ``out = softmax(s) v``
    with ``s = q k^T * scaling + bias``: the gradient ``g`` of ``out`` enters the
    attention as ``a g`` and the gradient of the product ``q k^T`` leaves it multiplied
    by ``b`` (the softmax keeps its true gradient), so that

    ``dv = a P^T g``, ``dS = b * scaling * P o (a g v^T - rowsum(a g o out))``,
    ``dq = dS k``, ``dk = dS^T q``.

    AttnLRP's uniform rule on ``weights v`` and on ``q k^T`` is ``(a, b) = (1/2, 1/2)``;
    CP-LRP's constant weights are ``(1, 0)``; no rule is ``(1, 1)``.

    Args:
        uniform_rule (bool): AttnLRP's uniform rule on the two products.
        constant_weights (bool): CP-LRP: the weights are constants (takes precedence).

    Returns:
        tuple of float: ``(a, b)``, the factors of the gradient of the output and of
        ``q k^T``.
    """
    if constant_weights:
        return 1.0, 0.0
    if uniform_rule:
        return 0.5, 0.5
    return 1.0, 1.0


def _gradient_scaled(x: Tensor, factor: float) -> Tensor:
    """``x`` whose gradient is multiplied by ``factor``: ``f x + (1 - f) [x]_const``."""
    if factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    return factor * x + (1.0 - factor) * x.detach()


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    chunk_size: int | None,
    uniform_rule: bool,
    constant_keys: bool,
) -> Tensor:
    r"""Gated delta rule ``S[t] = (I - beta k k^T) diag(exp(g)) S[t-1] + beta k v^T``,
    ``o[t] = S[t]^T q[t]`` (:mod:`captum_mamba.ops.delta_rule`) with the rule its setting
    (``attention``) chooses.

    Both rules keep the decay ``exp(g)``, the step size ``beta`` and the transition
    ``I - beta k k^T`` constant (the SSM rule's treatment of ``exp(dt A)``); the output
    is then ``o[t] = sum_s (q[t]^T P(t <- s) k[s]) beta[s] v[s]`` with constant
    ``P``: a sum of products of three input-dependent factors, the query read, the key
    written and the value written.

    - AttnLRP's uniform rule on the products (``uniform_rule``): the read ``S^T q`` gives
      half of its relevance to the query and half to the state, the write ``k v^T``
      half to the key and half to the value; so the query gets ``1/2``, the written key
      and the value ``1/4`` each (gradients scaled by these factors). The factors sum to
      one: conserved.
    - CP-LRP (``constant_keys``): queries and keys are constants too, the map is linear
      in the values, relevance flows through the values only: conserved.

    With neither, the plain gradient of every input.

    Args:
        q (Tensor): ``(batch, heads, length, dk)`` queries (normalised and scaled).
        k (Tensor): ``(batch, heads, length, dk)`` keys.
        v (Tensor): ``(batch, heads, length, dv)`` values.
        beta (Tensor): ``(batch, heads, length)`` step sizes.
        log_decay (Tensor): ``(batch, heads, length)`` or ``(batch, heads, length, dk)``
            log decays (one per head, or one per key channel).
        chunk_size (int or None): time steps per chunk; None for the sequential loop.
        uniform_rule (bool): AttnLRP's uniform rule on the reads and writes.
        constant_keys (bool): CP-LRP: queries and keys constant (takes precedence).

    Returns:
        Tensor: ``(batch, heads, length, dv)``.
    """
    if not (uniform_rule or constant_keys):
        return delta_rule(q, k, v, beta, log_decay, None, chunk_size)
    beta, log_decay, transition = beta.detach(), log_decay.detach(), k.detach()
    if constant_keys:
        return delta_rule(q.detach(), transition, v, beta, log_decay, None, chunk_size)
    q, written, v = _gradient_scaled(q, 0.5), _gradient_scaled(k, 0.25), _gradient_scaled(v, 0.25)
    return delta_rule(q, transition, v, beta, log_decay, written, chunk_size)


def attention_weights(
    q: Tensor,
    k: Tensor,
    bias: Tensor | None,
    scaling: float,
    causal: bool = False,
    score_scale: float = 1.0,
) -> Tensor:
    r"""Softmax attention weights ``softmax(q k^T * scaling + bias)`` over the keys.

    Args:
        q (Tensor): ``(batch, heads, queries, dim)``.
        k (Tensor): ``(batch, kv_heads, keys, dim)``; ``heads`` is a multiple of
            ``kv_heads``.
        bias (Tensor or None): additive mask broadcastable to
            ``(batch, heads, queries, keys)`` (0 where attended, a large negative
            number elsewhere).
        scaling (float): factor of the scores.
        causal (bool, optional): query ``i`` attends to keys ``j <= i`` only (on top of
            ``bias``). Default: False.
        score_scale (float, optional): factor of the gradient of ``q k^T`` (see
            :func:`attention_gradient_scales`). Default: 1.

    Returns:
        Tensor: ``(batch, heads, queries, keys)`` weights, rows summing to one.
    """
    scores = _gradient_scaled(q @ _repeat_heads(k, q.shape[1]).transpose(-1, -2), score_scale)
    scores = scores * scaling
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = causal_fill(scores, 0)
    return torch.softmax(scores, dim=-1)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    scaling: float,
    uniform_rule: bool,
    constant_weights: bool,
    causal: bool = False,
    impl: str | None = None,
) -> Tensor:
    r"""Softmax attention ``softmax(q k^T * scaling + bias) v`` with the AttnLRP or
    CP-LRP rule.

    AttnLRP (Achtibat et al., ICML 2024) applies the uniform rule to both bilinear
    products: ``q k^T`` and ``weights v`` each pass half of their relevance to each
    factor (in Gradient x Input form: half of the gradient, so ``q`` and ``k`` get a
    quarter and ``v`` a half, as LXT's efficient implementation does). Its softmax
    rule, ``R_in = x (R_out - s sum(R_out))`` (Proposition 3.1), is Gradient x Input of
    the softmax itself, so the softmax keeps its true gradient. The softmax is not
    homogeneous: its linearisation at ``x`` has a bias term, and the relevance of
    that term is absorbed, so AttnLRP conserves relevance only approximately.

    CP-LRP (Ali et al., ICML 2022) treats the attention weights as constants: the
    output is then a fixed linear map of ``v`` whose rows sum to one, relevance flows
    through the values only, none reaches ``q`` and ``k``, and it is conserved
    exactly. The uniform rule does not apply then (the product has a single factor
    that carries relevance).

    Both rules rescale the ordinary attention gradient by two constants
    (:func:`attention_gradient_scales`), so the same rule runs on two implementations:
    ``"eager"`` materialises the ``(batch, heads, queries, keys)`` weights,
    ``"chunked"`` (:func:`captum_mamba.ops.attention.chunked_attention`) computes
    them per block of queries, recomputing them in the backward pass, in memory linear
    in the length, and ``"sdpa"`` (:func:`captum_mamba.ops.attention.sdpa_attention`)
    runs PyTorch's fused ``scaled_dot_product_attention`` with the two factors applied
    to the gradients of its output and of ``q`` and ``k`` (the gradient of ``q k^T``
    reaches ``q`` and ``k`` only, so scaling theirs scales it).

    Args:
        q (Tensor): ``(batch, heads, queries, dim)``.
        k (Tensor): ``(batch, kv_heads, keys, dim)``.
        v (Tensor): ``(batch, kv_heads, keys, dim_v)``.
        bias (Tensor or None): additive mask, see :func:`attention_weights`.
        scaling (float): factor of the scores.
        uniform_rule (bool): AttnLRP's uniform rule on the two products.
        constant_weights (bool): CP-LRP: detach the weights (takes precedence).
        causal (bool, optional): query ``i`` attends to keys ``j <= i`` only (on top of
            ``bias``). Default: False.
        impl (str, optional): ``"eager"``, ``"chunked"``, ``"sdpa"`` or ``"auto"``
            (by size and bias, see :func:`captum_mamba.ops.attention.choose`);
            None for the current setting (``implementation(attention=...)``).
            Default: None.

    Returns:
        Tensor: ``(batch, heads, queries, dim_v)``.
    """
    value_scale, score_scale = attention_gradient_scales(uniform_rule, constant_weights)
    chosen = choose_attention(impl, q, k, bias)
    if chosen == "chunked":
        return chunked_attention(q, k, v, bias, scaling, causal, value_scale, score_scale)
    if chosen == "sdpa":
        q, k = _gradient_scaled(q, score_scale), _gradient_scaled(k, score_scale)
        out = sdpa_attention(q, k, v, bias, scaling, causal)
        return _gradient_scaled(out, value_scale)
    weights = attention_weights(q, k, bias, scaling, causal, score_scale)
    return _gradient_scaled(weights @ _repeat_heads(v, q.shape[1]), value_scale)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    r"""Rotary position embedding of the first ``r = cos.shape[-1]`` channels of each
    head: ``x cos + rotate_half(x) sin`` (the rest passes unchanged).

    A linear map of ``x`` with position-dependent constant coefficients: relevance
    passes by its gradient (LRP-0), no rule is needed.

    Args:
        x (Tensor): ``(batch, heads, length, dim)`` queries or keys.
        cos (Tensor): ``(batch or 1, length, r)``.
        sin (Tensor): like ``cos``.

    Returns:
        Tensor: the rotated ``x``.
    """
    width = cos.shape[-1]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    rotated, passed = x[..., :width], x[..., width:]
    half = width // 2
    turned = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
    out = rotated * cos + turned * sin
    return out if passed.shape[-1] == 0 else torch.cat([out, passed], dim=-1)


def projection(x: Tensor, weight: Tensor, bias: Tensor | None, rule: LinearRule) -> Tensor:
    r"""``x W^T + b`` with a weight that is a parameter of a larger module rather than a
    linear layer of its own (e.g. the packed input projection of
    ``nn.MultiheadAttention``), with a linear rule.

    Args:
        x (Tensor): ``(..., in)``.
        weight (Tensor): ``(out, in)``.
        bias (Tensor or None): ``(out,)``.
        rule (LinearRule): the linear rule (LRP-0, epsilon, gamma).

    Returns:
        Tensor: ``(..., out)``.
    """
    return rule.apply(F.linear, x, weight, bias)


def grouped_linear(
    x: Tensor, weight: Tensor, group_sizes: Sequence[int], rule: LinearRule
) -> Tensor:
    r"""Consecutive groups of rows of ``x`` through their own weight matrix (the experts
    of a mixture of experts), with a linear rule.

    Args:
        x (Tensor): ``(rows, in)``, sorted by group.
        weight (Tensor): ``(groups, out, in)``.
        group_sizes (sequence of int): rows of each group, summing to ``rows``.
        rule (LinearRule): the linear rule (LRP-0, epsilon, gamma).

    Returns:
        Tensor: ``(rows, out)``, row ``i`` of group ``g`` being ``weight[g] @ x[i]``.
    """
    sizes = list(group_sizes)

    def op(inputs: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        parts = inputs.split(sizes)
        return torch.cat([F.linear(part, w[g]) for g, part in enumerate(parts)], dim=0)

    return rule.apply(op, x, weight, None)


def mixture(weights: Tensor, values: Tensor, index: Tensor, size: int, rule: bool) -> Tensor:
    r"""Mixture of experts ``out[t] = sum_p weights[p] * values[p]`` over the (token,
    expert) pairs ``p`` with ``index[p] = t``; the router rule treats the weights as
    constants.

    With the rule the output is a fixed linear combination of the selected experts'
    outputs: relevance flows into the experts in proportion to their weighted
    contributions, the router receives none, and relevance is conserved exactly from
    the mixture to the experts. Without it the products ``weight * expert output``
    have two input-dependent factors and Gradient x Input counts them twice.

    Args:
        weights (Tensor): ``(pairs,)`` router weights.
        values (Tensor): ``(pairs, hidden)`` expert outputs.
        index (Tensor): ``(pairs,)`` token of each pair.
        size (int): number of tokens.
        rule (bool): the router rule (setting ``router``): detach the weights.

    Returns:
        Tensor: ``(size, hidden)``.
    """
    if rule:
        weights = weights.detach()
    out = values.new_zeros(size, values.shape[-1])
    return out.index_add(0, index, weights[:, None].to(values.dtype) * values)
