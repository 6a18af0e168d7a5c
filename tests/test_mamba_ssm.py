"""Tests of the mamba-ssm adapter (``MambaLMHeadModel`` with Mamba-1 and Mamba-2 mixers,
stand-alone ``Mamba`` / ``Mamba2``, Vim's bidirectional fork).

mamba-ssm is optional and needs care in a shared test process: it imports only with
its compiled extension ``selective_scan_cuda``, and once it imports, transformers'
Mamba models bind to its CUDA kernels and break on CPU. So the tests that need it run
in a subprocess: :func:`test_mamba_ssm_suite_in_subprocess` runs this file and the
conformance suite (whose mamba-ssm case, ``tests/cases/mamba_ssm.py``, is loaded only
there) with ``CAPTUM_MAMBA_SSM_SUBPROCESS=1`` and, where the extension is missing, with a
stand-in ``selective_scan_cuda`` module on ``PYTHONPATH`` (importable, raising if called:
every computation here goes through captum-mamba's own scans). In the main process those
tests are skipped with that reason.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cases.mamba_ssm import LM_CONFIGS, _lm, _mixer, _perturb
from mamba_ssm_subprocess import IN_SUBPROCESS, run_in_mamba_ssm_subprocess, subprocess_only
from torch import Tensor, nn

from captum_mamba import (
    LayerMambaLRP,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
    rules_applied,
)
from captum_mamba.adapters import register_container


@pytest.mark.slow
def test_mamba_ssm_suite_in_subprocess(tmp_path: Path):
    run_in_mamba_ssm_subprocess(
        tmp_path, __file__, str(Path(__file__).with_name("test_conformance.py"))
    )


def test_captum_mamba_imports_without_mamba_ssm_extension():
    if IN_SUBPROCESS or find_spec("selective_scan_cuda") is not None:
        pytest.skip("the compiled extension (or its stand-in) is importable here")
    import captum_mamba.adapters as adapters

    assert not hasattr(adapters, "mamba_ssm")
    assert "mamba_ssm" not in sys.modules


def _relevance(function, inputs: Tensor, select) -> Tensor:
    leaf = inputs.detach().requires_grad_()
    (grad,) = torch.autograd.grad(select(function(leaf)).sum(), leaf)
    return leaf.detach() * grad


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

    @register_container
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
            attn_cfg={"num_heads": 2, "causal": True},
        )
    ).double()
    hybrid.backbone.layers[1].mixer.rotary_emb_dim = 16  # needs flash-attn to construct
    ids = torch.randint(0, 16, (1, 5))
    with pytest.raises(NotImplementedError) as error:
        LayerMambaLRP(hybrid, hybrid.backbone.embedding).attribute(ids, target=(-1, 0))
    assert "rotary_emb_dim=16" in str(error.value) and "\n" not in str(error.value)
    hybrid.backbone.layers[1].mixer = nn.GRU(8, 8, batch_first=True)  # no rule covers it
    with pytest.raises(UnsupportedModelError, match=r"backbone\.layers\.1\.mixer \(.*GRU"):
        LayerMambaLRP(hybrid, hybrid.backbone.embedding)
    model = _lm("mamba1-rmsnorm", seed=0)
    with (
        pytest.raises(NotImplementedError, match="attention mask"),
        rules_applied(model, MambaRules()),
    ):
        model.backbone(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))


MHA_OPTIONS = {
    "causal": {"num_heads": 2, "causal": True},
    "gqa-conv-mlp-bidirectional": {
        "num_heads": 4, "num_heads_kv": 2, "causal": False, "d_conv": 3, "mlp_dim": 8,
        "softmax_scale": 0.5,
    },
}  # fmt: skip


@subprocess_only
@pytest.mark.parametrize("options", list(MHA_OPTIONS))
def test_mha_matches_its_own_cpu_forward(options: str):
    from mamba_ssm.modules.mha import MHA

    torch.manual_seed(3)
    mha = _perturb(MHA(8, **MHA_OPTIONS[options]).double().eval(), zero_biases=False)
    hidden = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        own = mha(hidden)  # SDPA and nn.Conv1d: mamba-ssm's MHA runs on CPU
        for rules in (MambaRules(), MambaRules.cp_lrp(), MambaRules.gradient_x_input()):
            with rules_applied(mha, rules):
                torch.testing.assert_close(mha(hidden), own, rtol=1e-12, atol=1e-12)


@subprocess_only
def test_bidirectional_mha_in_a_user_network_conserves_with_cp_lrp():
    from mamba_ssm.modules.mha import MHA

    @register_container
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            options = MHA_OPTIONS["gqa-conv-mlp-bidirectional"]
            self.mixer = MHA(8, qkv_proj_bias=False, out_proj_bias=False, **options)
            self.head = nn.Linear(8, 3, bias=False)

        def forward(self, embeds: Tensor) -> Tensor:
            return self.head((embeds + self.mixer(embeds)).mean(1))

    torch.manual_seed(4)
    model = _perturb(Encoder().double().eval(), zero_biases=True)
    with torch.no_grad():
        model.mixer.conv1d.bias.zero_()
        model.mixer.in_proj.weight.mul_(4.0)
    embeds = torch.randn(2, 6, 8, dtype=torch.float64)
    relevance, delta = MambaLRP(model, forward_func=model, rules=MambaRules.cp_lrp()).attribute(
        embeds, target=1, return_convergence_delta=True
    )
    assert delta.abs().max() < 1e-12
    assert relevance[:, -1].abs().sum() > 0  # every position reaches the mean
    _, delta = MambaLRP(model, forward_func=model, rules=MambaRules()).attribute(
        embeds, target=1, return_convergence_delta=True
    )
    assert delta.abs().max() > 1e-6  # AttnLRP's softmax absorbs relevance
