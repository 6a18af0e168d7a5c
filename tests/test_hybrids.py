"""Hybrid and transformer models beyond the conformance suite: sequence-classification
heads, token ids with tied embeddings, computed language models (Granite's logits
scaling), every baseline, attention rollout against transformers' own attention weights,
and the one-line refusals (flash attention, a filled cache)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LRP, LayerLRP
from cases.hf_bamba import CASE as BAMBA
from cases.hf_falcon_h1 import CASE as FALCON_H1
from cases.hf_granitemoehybrid import CASE as GRANITE
from cases.hf_jamba import CASE as JAMBA
from cases.hf_llama import CASE as LLAMA
from cases.hf_nemotron_h import CASE as NEMOTRON_H
from cases.hf_zamba import CASE as ZAMBA
from cases.hf_zamba2 import CASE as ZAMBA2
from helpers import gradient_x_input, relative_error
from torch import Tensor, nn
from transformers import (
    DynamicCache,
    JambaConfig,
    JambaForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Zamba2Config,
    Zamba2ForSequenceClassification,
    ZambaConfig,
    ZambaForSequenceClassification,
)

from captum_mamba import LayerMambaLRP, MambaAttentionRollout, MambaLRP, MambaRules, rules_applied
from captum_mamba.attr.forward import default_forward
from captum_mamba.attr.targets import AttributionInputError
from captum_mamba.baselines.captum_methods import METHOD_NAMES, MethodSettings, build_method
from captum_mamba.baselines.hidden_attention import mean_hidden_attention
from captum_mamba.baselines.recording import record_layers
from captum_mamba.lrp import prepare_captum_lrp

HYBRIDS = [LLAMA, JAMBA, BAMBA, NEMOTRON_H, GRANITE, ZAMBA, ZAMBA2, FALCON_H1]


def _zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") and not name.endswith("dt_bias"):
                parameter.zero_()
    return model


@pytest.mark.parametrize("case", HYBRIDS, ids=lambda case: case.name)
def test_every_baseline_runs_on_hybrids(case) -> None:
    model = case.build(case.configs[0], 0, False)
    embeds, _ = case.inputs(model, case.configs[0], 0)
    settings = MethodSettings(ig_steps=4, smoothgrad_samples=2)
    for name in METHOD_NAMES:
        scores = build_method(name, model, settings=settings)(embeds[:1], (-1, 3))
        assert scores.shape == (1, embeds.shape[1]), name
        assert torch.isfinite(scores).all() and scores.abs().sum() > 0, name


def _llama_classifier() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=32, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForSequenceClassification(config).double().eval()


def _jamba_classifier() -> JambaForSequenceClassification:
    torch.manual_seed(1)
    config = JambaConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, vocab_size=32,
        mamba_d_state=4, mamba_dt_rank=2, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=0, num_experts=3, num_experts_per_tok=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    model = JambaForSequenceClassification(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("router.weight", "q_proj.weight", "k_proj.weight")):
                parameter.mul_(30.0)
    return model


def _zamba_classifier() -> ZambaForSequenceClassification:
    torch.manual_seed(2)
    config = ZambaConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, vocab_size=32,
        num_attention_heads=4, num_key_value_heads=2, n_mamba_heads=2, mamba_d_state=4,
        mamba_dt_rank=2, layers_block_type=["hybrid", "mamba", "hybrid"], num_labels=3,
        pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = ZambaForSequenceClassification(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "x_proj_weight")):
                parameter.mul_(30.0)
    return model


def _zamba2_classifier() -> Zamba2ForSequenceClassification:
    torch.manual_seed(3)
    config = Zamba2Config(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, vocab_size=32,
        num_attention_heads=4, n_mamba_heads=4, mamba_d_state=4, chunk_size=4,
        adapter_rank=4, use_shared_attention_adapter=True, use_mem_rope=True,
        layers_block_type=["mamba", "hybrid", "hybrid"], num_labels=3, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = Zamba2ForSequenceClassification(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(30.0)
    return model


@pytest.mark.parametrize(
    "build", [_llama_classifier, _jamba_classifier, _zamba_classifier, _zamba2_classifier]
)
def test_sequence_classification_heads_are_explained(build) -> None:
    model = _zero_biases(build())
    ids = torch.tensor([[5, 7, 9, 11, 13, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    mask = (ids != 0).long()
    cp = MambaRules.cp_lrp()
    relevance, delta = LayerMambaLRP(model, model.get_input_embeddings(), rules=cp).attribute(
        ids, target=2, additional_forward_args=mask, return_convergence_delta=True
    )
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits  # pooled at the last token
    assert logits.shape == (2, 3)
    torch.testing.assert_close(relevance.sum((1, 2)), logits[:, 2], rtol=1e-6, atol=0)
    assert (delta.abs() / logits[:, 2].abs()).max() <= 1e-10
    assert torch.all(relevance[0, 5:] == 0)  # padding
    embeds = model.get_input_embeddings()(ids[1:]).detach()
    _, delta = MambaLRP(model, rules=cp).attribute(embeds, target=1, return_convergence_delta=True)
    assert delta.abs().max() <= 1e-10 * model(inputs_embeds=embeds).logits.abs().max()


@pytest.mark.parametrize(
    ("case", "config"),
    [
        (LLAMA, "llama-mha-biased-gelu-tied-sdpa"),
        (ZAMBA, ZAMBA.configs[0]),
        (ZAMBA2, ZAMBA2.configs[0]),
    ],
    ids=lambda value: getattr(value, "name", value),
)
def test_token_ids_with_tied_embeddings(case, config: str) -> None:
    model = _zero_biases(case.build(config, 0, False))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    relevance, delta = LayerMambaLRP(
        model, model.get_input_embeddings(), rules=MambaRules.cp_lrp()
    ).attribute(ids, target=(5, 4), return_convergence_delta=True)
    with torch.no_grad():
        logit = model(input_ids=ids).logits[:, 5, 4]
    torch.testing.assert_close(relevance.sum((1, 2)), logit, rtol=1e-6, atol=0)
    assert (delta.abs() / logit.abs()).max() <= 1e-10


def test_granite_default_forward_explains_the_scaled_logits() -> None:
    model = GRANITE.build(GRANITE.configs[0], 0, False)
    embeds, _ = GRANITE.inputs(model, GRANITE.configs[0], 0)
    assert model.config.logits_scaling != 1.0
    with torch.no_grad():
        explained = default_forward(model, "inputs_embeds")(embeds)
        own = model(inputs_embeds=embeds).logits
        unscaled = model.lm_head(model.model(inputs_embeds=embeds).last_hidden_state)
    assert relative_error(explained, own) <= 1e-6
    assert relative_error(explained * model.config.logits_scaling, unscaled) <= 1e-6


def _rollout(attentions: list[Tensor], position: int) -> Tensor:
    """Rollout row of per-layer ``(batch, L, L)`` attentions, by explicit matrix products."""
    joint = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for attention in attentions:
        mixed = attention + torch.eye(attention.shape[-1], dtype=attention.dtype)
        joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
    return joint[:, position]


def test_rollout_of_a_transformer_uses_its_softmax_attention() -> None:
    model = LLAMA.build("llama-gqa-eager", 0, False)
    embeds, _ = LLAMA.inputs(model, "llama-gqa-eager", 0)
    with torch.no_grad():
        scores = MambaAttentionRollout(model).attribute(embeds, position=-1)
        own = model(inputs_embeds=embeds, output_attentions=True).attentions
    expected = _rollout([weights.mean(1) for weights in own], -1)
    assert relative_error(scores, expected) <= 1e-5  # transformers' softmax is float32


def test_rollout_of_a_hybrid_chains_hidden_and_softmax_attention_in_layer_order() -> None:
    model = JAMBA.build("attention-moe-eager", 0, False)
    embeds, _ = JAMBA.inputs(model, "attention-moe-eager", 0)
    forward = default_forward(model, "inputs_embeds")
    with torch.no_grad():
        scores = MambaAttentionRollout(model).attribute(embeds, position=-1)
        own = iter(model(inputs_embeds=embeds, output_attentions=True).attentions)
        _, layers = record_layers(model, lambda: forward(embeds))
    per_layer = [
        mean_hidden_attention(layer.ssms[0].inputs) if layer.ssms else next(own).mean(1)
        for layer in layers
    ]
    assert [bool(layer.attentions) for layer in layers] == [False, True, False, True]
    assert relative_error(scores, _rollout(per_layer, -1)) <= 1e-5  # float32 softmax


def test_other_attention_implementations_are_refused_in_one_line() -> None:
    model = LLAMA.build("llama-gqa-eager", 0, False)
    embeds, _ = LLAMA.inputs(model, "llama-gqa-eager", 0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError) as error:
        MambaLRP(model).attribute(embeds, target=(-1, 3))
    message = str(error.value)
    assert "\n" not in message and "'flash_attention_2'" in message and "'sdpa'" in message


def test_a_filled_cache_is_refused() -> None:
    config = LlamaConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=32,
    )  # fmt: skip
    model = LlamaForCausalLM(config).double().eval()
    embeds = torch.randn(1, 5, 16, dtype=torch.float64)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        model(inputs_embeds=embeds, cache=cache, use_cache=True)
        with (
            pytest.raises(NotImplementedError, match="explains whole sequences"),
            rules_applied(model, MambaRules()),
        ):
            model(inputs_embeds=embeds[:, -1:], cache=cache, use_cache=True)


def test_rollout_counts_the_layers_that_mix_positions() -> None:
    model = NEMOTRON_H.build("groups-eager", 0, False)  # Mamba, MoE, attention, MLP blocks
    embeds, _ = NEMOTRON_H.inputs(model, "groups-eager", 0)
    with torch.no_grad():
        last = MambaAttentionRollout(model, start_layer=-1).attribute(embeds)
        second = MambaAttentionRollout(model, start_layer=1).attribute(embeds)
    torch.testing.assert_close(last, second, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out of range for a model with 2 layers"):
        MambaAttentionRollout(model, start_layer=2)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("config", ["llama-mha-biased-gelu-tied-sdpa", "mistral-window-mqa-sdpa"])
def test_sdpa_padding_masks_are_read_like_eager_ones(config: str, side: str) -> None:
    model = LLAMA.build(config, 4, False)
    embeds, _ = LLAMA.inputs(model, config, 4)
    length = embeds.shape[1]
    mask = torch.ones(2, length, dtype=torch.long)
    pad = slice(0, 3) if side == "left" else slice(length - 3, length)
    mask[1, pad] = 0
    last = length - 1 if side == "left" else length - 4
    relevance = MambaLRP(model).attribute(
        embeds, target=[(length - 1, 1), (last, 2)], additional_forward_args=mask
    )
    assert torch.all(relevance[1, pad] == 0)
    real = mask[1].bool()
    alone = MambaLRP(model).attribute(embeds[1:2, real], target=[(length - 4, 2)])
    assert relative_error(relevance[1:2, real], alone) <= 1e-6  # float32 rotary table
    with torch.no_grad():
        padded = default_forward(model, "inputs_embeds")(embeds, mask)[1, last]
        with rules_applied(model, MambaRules()):
            ruled = default_forward(model, "inputs_embeds")(embeds, mask)[1, last]
    assert relative_error(ruled, padded) <= 1e-6


def test_falcon_h1_multiplies_looked_up_embeddings_and_logits() -> None:
    model = _zero_biases(FALCON_H1.build(FALCON_H1.configs[0], 0, False))
    model.model.embedding_multiplier = 3.0  # applied to token ids, not to inputs_embeds
    embedding = model.get_input_embeddings()
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    cp = MambaRules.cp_lrp()
    relevance, delta = LayerMambaLRP(model, embedding, rules=cp).attribute(
        ids, target=(5, 4), return_convergence_delta=True
    )
    embeds = embedding(ids).detach()
    with torch.no_grad():
        logit = model(input_ids=ids).logits[:, 5, 4]
        scaled = FALCON_H1.reference(model, 3.0 * embeds, MambaRules.gradient_x_input())
    assert relative_error(logit, scaled[:, 5, 4]) <= 1e-6  # transformers: float32 scans
    torch.testing.assert_close(relevance.sum((1, 2)), logit, rtol=1e-6, atol=0)
    assert (delta.abs() / logit.abs()).max() <= 1e-10
    # relevance of the embeddings is that of the scaled embeddings (a scale passes it on)
    expected, _ = gradient_x_input(
        lambda x: FALCON_H1.reference(model, 3.0 * x, cp), embeds, [(5, 4), (5, 4)]
    )
    assert relative_error(relevance, expected) <= 1e-10
    with torch.no_grad():
        explained = default_forward(model, "inputs_embeds")(embeds)
        unscaled = model.lm_head(model.model(inputs_embeds=embeds).last_hidden_state)
    assert relative_error(explained, unscaled * model.config.lm_head_multiplier) <= 1e-6


def _zamba2_sharing_block_instances():
    """Zamba2 whose hybrid layers 1 and 4 hold one block instance (as transformers 4.x
    built it), and the same model with an instance per depth (tied weights)."""
    config = ZAMBA2.configs[0]  # hybrid layers 1, 3, 4 use blocks 0, 1, 0
    tied = ZAMBA2.build(config, 0, False)
    shared = ZAMBA2.build(config, 0, False)
    layers = shared.model.layers
    layers[4].shared_transformer = layers[1].shared_transformer
    return tied, shared


def test_a_block_shared_by_several_depths_is_explained_at_each_use() -> None:
    tied, model = _zamba2_sharing_block_instances()
    embeds, targets = ZAMBA2.inputs(model, ZAMBA2.configs[0], 0)
    with torch.no_grad():
        assert (
            relative_error(ZAMBA2.own_output(model, embeds), ZAMBA2.own_output(tied, embeds)) == 0
        )
    for rules in (MambaRules(), MambaRules.cp_lrp()):
        relevance = MambaLRP(model, rules=rules).attribute(embeds, target=targets)
        expected, _ = gradient_x_input(
            lambda x, rules=rules: ZAMBA2.reference(model, x, rules), embeds, targets
        )
        assert relative_error(relevance, expected) <= 1e-10
        prepared = prepare_captum_lrp(model, rules)
        assert relative_error(LRP(prepared).attribute(embeds, target=targets), relevance) <= 1e-10
    layers = model.model.layers
    assert layers[4].shared_transformer is layers[1].shared_transformer  # left as it was
    copies = prepared.model.model.layers
    assert copies[4].shared_transformer is not copies[1].shared_transformer  # one per use
    assert copies[4].shared_transformer.self_attn.q_proj.weight is (
        layers[1].shared_transformer.self_attn.q_proj.weight
    )
    # LayerLRP reads one use: the same as the layer of that depth in the tied model
    forward = default_forward(tied, "inputs_embeds")
    for depth in (1, 4):
        path = f"model.layers.{depth}.shared_transformer.self_attn.o_proj"
        layer = prepared.model.get_submodule(path)
        actual = LayerLRP(prepared, layer).attribute(embeds, target=targets)
        expected = LayerMambaLRP(
            tied, tied.get_submodule(path), forward_func=forward, rules=MambaRules.cp_lrp()
        ).attribute(embeds, target=targets)
        assert relative_error(actual, expected) <= 1e-10, depth


def test_layer_mamba_lrp_refuses_a_layer_that_runs_at_several_depths() -> None:
    _, model = _zamba2_sharing_block_instances()
    embeds, targets = ZAMBA2.inputs(model, ZAMBA2.configs[0], 0)
    layer = model.model.layers[1].shared_transformer.self_attn.o_proj
    forward = default_forward(model, "inputs_embeds")
    with pytest.raises(AttributionInputError) as error:
        LayerMambaLRP(model, layer, forward_func=forward).attribute(embeds, target=targets)
    assert "ran 2 times" in str(error.value) and "\n" not in str(error.value)


def test_rollout_of_zamba_enters_the_shared_block_at_every_depth() -> None:
    model = ZAMBA.build("gqa-eager", 0, False)  # Mamba, hybrid, Mamba, hybrid
    embeds, _ = ZAMBA.inputs(model, "gqa-eager", 0)
    forward = default_forward(model, "inputs_embeds")
    with torch.no_grad():
        scores = MambaAttentionRollout(model).attribute(embeds, position=-1)
        own = iter(model(inputs_embeds=embeds, output_attentions=True).attentions)
        _, layers = record_layers(model, lambda: forward(embeds))
    assert [bool(layer.attentions) for layer in layers] == [False, True, False, False, True, False]
    per_layer = [
        mean_hidden_attention(layer.ssms[0].inputs) if layer.ssms else next(own).mean(1)
        for layer in layers
    ]
    assert relative_error(scores, _rollout(per_layer, -1)) <= 1e-5  # float32 softmax
