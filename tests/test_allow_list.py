"""Coverage by allow-list: every module on the relevance path is handled, safe, a declared
container, or refused with a one-line ``UnsupportedModelError`` naming its path, its type
and what to do. One test per case that used to pass silently with unconserved relevance.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from cases.hf_mamba import build_lm
from helpers import assert_unchanged, relative_error, snapshot
from torch import Tensor, nn
from transformers import GPT2Config, Mamba2Config, MambaModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm
from transformers.models.mamba2.modeling_mamba2 import Mamba2Block

from captum_mamba import (
    AttributionInputError,
    Epsilon,
    MambaAttentionRollout,
    MambaAttr,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
    rules_applied,
)
from captum_mamba.adapters import register_container
from captum_mamba.lrp import prepare_captum_lrp


def _embeds(model: nn.Module, seed: int = 0, length: int = 6) -> Tensor:
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(seed))
    return model.get_input_embeddings()(ids).detach()


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def _relevance_and_delta(model: nn.Module, embeds: Tensor) -> tuple[Tensor, Tensor]:
    return MambaLRP(model).attribute(embeds, target=(-1, 3), return_convergence_delta=True)


# --- known equivalents and subclasses are handled: same relevance, conserved ---------


class SubclassedNorm(MambaRMSNorm):
    """A subclass that only adds a method: computes what its base computes."""

    def describe(self) -> str:
        return "norm"


class SubclassedMixer(MambaMixer):
    """A user subclass of the mixer that does not change its forward."""


def _swapped(replace: str) -> tuple[nn.Module, nn.Module]:
    """The same model twice: the original and one with a module replaced by an equivalent."""
    original, model = build_lm(seed=1, zero_biases=True), build_lm(seed=1, zero_biases=True)
    if replace == "torch-rmsnorm":
        old = model.backbone.norm_f
        new = nn.RMSNorm(old.weight.shape[0], eps=old.variance_epsilon, dtype=torch.float64)
        new.weight.data.copy_(old.weight.data)
        model.backbone.norm_f = new
    elif replace == "norm-subclass":
        old = model.backbone.norm_f
        new = SubclassedNorm(old.weight.shape[0], eps=old.variance_epsilon).double()
        new.weight.data.copy_(old.weight.data)
        model.backbone.norm_f = new
    else:
        old = model.backbone.layers[0].mixer
        new = SubclassedMixer(model.config, layer_idx=0).double()
        new.load_state_dict(old.state_dict())
        model.backbone.layers[0].mixer = new
    return original, model


@pytest.mark.parametrize("replace", ["torch-rmsnorm", "norm-subclass", "mixer-subclass"])
def test_equivalent_and_subclassed_modules_are_explained_like_the_original(replace: str):
    original, model = _swapped(replace)
    embeds = _embeds(model)
    expected, _ = _relevance_and_delta(original, embeds)
    relevance, delta = _relevance_and_delta(model, embeds)
    assert relative_error(relevance, expected) <= 1e-12
    assert delta.abs().max() <= 1e-12
    prepared = prepare_captum_lrp(model)
    from captum.attr import LRP

    assert relative_error(LRP(prepared).attribute(embeds, target=(-1, 3)), expected) <= 1e-10


@register_container
class LayerNormClassifier(nn.Module):
    """A classifier head with ``nn.LayerNorm`` on the last position of a Mamba backbone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.backbone = MambaModel(build_lm(seed=3).config)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3, bias=False)
        with torch.no_grad():
            self.norm.weight.add_(0.5 * torch.randn(16))

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        hidden = self.backbone(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        return self.head(self.norm(hidden[:, -1]))


def test_layer_norm_head_gets_the_ln_rule_and_conserves():
    model = LayerNormClassifier().double().eval()
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv1d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    embeds = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relevance, delta = MambaLRP(model, forward_func=model).attribute(
        embeds, target=2, return_convergence_delta=True
    )
    with torch.no_grad():
        logit = model(embeds)[:, 2]  # transformers computes parts in float32
    torch.testing.assert_close(relevance.sum((1, 2)) + delta, logit, rtol=1e-6, atol=0)
    nn.init.normal_(model.norm.bias)
    _, with_bias = MambaLRP(model, forward_func=model).attribute(
        embeds, target=2, return_convergence_delta=True
    )
    assert with_bias.abs().min() > 1e-6  # the LayerNorm's bias absorbs its share
    nn.init.zeros_(model.norm.bias)
    relevance, delta = MambaLRP(model, forward_func=model).attribute(
        embeds, target=2, return_convergence_delta=True
    )
    assert delta.abs().max() <= 1e-12
    # without the LN-rule the LayerNorm breaks conservation: the rule was applied
    _, off = MambaLRP(
        model, forward_func=model, rules=MambaRules().override(nn.LayerNorm, norm=False)
    ).attribute(embeds, target=2, return_convergence_delta=True)
    assert off.abs().max() > 1e-6


# --- everything else is refused in one line, naming path, type and what to do --------


class CrossAttentionLayer(nn.Module):
    """A softmax attention whose children are all linear: only its forward is not."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), dim=-1)
        return weights @ self.v(x)


@register_container
class HybridBlock(nn.Module):
    """A Mamba-2 block followed by an attention layer, as in hybrid models."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        config = Mamba2Config(
            hidden_size=16, num_heads=4, head_dim=8, n_groups=1, state_size=4, num_hidden_layers=1
        )
        self.mamba = Mamba2Block(config, layer_idx=0)
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(self.mamba(x))


