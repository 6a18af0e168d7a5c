"""Captum's own LRP and LayerLRP on prepared Mamba models, against MambaLRP: linear rules,
rule overrides, user rules, masks and state (the per-architecture parity for every
preset is in the conformance suite)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LRP, LayerLRP
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule
from torch import Tensor, nn
from transformers import MambaModel

from captum_mamba import Epsilon, Gamma, MambaLRP, MambaRules
from captum_mamba.adapters import UnsupportedModelError, register_container
from captum_mamba.lrp import (
    GateRule,
    LRP0Rule,
    NormRule,
    SiLURule,
    SSMRule,
    captum_linear_rule,
    prepare_captum_lrp,
    register_rule,
    rule_for,
)
from captum_mamba.models import mamba_config, random_mamba_lm

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")

SEEDS = (0, 1, 2)
VOCAB = 64


def _model(seed: int, zero_biases: bool = False) -> nn.Module:
    return random_mamba_lm(
        mamba_config(hidden_size=16, num_hidden_layers=2, state_size=4, vocab_size=VOCAB),
        seed=seed,
        dtype=torch.float64,
        zero_biases=zero_biases,
    )


def _embeds(model: nn.Module, seed: int, batch: int = 3, length: int = 7) -> Tensor:
    generator = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    return model.get_input_embeddings()(ids).detach()


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max())


def _linear_leaves(prepared: nn.Module) -> list[nn.Module]:
    return [m for m in prepared.modules() if isinstance(m, nn.Linear | nn.Conv1d)]


def _lm_logits(model: nn.Module, embeds: Tensor, mask: Tensor | None = None) -> Tensor:
    return model.lm_head(
        model.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    )


RULE_VARIANTS = {
    "epsilon": MambaRules(linear=Epsilon(0.05)),
    "gamma": MambaRules(linear=Gamma(0.25)),
    "gamma_without_ssm_rule": MambaRules(ssm=False, linear=Gamma(0.5, epsilon=1e-6)),
    "overrides": MambaRules()
    .override("lm_head", linear=Epsilon(0.1))
    .override("backbone.layers.0.mixer.in_proj", linear=Gamma(0.25))
    .override("backbone.layers.1", ssm=False, gate=False),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", sorted(RULE_VARIANTS))
def test_lrp_equals_mamba_lrp(seed: int, variant: str) -> None:
    rules = RULE_VARIANTS[variant]
    model = _model(seed)
    embeds = _embeds(model, seed)
    targets = [(-1, 3), (2, 17), (-2, 40)]
    expected = MambaLRP(model, rules=rules).attribute(embeds, target=targets)
    actual = LRP(prepare_captum_lrp(model, rules)).attribute(embeds, target=targets)
    assert actual.shape == embeds.shape
    assert _relative(actual, expected) <= 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("captum_rule", "mamba_rule"),
    [
        (lambda: EpsilonRule(0.05), Epsilon(0.05)),
        (lambda: GammaRule(0.25), Gamma(0.25)),
    ],
    ids=["EpsilonRule", "GammaRule"],
)
def test_captum_linear_rules_set_by_hand(seed: int, captum_rule, mamba_rule) -> None:
    model = _model(seed)
    embeds = _embeds(model, seed)
    prepared = prepare_captum_lrp(model)
    for module in _linear_leaves(prepared):
        module.rule = captum_rule()
    expected = MambaLRP(model, rules=MambaRules(linear=mamba_rule)).attribute(
        embeds, target=(-1, 5)
    )
    actual = LRP(prepared).attribute(embeds, target=(-1, 5))
    assert _relative(actual, expected) <= 1e-6
    default = LRP(prepare_captum_lrp(model)).attribute(embeds, target=(-1, 5))
    assert _relative(default, expected) > 1e-3


def test_attention_mask_as_additional_argument() -> None:
    model = _model(1)
    embeds = _embeds(model, 1)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    expected = MambaLRP(model).attribute(embeds, target=(-1, 11), additional_forward_args=mask)
    actual = LRP(prepare_captum_lrp(model)).attribute(
        embeds, target=(-1, 11), additional_forward_args=mask
    )
    assert _relative(actual, expected) <= 1e-6


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        name: (
            sorted(vars(module)),
            getattr(module, "rule", None),
            sorted(vars(module.rule)) if hasattr(module, "rule") else [],
            len(module._forward_hooks) + len(module._forward_pre_hooks),
            len(module._backward_hooks) + len(module._backward_pre_hooks),
            [(p, t.clone()) for p, t in module.named_parameters(recurse=False)],
        )
        for name, module in model.named_modules()
    }


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for name in before:
        keys, rule, rule_keys, hooks, backward_hooks, params = before[name]
        keys_after, rule_after, rule_keys_after, hooks_after, bw_after, params_after = after[name]
        assert keys == keys_after, name
        assert rule is rule_after, name
        assert rule_keys == rule_keys_after, name
        assert (hooks, backward_hooks) == (hooks_after, bw_after), name
        for (p, t), (p_after, t_after) in zip(params, params_after, strict=True):
            assert p == p_after and torch.equal(t, t_after), (name, p)


def test_user_rules_survive_and_models_are_unchanged() -> None:
    model = _model(4)
    embeds = _embeds(model, 4)
    head_rule = EpsilonRule(0.1)
    model.lm_head.rule = head_rule
    original_before = _snapshot(model)
    prepared = prepare_captum_lrp(model)
    assert prepared.model.lm_head.rule is head_rule
    out_proj = prepared.model.backbone.layers[0].mixer.out_proj
    gamma = GammaRule(0.5)
    out_proj.rule = gamma
    prepared_before = _snapshot(prepared)
    with torch.no_grad():
        output_before = prepared(embeds)

    first = LRP(prepared).attribute(embeds, target=(-1, 2))
    second = LRP(prepared).attribute(embeds, target=(-1, 2))
    LayerLRP(prepared, out_proj).attribute(embeds, target=(-1, 2))
    with pytest.raises(IndexError):
        LRP(prepared).attribute(embeds, target=(-1, VOCAB + 5))

    assert out_proj.rule is gamma and prepared.model.lm_head.rule is head_rule
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    without_user_rules = LRP(prepare_captum_lrp(model, MambaRules())).attribute(
        embeds, target=(-1, 2)
    )
    assert _relative(first, without_user_rules) > 1e-3
    _assert_same(prepared_before, _snapshot(prepared))
    _assert_same(original_before, _snapshot(model))
    with torch.no_grad():
        torch.testing.assert_close(prepared(embeds), output_before, rtol=0, atol=0)


def test_exception_in_the_forward_leaves_weights_and_rules() -> None:
    model = _model(5)
    embeds = _embeds(model, 5)
    prepared = prepare_captum_lrp(model, MambaRules(linear=Gamma(0.25)))
    before = _snapshot(prepared)
    failing = prepared.model.backbone.layers[1].mixer

    def fail(module: nn.Module, args: object) -> None:
        raise RuntimeError("stop")

    handle = failing.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="stop"):
        LRP(prepared).attribute(embeds, target=(-1, 2))
    handle.remove()
    _assert_same(before, _snapshot(prepared))


def test_rules_by_default_and_switches() -> None:
    prepared = prepare_captum_lrp(_model(0)).model
    block = prepared.backbone.layers[0]
    assert type(block.norm.rule) is NormRule
    assert type(block.mixer.conv_act.rule) is SiLURule
    assert type(block.mixer.gate_act.rule) is SiLURule
    assert type(block.mixer.ssm.rule) is SSMRule
    assert type(block.mixer.gate.rule) is GateRule
    assert type(block.residual.rule) is LRP0Rule
    assert type(block.mixer.in_proj.rule) is LRP0Rule
    off = prepare_captum_lrp(_model(0), MambaRules.gradient_x_input()).model.backbone.layers[0]
    assert type(off.norm.rule) is LRP0Rule and type(off.mixer.ssm.rule) is LRP0Rule
    assert type(captum_linear_rule(Epsilon(0.5))) is EpsilonRule
    ruled = prepare_captum_lrp(_model(0), MambaRules().override("*.out_proj", linear=Gamma(0.5)))
    assert type(ruled.model.backbone.layers[1].mixer.out_proj.rule) is GammaRule
    assert type(ruled.model.backbone.layers[1].mixer.in_proj.rule) is LRP0Rule
    assert rule_for(block.mixer.in_proj) is None
    with pytest.raises(TypeError, match="PropagationRule"):
        block.mixer.gate.rule = "half"


class _Scale(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1.0, 2.0, size, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class _Classifier(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = MambaModel(mamba_config(vocab_size=VOCAB)).double()
            self.scale = _Scale(16)
            self.head = nn.Linear(16, 3, bias=False, dtype=torch.float64)

    def forward(self, inputs_embeds: Tensor, attention_mask=None, use_cache=None) -> Tensor:
        hidden = self.backbone(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        return self.head(self.scale(hidden[:, -1]))


def test_registry_extends_to_user_modules() -> None:
    model = _Classifier(6).eval()
    embeds = _embeds(model.backbone, 6)
    # the innermost module without a rule is named first, then the undeclared class
    with pytest.raises(UnsupportedModelError, match=r"^scale \(.*_Scale\)"):
        prepare_captum_lrp(model)
    with pytest.raises(UnsupportedModelError, match=r"^scale \(.*_Scale\)"):
        MambaLRP(model)
    register_rule(_Scale, LRP0Rule)
    with pytest.raises(UnsupportedModelError, match=r"^<model> \(.*_Classifier\).*register"):
        prepare_captum_lrp(model)
    register_container(_Classifier)
    prepared = prepare_captum_lrp(model)
    assert type(prepared.model.scale.rule) is LRP0Rule
    expected = MambaLRP(model).attribute(embeds, target=1)
    actual = LRP(prepared).attribute(embeds, target=1)
    assert _relative(actual, expected) <= 1e-10


def test_unsupported_model() -> None:
    with pytest.raises(UnsupportedModelError, match="contains no supported block"):
        prepare_captum_lrp(nn.Sequential(nn.Linear(2, 2)))
