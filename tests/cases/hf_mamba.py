"""Conformance case and independent float64 reference: transformers Mamba-1.

A from-scratch Mamba-1 forward on the parameters of a transformers ``MambaForCausalLM``,
with an explicit Python loop over time for the selective scan. The MambaLRP rules are
written out where they act (``.detach()`` on the RMS factor, on the sigmoid of both
SiLUs, on ``exp(dt A)``, ``dt B`` and ``C``, half rule on the gate); linear rules
(epsilon, gamma) are custom autograd functions whose backward is the explicit LRP
formula. Relevance is autograd Gradient x Input of this forward.

The reference functions use nothing from ``captum_mamba``; only :func:`build_lm` (the
package's seeded model factory) and :data:`CASE` at the end (which translates the
package's ``MambaRules`` into :class:`ReferenceRules`) do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import MambaForCausalLM

from captum_mamba import MambaRules
from captum_mamba.models import mamba_config, random_mamba_lm
from cases import ArchitectureCase


@dataclass(frozen=True)
class ReferenceRules:
    """Rule switches of the reference; ``linear`` is ``("lrp0",)``,
    ``("epsilon", eps)`` or ``("gamma", gamma, eps)``."""

    norm: bool = True
    silu: bool = True
    ssm: bool = True
    gate: bool = True
    linear: tuple = ("lrp0",)


def _param(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().to(torch.float64)


def _stabilise(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _modified_weight(weight: Tensor, rule: tuple) -> Tensor:
    if rule[0] == "gamma":
        return weight + rule[1] * weight.clamp(min=0)
    return weight


class _RuleAffine(torch.autograd.Function):
    """``z = apply(x, w) + b`` whose backward is the LRP-epsilon/gamma redistribution
    ``grad_x_i = sum_j w'_ij grad_j z_j / (z'_j + eps sign z'_j)``, with ``apply_t`` the
    explicit transpose of the linear map."""

    @staticmethod
    def forward(ctx, x, weight, bias, apply, apply_t, rule):
        z = apply(x, weight) + (0 if bias is None else bias)
        w_mod = _modified_weight(weight, rule)
        z_mod = apply(x, w_mod) + (0 if bias is None else bias)
        ctx.save_for_backward(z, z_mod, w_mod)
        ctx.apply_t = apply_t
        ctx.eps = rule[-1]
        return z

    @staticmethod
    def backward(ctx, grad):
        z, z_mod, w_mod = ctx.saved_tensors
        scaled = grad * z / _stabilise(z_mod, ctx.eps)
        return ctx.apply_t(scaled, w_mod), None, None, None, None, None


def _dense(x: Tensor, weight: Tensor) -> Tensor:
    return x @ weight.T


def _dense_t(grad: Tensor, weight: Tensor) -> Tensor:
    return grad @ weight


def _causal_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Depthwise causal conv ``z[t, c] = sum_k w[c, k] x[t - (K-1) + k, c]``."""
    kernel = weight.shape[1]
    length = x.shape[1]
    z = torch.zeros_like(x)
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift < length:
            z[:, shift:] = z[:, shift:] + weight[:, k] * x[:, : length - shift]
    return z


def _causal_conv_t(grad: Tensor, weight: Tensor) -> Tensor:
    """Transpose of :func:`_causal_conv`: ``g[s, c] = sum_k w[c, k] grad[s + (K-1) - k, c]``."""
    kernel = weight.shape[1]
    length = grad.shape[1]
    out = torch.zeros_like(grad)
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift < length:
            out[:, : length - shift] = out[:, : length - shift] + weight[:, k] * grad[:, shift:]
    return out


def _affine(x, weight, bias, rule, apply, apply_t):
    if rule[0] == "lrp0":
        return apply(x, weight) + (0 if bias is None else bias)
    return _RuleAffine.apply(x, weight, bias, apply, apply_t, rule)


def _linear(x: Tensor, layer: nn.Linear, rule: tuple) -> Tensor:
    return _affine(x, _param(layer.weight), _param(layer.bias), rule, _dense, _dense_t)


def _conv(x: Tensor, conv: nn.Conv1d, rule: tuple) -> Tensor:
    weight = _param(conv.weight)[:, 0, :]
    return _affine(x, weight, _param(conv.bias), rule, _causal_conv, _causal_conv_t)


def _rms(x: Tensor, norm: nn.Module, rule: bool) -> Tensor:
    factor = 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.variance_epsilon)
    if rule:
        factor = factor.detach()
    return _param(norm.weight) * (x * factor)


def _silu(x: Tensor, rule: bool) -> Tensor:
    sig = 1.0 / (1.0 + torch.exp(-x))
    if rule:
        sig = sig.detach()
    return x * sig