#: Each refusal names the innermost module no rule covers (path, type): the attention
#: layer itself when all its children are covered, else the uncovered child.
ATTENTIONS = {
    "cross-attention": (
        lambda: CrossAttentionLayer(16),
        "0.attention",
        r"test_allow_list\.CrossAttentionLayer",
    ),
    "decoder-layer": (  # nn.MultiheadAttention itself is covered, the decoder layer not
        lambda: nn.TransformerDecoderLayer(16, 2, 32, batch_first=True),
        "0.attention",
        r"torch\.nn\.modules\.transformer\.TransformerDecoderLayer",
    ),
    "gpt2": (
        lambda: GPT2Attention(GPT2Config(n_embd=16, n_head=2), layer_idx=1),
        "0.attention.c_attn",
        r"Conv1D",
    ),
}


@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_attention_next_to_mamba_blocks_is_refused(attention: str):
    build, path, type_name = ATTENTIONS[attention]
    model = nn.Sequential(HybridBlock(build()))
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(model)
    message = _one_line(error)
    assert message.startswith(f"{path} (") and type_name.split("\\")[-1] in message
    assert "register an adapter" in message and "transformers Mamba-2" in message
    for make in (MambaAttentionRollout, MambaAttr, prepare_captum_lrp):
        with pytest.raises(UnsupportedModelError, match=rf"^{re.escape(path)} \("):
            make(model)
    with pytest.raises(UnsupportedModelError), rules_applied(model, MambaRules()):
        pass


class Pooler(nn.Module):
    """An unknown leaf on the relevance path (a tanh pooler)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


def test_unknown_container_and_unknown_leaf_are_refused():
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = MambaModel(build_lm().config)
            self.pooler = Pooler()

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = MambaModel(build_lm().config)

    # the innermost module without a rule is named: the unknown leaf, never the outer
    # class; the outer class only when everything inside it is covered
    with pytest.raises(UnsupportedModelError, match=r"^pooler \(test_allow_list\.Pooler\)"):
        MambaLRP(Classifier())
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(Backbone())
    assert _one_line(error).startswith("<model> (test_allow_list.")
    assert "register_container" in str(error.value)
    register_container(Classifier)
    with pytest.raises(UnsupportedModelError, match=r"^pooler \(test_allow_list\.Pooler\)"):
        MambaLRP(Classifier())


def test_subclass_that_overrides_forward_is_refused():
    class Doubled(MambaRMSNorm):
        def forward(self, hidden_states: Tensor) -> Tensor:
            return 2 * super().forward(hidden_states)

    model = build_lm()
    model.backbone.norm_f = Doubled(16)
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(model)
    assert _one_line(error).startswith("backbone.norm_f (")
    assert "overrides forward" in str(error.value)


@pytest.mark.parametrize("where", ["mixer", "linear"])
def test_instance_level_forward_is_refused_never_bypassed(where: str):
    model = build_lm(seed=2)
    module = model.backbone.layers[0].mixer
    if where == "linear":
        module = module.out_proj
    # as accelerate's add_hook_to_module does
    module.forward = functools.partial(type(module).forward, module)
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(model)
    assert "instance-level forward" in _one_line(error)
    assert "accelerate" in str(error.value)
    assert_unchanged(before, model)
    # set after construction: refused at the call, and nothing is left behind
    del module.forward
    lrp = MambaLRP(model, rules=MambaRules(linear=Epsilon(0.1)))
    module.forward = functools.partial(type(module).forward, module)
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="instance-level forward"):
        lrp.attribute(_embeds(model), target=(-1, 3))
    assert_unchanged(before, model)


def test_override_that_matches_nothing_is_refused():
    model = build_lm()
    with pytest.raises(ValueError, match=r"\['lm_haed'\] match no module"):
        MambaLRP(model, rules=MambaRules().override("lm_haed", linear=Epsilon(0.1)))


# --- one target vocabulary for every method -----------------------------------------


@pytest.mark.parametrize("method", [MambaLRP, MambaAttr])
def test_targets_mean_the_same_for_every_method(method):
    model = build_lm(seed=4)
    embeds = _embeds(model)
    explainer = method(model)
    with pytest.raises(AttributionInputError, match=r"target \(1,\) has 1 indices"):
        explainer.attribute(embeds, target=1)
    with pytest.raises(AttributionInputError, match="target is None"):
        explainer.attribute(embeds, target=None)
    with torch.no_grad():
        scores = explainer.attribute(embeds, target=(-1, 3))
    assert torch.isfinite(scores).all()
