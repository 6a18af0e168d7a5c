"""Tests of the mamba-ssm adapter (``MambaLMHeadModel`` with Mamba-1 and Mamba-2 mixers,
stand-alone ``Mamba`` / ``Mamba2``, Vim's bidirectional fork).

mamba-ssm is optional and needs care in a shared test process: it imports only with
its compiled extension ``selective_scan_cuda``, and once it imports, transformers'
Mamba models bind to its CUDA kernels and break on CPU. So the tests that need it run
in a subprocess: :func:`test_mamba_ssm_suite_in_subprocess` re-runs this file there
(see ``mamba_ssm_subprocess.py``; every computation here goes through captum-mamba's own
scans, not the stand-in extension). In the main process those tests are skipped with
that reason.

The references re-implement each model from its parameters with explicit loops over
time and express the MambaLRP rules as ``detach`` calls.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mamba_ssm_subprocess import IN_SUBPROCESS, run_in_mamba_ssm_subprocess, subprocess_only
from torch import Tensor, nn

from captum_mamba import LayerMambaLRP, MambaLRP, MambaRules, rules_applied


@pytest.mark.slow
def test_mamba_ssm_suite_in_subprocess(tmp_path: Path):
    run_in_mamba_ssm_subprocess(__file__, tmp_path)


def test_captum_mamba_imports_without_mamba_ssm_extension():
    if IN_SUBPROCESS or find_spec("selective_scan_cuda") is not None:
        pytest.skip("the compiled extension (or its stand-in) is importable here")
    import captum_mamba.adapters as adapters

    assert not hasattr(adapters, "mamba_ssm")
    assert "mamba_ssm" not in sys.modules


# --- independent sequential references ------------------------------------------------


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


def _mamba1_direction(mixer, x: Tensor, z: Tensor, suffix: str, rules: MambaRules) -> Tensor:
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


def _mamba1(mixer, hidden: Tensor, rules: MambaRules) -> Tensor:
    x, z = _linear(hidden, mixer.in_proj).chunk(2, -1)
    y = _mamba1_direction(mixer, x, z, "", rules)
    if getattr(mixer, "bimamba_type", "none") == "v2":
        back = torch.arange(x.shape[1] - 1, -1, -1)
        y = y + _mamba1_direction(mixer, x[:, back], z[:, back], "_b", rules)[:, back]
        if mixer.if_devide_out:
            y = y / 2
    return _linear(y, mixer.out_proj)


def _mamba2(mixer, hidden: Tensor, rules: MambaRules) -> Tensor:
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


def _mixer(mixer, hidden: Tensor, rules: MambaRules) -> Tensor:
    return (_mamba1 if hasattr(mixer, "dt_rank") else _mamba2)(mixer, hidden, rules)


def _lm_logits(model, embeds: Tensor, rules: MambaRules) -> Tensor:
    hidden, residual = embeds, torch.zeros_like(embeds)
    for block in model.backbone.layers:
        residual = hidden + residual
        hidden = _mixer(block.mixer, _norm(residual, block.norm, rules.norm), rules)
        if block.mlp is not None:
            residual = hidden + residual
            fc1 = _linear(_norm(residual, block.norm2, rules.norm), block.mlp.fc1)
            y, gate = fc1.chunk(2, -1)
            hidden = _linear(_half(y * _silu(gate, rules.silu), rules.gate), block.mlp.fc2)
    final = _norm(hidden + residual, model.backbone.norm_f, rules.norm)
    return _linear(final, model.lm_head)


def _relevance(function, inputs: Tensor, select) -> Tensor:
    leaf = inputs.detach().requires_grad_()
    (grad,) = torch.autograd.grad(select(function(leaf)).sum(), leaf)
    return leaf.detach() * grad


# --- models ---------------------------------------------------------------------------

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


def _lm(config: str, seed: int, zero_biases: bool = False) -> nn.Module:
    from mamba_ssm import MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig

    torch.manual_seed(seed)
    options = dict(d_model=8, n_layer=2, vocab_size=24, pad_vocab_size_multiple=8)
    model = MambaLMHeadModel(MambaConfig(**options, **LM_CONFIGS[config]))
    return _perturb(model.double().eval(), zero_biases)


# --- tests run in the subprocess ------------------------------------------------------


@subprocess_only
@pytest.mark.parametrize("config", list(LM_CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lm_relevance_matches_sequential_reference(config: str, seed: int):
    model = _lm(config, seed)
    ids = torch.randint(0, 24, (2, 7), generator=torch.Generator().manual_seed(seed))
    embeds = model.backbone.embedding(ids).detach()
    for rules in (MambaRules(), MambaRules.gradient_x_input()):
        relevance = MambaLRP(model, rules=rules).attribute(embeds, target=(-1, 5))
        expected = _relevance(
            lambda e, rules=rules: _lm_logits(model, e, rules), embeds, lambda o: o[:, -1, 5]
        )
        assert expected.abs().max() > 1e-4
        torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-11)


@subprocess_only
@pytest.mark.parametrize("config", list(LM_CONFIGS))
def test_lm_forward_on_cpu_matches_reference_and_restores(config: str):
    model = _lm(config, seed=4)
    ids = torch.randint(0, 24, (3, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), rules_applied(model, MambaRules.gradient_x_input()):
        logits = model(ids).logits
    expected = _lm_logits(model, model.backbone.embedding(ids), MambaRules.gradient_x_input())
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
    assert all("forward" not in module.__dict__ for module in model.modules())


@subprocess_only
@pytest.mark.parametrize("config", list(LM_CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_lm_conservation_without_biases(config: str, seed: int):
    model = _lm(config, seed, zero_biases=True)
    ids = torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(seed))
    lrp = LayerMambaLRP(model, model.backbone.embedding)
    relevance, delta = lrp.attribute(ids, target=(-1, 3), return_convergence_delta=True)
    with torch.no_grad(), rules_applied(model, MambaRules.gradient_x_input()):
        logit = model(ids).logits[:, -1, 3]
    torch.testing.assert_close(relevance.sum((1, 2)), logit, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12


@subprocess_only
def test_mixers_match_mamba_ssm_reference_scans():
    from mamba_ssm import Mamba, Mamba2
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    torch.manual_seed(0)
    hidden = torch.randn(2, 8, 8, dtype=torch.float64)
    plain = MambaRules.gradient_x_input()

    # mamba-ssm's reference selective scan computes in float32.
    mamba = _perturb(Mamba(8, d_state=4), zero_biases=False)
    with torch.no_grad(), rules_applied(mamba, plain):
        ours = mamba(hidden.float())
        x, z = mamba.in_proj(hidden.float()).chunk(2, -1)
        x = F.silu(mamba.conv1d(x.transpose(1, 2))[..., :8])
        dt, B, C = mamba.x_proj(x.transpose(1, 2)).split([mamba.dt_rank, 4, 4], -1)
        y = selective_scan_ref(
            x,
            (dt @ mamba.dt_proj.weight.T).transpose(1, 2),
            -torch.exp(mamba.A_log),
            B.transpose(1, 2),
            C.transpose(1, 2),
            mamba.D,
            z=z.transpose(1, 2),
            delta_bias=mamba.dt_proj.bias,
            delta_softplus=True,
        )
        theirs = mamba.out_proj(y.transpose(1, 2))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)

    mamba2 = _perturb(Mamba2(8, d_state=4, headdim=4, rmsnorm=False).double(), False)
    with torch.no_grad(), rules_applied(mamba2, plain):
        ours = mamba2(hidden)
        z, xbc, dt = mamba2.in_proj(hidden).split([16, 16 + 8, 4], -1)
        xbc = F.silu(mamba2.conv1d(xbc.transpose(1, 2))[..., :8].transpose(1, 2))
        x, B, C = xbc.split([16, 4, 4], -1)
        dt = F.softplus(dt + mamba2.dt_bias)
        x_heads = x.unflatten(-1, (4, 4))
        y = ssd_minimal_discrete(
            x_heads * dt[..., None],
            dt * -torch.exp(mamba2.A_log),
            B[:, :, None].expand(-1, -1, 4, -1),
            C[:, :, None].expand(-1, -1, 4, -1),
            block_len=4,
        )[0]
        y = (y + x_heads * mamba2.D[:, None]).flatten(-2) * F.silu(z)
        theirs = mamba2.out_proj(y)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@subprocess_only
@pytest.mark.parametrize("layer", ["Mamba", "Mamba2"])
def test_standalone_mixers_in_a_user_network(layer: str):
    import mamba_ssm

    torch.manual_seed(1)
    mixer_cls = getattr(mamba_ssm, layer)
    options = {"d_state": 4, "headdim": 4} if layer == "Mamba2" else {"d_state": 4}

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer = mixer_cls(8, **options)
            self.head = nn.Linear(8, 3, bias=False)

        def forward(self, embeds: Tensor) -> Tensor:
            return self.head((embeds + self.mixer(embeds)).mean(1))

    model = _perturb(Classifier().double().eval(), zero_biases=True)
    embeds = torch.randn(2, 6, 8, dtype=torch.float64)
    relevance, delta = MambaLRP(model, forward_func=model).attribute(
        embeds, target=2, return_convergence_delta=True
    )
    expected = _relevance(
        lambda e: model.head((e + _mixer(model.mixer, e, MambaRules())).mean(1)),
        embeds,
        lambda o: o[:, 2],
    )
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-11)
    assert delta.abs().max() < 1e-12


@subprocess_only
@pytest.mark.parametrize("divide", [False, True])
def test_vim_fork_bidirectional_mixer(divide: bool):
    import copy

    from mamba_ssm import Mamba

    torch.manual_seed(2)
    mixer = Mamba(8, d_state=3)
    # Vim's fork of mamba-ssm adds a second parameter set for the backward scan.
    for name in ("conv1d", "x_proj", "dt_proj"):
        setattr(mixer, f"{name}_b", copy.deepcopy(getattr(mixer, name)))
    mixer.A_b_log = nn.Parameter(mixer.A_log.detach().clone())
    mixer.D_b = nn.Parameter(mixer.D.detach().clone())
    mixer.bimamba_type, mixer.if_devide_out = "v2", divide
    mixer = _perturb(mixer.double(), zero_biases=True)
    hidden = torch.randn(2, 7, 8, dtype=torch.float64)
    for rules in (MambaRules(), MambaRules.gradient_x_input()):
        relevance = MambaLRP(mixer, forward_func=lambda h: mixer(h)[:, 1, 0], rules=rules)
        expected = _relevance(
            lambda h, rules=rules: _mixer(mixer, h, rules), hidden, lambda o: o[:, 1, 0]
        )
        torch.testing.assert_close(relevance.attribute(hidden), expected, rtol=1e-9, atol=1e-11)


@subprocess_only
def test_cpu_scan_is_used_not_the_cuda_stand_in():
    from mamba_ssm import Mamba

    mixer = Mamba(8, d_state=4).double()
    hidden = torch.randn(1, 4, 8, dtype=torch.float64)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            mixer(hidden)  # mamba-ssm's own forward needs the compiled kernels
    with rules_applied(mixer, MambaRules()):
        assert mixer(hidden).shape == hidden.shape


@subprocess_only
def test_unsupported_cases_are_reported():
    from mamba_ssm import MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig

    torch.manual_seed(0)
    hybrid = MambaLMHeadModel(
        MambaConfig(
            d_model=8,
            n_layer=2,
            vocab_size=16,
            ssm_cfg={"d_state": 4},
            attn_layer_idx=[1],
            attn_cfg={"num_heads": 2},
        )
    ).double()
    ids = torch.randint(0, 16, (1, 5))
    with pytest.raises(NotImplementedError, match="MHA"):
        LayerMambaLRP(hybrid, hybrid.backbone.embedding).attribute(ids, target=(-1, 0))
    model = _lm("mamba1-rmsnorm", seed=0)
    with (
        pytest.raises(NotImplementedError, match="attention mask"),
        rules_applied(model, MambaRules()),
    ):
        model.backbone(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))