def _softplus(x: Tensor) -> Tensor:
    return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))


def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask[:, :, None].to(x.dtype)


def _mixer(u: Tensor, mixer: nn.Module, rules: ReferenceRules, mask: Tensor | None) -> Tensor:
    inner = mixer.intermediate_size
    rank, state = mixer.time_step_rank, mixer.ssm_state_size
    xz = _linear(_mask(u, mask), mixer.in_proj, rules.linear)
    x, z = xz[..., :inner], xz[..., inner:]
    x = _mask(_silu(_conv(x, mixer.conv1d, rules.linear), rules.silu), mask)
    proj = _linear(x, mixer.x_proj, rules.linear)
    dt_low, B, C = proj[..., :rank], proj[..., rank : rank + state], proj[..., rank + state :]
    dt = _softplus(_linear(dt_low, mixer.dt_proj, rules.linear))
    A = -torch.exp(_param(mixer.A_log))
    batch, length, _ = x.shape
    h = x.new_zeros(batch, inner, state)
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * A)
        dt_b = dt[:, t, :, None] * B[:, t, None, :]
        c = C[:, t]
        if rules.ssm:
            decay, dt_b, c = decay.detach(), dt_b.detach(), c.detach()
        h = decay * h + dt_b * x[:, t, :, None]
        outputs.append((h * c[:, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1) + x * _param(mixer.D)
    gated = y * _silu(z, rules.silu)
    if rules.gate:
        gated = 0.5 * gated + 0.5 * gated.detach()
    return _linear(gated, mixer.out_proj, rules.linear)


def reference_forward(
    model: nn.Module,
    embeds: Tensor,
    rules: ReferenceRules = ReferenceRules(),
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Logits of a transformers ``MambaForCausalLM`` recomputed in float64.

    Args:
        model: the model (only its parameters are read).
        embeds: ``(batch, seq, hidden)`` input embeddings (converted to float64).
        rules: rules whose backward is used.
        attention_mask: optional ``(batch, seq)`` 0/1 mask.

    Returns:
        ``(logits, residuals)``: logits ``(batch, seq, vocab)`` and the residual stream
        entering each block and ``norm_f`` (``num_layers + 1`` tensors).
    """
    h = embeds.to(torch.float64)
    residuals = []
    for block in model.backbone.layers:
        residuals.append(h)
        h = h + _mixer(_rms(h, block.norm, rules.norm), block.mixer, rules, attention_mask)
    residuals.append(h)
    final = _rms(h, model.backbone.norm_f, rules.norm)
    return _linear(final, model.lm_head, rules.linear), residuals


def select(logits: Tensor, targets: list[tuple[int, int]]) -> Tensor:
    """``logits[i, position_i, token_i]`` for every example ``i``."""
    return torch.stack([logits[i, p, k] for i, (p, k) in enumerate(targets)])


def reference_relevance(
    model: nn.Module,
    embeds: Tensor,
    targets: list[tuple[int, int]],
    rules: ReferenceRules = ReferenceRules(),
    attention_mask: Tensor | None = None,
    explain: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Gradient x Input of the reference forward.

    Args:
        model: the model.
        embeds: ``(batch, seq, hidden)`` input embeddings.
        targets: ``(position, token)`` per example.
        rules: rules of the backward.
        attention_mask: optional ``(batch, seq)`` mask.
        explain: optional map ``logits -> (batch,)`` replacing ``targets``.

    Returns:
        ``(relevance, explained, residual_relevances)``: relevance of the embeddings,
        the explained outputs ``(batch,)`` and Gradient x Input at each residual
        stream tensor of :func:`reference_forward`.
    """
    leaf = embeds.detach().to(torch.float64).requires_grad_()
    logits, residuals = reference_forward(model, leaf, rules, attention_mask)
    explained = explain(logits) if explain is not None else select(logits, targets)
    grads = torch.autograd.grad(explained.sum(), [leaf, *residuals[1:]], allow_unused=True)
    relevance = leaf.detach() * grads[0]
    per_residual = [relevance] + [
        r.detach() * (torch.zeros_like(r) if g is None else g)
        for r, g in zip(residuals[1:], grads[1:], strict=True)
    ]
    return relevance, explained.detach(), per_residual


def sequential_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``y[t, d] = sum_n C[t, n] h[t, d, n]``, ``h[t] = exp(dt A) h[t-1] + dt B x``, by a loop."""
    batch, length, channels = x.shape
    h = x.new_zeros(batch, channels, A.shape[1])
    outputs = []
    for t in range(length):
        h = (
            torch.exp(dt[:, t, :, None] * A) * h
            + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        )
        outputs.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(outputs, dim=1)


def build_lm(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    zero_biases: bool = False,
    dt_range: tuple[float, float] = (0.05, 1.0),
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    state_size: int = 4,
    vocab_size: int = 64,
    expand: int = 2,
    conv_kernel: int = 4,
    **config: object,
) -> MambaForCausalLM:
    """A tiny random ``MambaForCausalLM`` whose parameters are all perturbed away from
    their structured initial values (unit norm weights and ``D``, zero conv biases,
    ``A = -(1..N)``), so that a mishandled parameter changes the results.

    Args:
        seed: seed of the initialisation and the perturbation.
        dtype: parameter dtype.
        zero_biases: zero the biases on the relevance path (conv, in/out proj).
        dt_range: range of ``softplus(dt_proj.bias)``; larger than the transformers
            default (0.001-0.1) so that the selective scan matters.
        hidden_size, num_hidden_layers, state_size, vocab_size, expand, conv_kernel,
            **config: ``MambaConfig`` fields.
    """
    cfg = mamba_config(
        hidden_size, num_hidden_layers, state_size, vocab_size, expand, conv_kernel, **config
    )
    model = random_mamba_lm(cfg, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(10_000 + seed)

    def noise(t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    low, high = math.log(dt_range[0]), math.log(dt_range[1])
    with torch.no_grad():
        for block in model.backbone.layers:
            mixer = block.mixer
            block.norm.weight.add_(noise(block.norm.weight, 0.3))
            mixer.D.copy_(noise(mixer.D, 1.0))
            mixer.A_log.add_(noise(mixer.A_log, 0.3))
            for module in (mixer.conv1d, mixer.in_proj, mixer.out_proj):
                if module.bias is not None:
                    module.bias.copy_(noise(module.bias, 0.0 if zero_biases else 0.3))
            dt = torch.exp(low + (high - low) * torch.rand(mixer.D.shape, generator=gen))
            mixer.dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))).to(dtype))
        model.backbone.norm_f.weight.add_(noise(model.backbone.norm_f.weight, 0.3))
    return model


# --- the conformance case -------------------------------------------------------------


# (hidden, layers, state, sequence length, batch, extra config): length from 1 to 64.
CONFIGS = {
    "h8-l1-n4-s9": dict(hidden_size=8, num_hidden_layers=1, state_size=4, seq=9, batch=2),
    "h16-l2-n8-s23-bias": dict(
        hidden_size=16, num_hidden_layers=2, state_size=8, seq=23, batch=3, use_bias=True
    ),
    "h32-l3-n16-s64": dict(hidden_size=32, num_hidden_layers=3, state_size=16, seq=64, batch=2),
    "h8-l2-n4-s1": dict(hidden_size=8, num_hidden_layers=2, state_size=4, seq=1, batch=2),
}


def _model_config(config: str) -> dict:
    return {k: v for k, v in CONFIGS[config].items() if k not in ("seq", "batch")}


def _reference_rules(rules: MambaRules) -> ReferenceRules:
    return ReferenceRules(rules.norm, rules.silu, rules.ssm, rules.gate)


def lm_inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list]:
    """Float64 embeddings of random tokens and one ``(position, token)`` target per
    example, at random positions (negative ones too)."""
    length, batch = CONFIGS[config]["seq"], CONFIGS[config]["batch"]
    generator = torch.Generator().manual_seed(1000 + seed)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    embeds = model.get_input_embeddings()(ids).detach().to(torch.float64)
    positions = torch.randint(-length, length, (batch,), generator=generator).tolist()
    tokens = torch.randint(0, vocab, (batch,), generator=generator).tolist()
    return embeds, list(zip(positions, tokens, strict=True))


def lm_own_output(model: nn.Module, embeds: Tensor, **kwargs: object) -> Tensor:
    """The model's own logits, without transformers' float32 cast of the head output."""
    hidden = model.backbone(inputs_embeds=embeds, use_cache=False, **kwargs)
    return model.lm_head(hidden.last_hidden_state)


ADAPTER = "transformers Mamba"

CASE = ArchitectureCase(
    name="hf_mamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=lambda config, seed, zero_biases: build_lm(
        seed=seed, zero_biases=zero_biases, **_model_config(config)
    ),
    inputs=lm_inputs,
    reference=lambda model, embeds, rules: reference_forward(
        model, embeds, _reference_rules(rules)
    )[0],
    own_output=lm_own_output,
    layer="backbone.layers.0.mixer.out_proj",
    num_layers=lambda model: len(model.backbone.layers),
    padding=True,
)
