"""Conformance case and independent float64 reference: mamba-ssm's ``MambaLMHeadModel``
(Mamba-1 and Mamba-2 mixers, RMSNorm and LayerNorm, gated MLPs).

mamba-ssm can only be imported in an isolated process (it needs a stand-in for its CUDA
extension on CPU and rebinds transformers' Mamba to its kernels), so this case runs in the
subprocess started by ``tests/test_mamba_ssm.py``. mamba-ssm's own forward needs CUDA; the
"own output" is therefore the reference forward with every rule off.

The reference re-implements the model from its parameters with explicit loops and the
rules as ``detach`` calls (it reads the rule switches of the ``rules`` object it is
given); it uses nothing from captum_mamba.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import activation, half_product, softmax_attention
from mamba_ssm_subprocess import IN_SUBPROCESS
from mamba_ssm_subprocess import SKIP_REASON as SKIP_REASON
from torch import Tensor, nn

from captum_mamba import MambaRules
from cases import ArchitectureCase


def _silu(x: Tensor, rule: bool) -> Tensor:
    gate = 1 / (1 + torch.exp(-x))
    return x * (gate.detach() if rule else gate)


def _half(product: Tensor, rule: bool) -> Tensor:
    return 0.5 * product + 0.5 * product.detach() if rule else product


def _norm(x: Tensor, norm: nn.Module, rule: bool) -> Tensor:
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    rms = torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps)
    out = norm.weight * x / (rms.detach() if rule else rms)
    return out if getattr(norm, "bias", None) is None else out + norm.bias


def _linear(x: Tensor, layer: nn.Linear) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def _causal_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    weight, (batch, length, channels) = conv.weight[:, 0], x.shape
    steps = []
    for t in range(length):
        acc = torch.zeros(batch, channels, dtype=x.dtype)
        for k in range(weight.shape[1]):
            source = t - weight.shape[1] + 1 + k
            if source >= 0:
                acc = acc + weight[:, k] * x[:, source]
        steps.append(acc if conv.bias is None else acc + conv.bias)
    return torch.stack(steps, 1)


def _mamba1_direction(mixer, x: Tensor, z: Tensor, suffix: str, rules) -> Tensor:
    u = _silu(_causal_conv(x, getattr(mixer, f"conv1d{suffix}")), rules.silu)
    projected = u @ getattr(mixer, f"x_proj{suffix}").weight.T
    rank, state = mixer.dt_rank, mixer.d_state
    dt = F.softplus(_linear(projected[..., :rank], getattr(mixer, f"dt_proj{suffix}")))
    B, C = projected[..., rank : rank + state], projected[..., rank + state :]
    A, D = -torch.exp(getattr(mixer, f"A{suffix}_log")), getattr(mixer, f"D{suffix}")
    h = torch.zeros(x.shape[0], x.shape[2], state, dtype=x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        decay, drive = torch.exp(dt[:, t, :, None] * A), dt[:, t, :, None] * B[:, t, None]
        c = C[:, t, None]
        if rules.ssm:
            decay, drive, c = decay.detach(), drive.detach(), c.detach()
        h = decay * h + drive * u[:, t, :, None]
        outputs.append((h * c).sum(-1) + D * u[:, t])
    return _half(torch.stack(outputs, 1) * _silu(z, rules.silu), rules.gate)


def _mamba1(mixer, hidden: Tensor, rules) -> Tensor:
    x, z = _linear(hidden, mixer.in_proj).chunk(2, -1)
    y = _mamba1_direction(mixer, x, z, "", rules)
    if getattr(mixer, "bimamba_type", "none") == "v2":
        back = torch.arange(x.shape[1] - 1, -1, -1)
        y = y + _mamba1_direction(mixer, x[:, back], z[:, back], "_b", rules)[:, back]
        if mixer.if_devide_out:
            y = y / 2
    return _linear(y, mixer.out_proj)


def _mamba2(mixer, hidden: Tensor, rules) -> Tensor:
    groups, state, heads, p = mixer.ngroups, mixer.d_state, mixer.nheads, mixer.headdim
    projected = _linear(hidden, mixer.in_proj)
    d_mlp = (projected.shape[-1] - 2 * mixer.d_ssm - 2 * groups * state - heads) // 2
    z0, x0, z, xbc, dt = projected.split(
        [d_mlp, d_mlp, mixer.d_ssm, mixer.d_ssm + 2 * groups * state, heads], -1
    )
    xbc = _silu(_causal_conv(xbc, mixer.conv1d), rules.silu)
    x, B, C = xbc.split([mixer.d_ssm, groups * state, groups * state], -1)
    dt = F.softplus(dt + mixer.dt_bias)
    A = -torch.exp(mixer.A_log)
    D = mixer.D if mixer.D_has_hdim else mixer.D.repeat_interleave(p)
    batch, length = hidden.shape[:2]
    h = torch.zeros(batch, heads, p, state, dtype=hidden.dtype)
    outputs = []
    for t in range(length):
        x_t = x[:, t].reshape(batch, heads, p)
        group_of_head = torch.arange(heads) // (heads // groups)
        B_t = B[:, t].reshape(batch, groups, state)[:, group_of_head]
        C_t = C[:, t].reshape(batch, groups, state)[:, group_of_head]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        drive = dt[:, t, :, None] * B_t
        if rules.ssm:
            decay, drive, C_t = decay.detach(), drive.detach(), C_t.detach()
        h = decay * h + drive[:, :, None, :] * x_t[..., None]
        outputs.append((h * C_t[:, :, None, :]).sum(-1).reshape(batch, -1) + D * x[:, t])
    y = torch.stack(outputs, 1)
    if mixer.rmsnorm:
        norm = mixer.norm
        gated = y if norm.norm_before_gate else _half(y * _silu(z, rules.silu), rules.gate)
        grouped = gated.reshape(batch, length, -1, norm.group_size)
        rms = torch.sqrt((grouped * grouped).mean(-1, keepdim=True) + norm.eps)
        y = (grouped / (rms.detach() if rules.norm else rms)).reshape(gated.shape) * norm.weight
        if norm.norm_before_gate:
            y = _half(y * _silu(z, rules.silu), rules.gate)
    else:
        y = _half(y * _silu(z, rules.silu), rules.gate)
    if d_mlp:
        y = torch.cat([_half(x0 * _silu(z0, rules.silu), rules.gate), y], -1)
    return _linear(y, mixer.out_proj)


def _mha(mha, hidden: Tensor, rules) -> Tensor:
    """mamba-ssm's MHA, causal, one query position at a time (``softmax_attention``)."""
    projected = _linear(hidden, mha.in_proj)
    qkv, mlp = projected.split([projected.shape[-1] - mha.mlp_dim, mha.mlp_dim], -1)
    if mha.d_conv > 0:
        qkv = _causal_conv(qkv, mha.conv1d)
    width, kv_width = mha.num_heads * mha.head_dim, mha.num_heads_kv * mha.head_dim
    q, k, v = (
        part.unflatten(-1, (-1, mha.head_dim)).transpose(1, 2)
        for part in qkv.split([width, kv_width, kv_width], -1)
    )
    scale = mha.head_dim**-0.5 if mha.softmax_scale is None else mha.softmax_scale
    out = softmax_attention(q, k, v, scale, None, rules.attention)
    if mha.mlp_dim > 0:
        up, gate = mlp.chunk(2, -1)
        out = torch.cat([out, half_product(up, activation(gate, "silu", rules.activation),
                                           rules.gate)], -1)  # fmt: skip
    return _linear(out, mha.out_proj)


