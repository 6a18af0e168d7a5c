"""MambaRules: presets as data, overrides by path pattern or class, the same resolved rules
for MambaLRP and Captum's LRP."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from captum.attr import LRP
from cases.hf_mamba import build_lm
from helpers import relative_error
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm

from captum_mamba import Epsilon, Gamma, MambaLRP, MambaRules
from captum_mamba.lrp import EpsilonRule, GammaRule, LRP0Rule, NormRule, prepare_captum_lrp
from captum_mamba.rules import PRESETS
from captum_mamba.rules.config import EVERY_KIND


def test_gradient_x_input_switches_every_kind_off_including_new_ones() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithNewKind(MambaRules):
        new_kind: bool = True

    assert "new_kind" in WithNewKind.kinds()
    off = WithNewKind.gradient_x_input()
    assert all(getattr(off, kind) is False for kind in WithNewKind.kinds())
    only = WithNewKind.norm_only()
    assert only.norm and not only.new_kind and not only.ssm and not only.attention
    assert WithNewKind().new_kind is True


def test_presets_are_data() -> None:
    assert set(PRESETS) == {"mamba_lrp", "cp_lrp", "gradient_x_input", "norm_only"}
    assert PRESETS["gradient_x_input"] == {EVERY_KIND: False}
    assert MambaRules.preset("mamba_lrp") == MambaRules()
    with pytest.raises(ValueError, match="unknown preset 'lrp'; choose from"):
        MambaRules.preset("lrp")


OWNERS = (build_lm().backbone.layers[0].mixer,)


@pytest.mark.parametrize(
    ("selector", "path", "applies"),
    [
        ("lm_head", "lm_head", True),
        ("lm_head", "backbone.lm_head", False),
        ("backbone.layers.0", "backbone.layers.0.mixer.in_proj", True),
        ("backbone.layers.0", "backbone.layers.01.mixer", False),
        ("backbone.layers.[01].mixer.in_proj", "backbone.layers.1.mixer.in_proj", True),
        ("backbone.layers.[01].mixer.in_proj", "backbone.layers.2.mixer.in_proj", False),
        ("*.out_proj", "backbone.layers.3.mixer.out_proj", True),
        ("*.gate", "backbone.layers.3.mixer.gate_act", False),
        (MambaMixer, "backbone.layers.0.mixer.ssm", True),
        (MambaRMSNorm, "backbone.layers.0.mixer.ssm", False),
    ],
)
def test_override_matching(selector, path: str, applies: bool) -> None:
    rules = MambaRules().override(selector, ssm=False)
    assert rules.resolve(path, OWNERS).ssm is (not applies)
    assert rules.resolve(path, OWNERS).overrides == ()


def test_later_overrides_win_and_base_is_unchanged() -> None:
    base = MambaRules()
    rules = base.override("backbone.*", linear=Epsilon(0.5)).override("*.in_proj", linear=Gamma())
    assert base.overrides == ()
    assert rules.resolve("backbone.layers.0.mixer.in_proj", OWNERS).linear == Gamma()
    assert rules.resolve("backbone.layers.0.mixer.out_proj", OWNERS).linear == Epsilon(0.5)
    assert rules.resolve("lm_head", ()).linear == MambaRules().linear


def test_overrides_apply_the_same_to_mamba_lrp_and_captum_lrp() -> None:
    model = build_lm(seed=5)
    embeds = model.get_input_embeddings()(torch.arange(7)[None] % 64).detach()
    rules = (
        MambaRules()
        .override("lm_head", linear=Epsilon(0.1))
        .override(MambaRMSNorm, norm=False)
        .override("backbone.layers.1.mixer.in_proj", linear=Gamma(0.25))
    )
    prepared = prepare_captum_lrp(model, rules)
    assert type(prepared.model.lm_head.rule) is EpsilonRule
    assert type(prepared.model.backbone.layers[1].mixer.in_proj.rule) is GammaRule
    assert type(prepared.model.backbone.layers[0].mixer.in_proj.rule) is LRP0Rule
    assert type(prepared.model.backbone.norm_f.rule) is LRP0Rule
    expected = MambaLRP(model, rules=rules).attribute(embeds, target=(-1, 3))
    assert relative_error(LRP(prepared).attribute(embeds, target=(-1, 3)), expected) <= 1e-10
    plain = MambaLRP(model).attribute(embeds, target=(-1, 3))
    assert relative_error(expected, plain) > 1e-3
    default = prepare_captum_lrp(model)
    assert type(default.model.backbone.norm_f.rule) is NormRule