def _mixer(mixer, hidden: Tensor, rules) -> Tensor:
    if hasattr(mixer, "num_heads_kv"):
        if not mixer.causal:
            raise ValueError("the reference computes causal attention only")
        return _mha(mixer, hidden, rules)
    return (_mamba1 if hasattr(mixer, "dt_rank") else _mamba2)(mixer, hidden, rules)


def _lm_logits(model, embeds: Tensor, rules) -> Tensor:
    hidden, residual = embeds, torch.zeros_like(embeds)
    for block in model.backbone.layers:
        residual = hidden + residual
        hidden = _mixer(block.mixer, _norm(residual, block.norm, rules.norm), rules)
        if block.mlp is not None:
            residual = hidden + residual
            fc1 = _linear(_norm(residual, block.norm2, rules.norm), block.mlp.fc1)
            y, gate = fc1.chunk(2, -1)
            activated = _silu(gate, rules.activation)
            hidden = _linear(_half(y * activated, rules.gate), block.mlp.fc2)
    final = _norm(hidden + residual, model.backbone.norm_f, rules.norm)
    return _linear(final, model.lm_head)


LM_CONFIGS = {
    "mamba1-rmsnorm": dict(ssm_cfg={"d_state": 4}, d_intermediate=0),
    "mamba1-layernorm-mlp": dict(
        ssm_cfg={"d_state": 3, "d_conv": 3, "expand": 1}, rms_norm=False, d_intermediate=12
    ),
    "mamba2-groups": dict(
        ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 4, "ngroups": 2}, d_intermediate=0
    ),
    "mamba2-mlp-channels": dict(
        ssm_cfg={
            "layer": "Mamba2",
            "d_state": 3,
            "headdim": 2,
            "d_ssm": 8,
            "D_has_hdim": True,
            "norm_before_gate": True,
        },
        d_intermediate=12,
    ),
}


def _perturb(model: nn.Module, zero_biases: bool) -> nn.Module:
    """Move parameters off their structured initialisation (ones, zeros, S4D ranges)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if zero_biases and name.endswith("bias") and "dt_" not in name:
                parameter.zero_()
            elif not name.endswith(("A_log", "dt_bias", "dt_proj.bias")):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def _lm(config: str, seed: int, zero_biases: bool = False, configs=LM_CONFIGS) -> nn.Module:
    from mamba_ssm import MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig

    torch.manual_seed(seed)
    options = dict(d_model=8, n_layer=2, vocab_size=24, pad_vocab_size_multiple=8)
    model = MambaLMHeadModel(MambaConfig(**{**options, **configs[config]}))
    return _perturb(model.double().eval(), zero_biases)


def lm_inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list]:
    """Embeddings of random tokens (batch 2, length 7) and ``(position, token)`` targets."""
    ids = torch.randint(0, 24, (2, 7), generator=torch.Generator().manual_seed(seed))
    return model.backbone.embedding(ids).detach(), [(-1, 5), (3, 11)]


ADAPTER = "mamba-ssm"

CASE = (
    ArchitectureCase(
        name="mamba_ssm",
        adapter=ADAPTER,
        configs=tuple(LM_CONFIGS),
        build=_lm,
        inputs=lm_inputs,
        reference=_lm_logits,
        own_output=lambda model, embeds: _lm_logits(model, embeds, MambaRules.gradient_x_input()),
        layer="backbone.layers.0.mixer.out_proj",
        num_layers=lambda model: len(model.backbone.layers),
        isolated=True,
    )
    if IN_SUBPROCESS
    else None
)
