"""LayerMambaLRP: token ids through the embedding layer, and relevance inside the model."""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba import reference_forward, reference_relevance, select

from captum_mamba import AttributionInputError, LayerMambaLRP, MambaLRP

SEQ, BATCH = 19, 3


def setup(make_lm, seed: int, **kwargs):
    model = make_lm(seed=seed, hidden_size=16, num_hidden_layers=3, state_size=4, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=gen)
    embeds = model.get_input_embeddings()(ids).detach()
    logits, _ = reference_forward(model, embeds)
    positions = torch.randint(-SEQ, SEQ, (BATCH,), generator=gen).tolist()
    targets = [(p, int(logits[i, p].abs().argmax())) for i, p in enumerate(positions)]
    return model, ids, embeds, targets


def max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def relative_delta(delta: torch.Tensor, explained: torch.Tensor) -> float:
    return float((delta.abs() / explained.abs()).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_embedding_layer_equals_mamba_lrp_on_embeddings(make_lm, seed: int) -> None:
    model, ids, embeds, targets = setup(make_lm, seed)
    layer = LayerMambaLRP(model, model.get_input_embeddings())
    actual = layer.attribute(ids, target=targets)
    assert actual.shape == embeds.shape
    on_embeds = MambaLRP(model).attribute(embeds, target=targets)
    torch.testing.assert_close(actual, on_embeds, rtol=1e-12, atol=1e-14)
    expected, _, _ = reference_relevance(model, embeds, targets)
    assert max_relative(actual, expected) <= 1e-8


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_layer_is_conserved(make_lm, seed: int) -> None:
    model, ids, embeds, targets = setup(make_lm, seed, zero_biases=True)
    logits, _ = reference_forward(model, embeds)
    explained = select(logits, targets).detach()
    relevance, delta = LayerMambaLRP(model, model.get_input_embeddings()).attribute(
        ids, target=targets, return_convergence_delta=True
    )
    assert delta.shape == (BATCH,)
    assert relative_delta(delta, explained) <= 1e-9
    assert relative_delta(explained - relevance.sum((1, 2)), explained) <= 1e-9


@pytest.mark.parametrize("block", [0, 1, 2])
@pytest.mark.parametrize("to_input", [True, False])
def test_block_relevance_matches_reference_and_is_conserved(
    make_lm, block: int, to_input: bool
) -> None:
    """Relevance of a block's input (output) is Gradient x Input at the residual stream
    entering (leaving) it in the reference, and sums to the logit without biases."""
    model, ids, embeds, targets = setup(make_lm, seed=block, zero_biases=True)
    _, explained, residual_relevance = reference_relevance(model, embeds, targets)
    layer = LayerMambaLRP(model, model.backbone.layers[block])
    actual, delta = layer.attribute(
        ids, target=targets, return_convergence_delta=True, attribute_to_layer_input=to_input
    )
    expected = residual_relevance[block if to_input else block + 1]
    assert actual.shape == embeds.shape
    assert max_relative(actual, expected) <= 1e-8
    assert relative_delta(delta, explained) <= 1e-9


def test_final_norm_input(make_lm) -> None:
    model, ids, embeds, targets = setup(make_lm, seed=4, zero_biases=True)
    _, explained, residual_relevance = reference_relevance(model, embeds, targets)
    actual, delta = LayerMambaLRP(model, model.backbone.norm_f).attribute(
        ids, target=targets, return_convergence_delta=True, attribute_to_layer_input=True
    )
    assert max_relative(actual, residual_relevance[-1]) <= 1e-8
    assert relative_delta(delta, explained) <= 1e-9


def test_attention_mask(make_lm) -> None:
    model, ids, embeds, targets = setup(make_lm, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    targets = [(-1, k) for _, k in targets]
    actual = LayerMambaLRP(model, model.get_input_embeddings()).attribute(
        ids, target=targets, additional_forward_args=(mask,)
    )
    expected, _, _ = reference_relevance(model, embeds, targets, attention_mask=mask)
    assert max_relative(actual, expected) <= 1e-8


def test_captum_properties(make_lm) -> None:
    model, *_ = setup(make_lm, seed=0)
    layer = LayerMambaLRP(model, model.get_input_embeddings())
    assert layer.has_convergence_delta() is True
    assert layer.multiplies_by_inputs is True
    assert layer.layer is model.get_input_embeddings()


@pytest.mark.parametrize(
    ("make_ids", "match"),
    [
        (lambda ids: ids.double(), "dtype"),
        (lambda ids: ids[0], "shape"),
        (lambda ids: ids[:, :0], "non-empty"),
        (lambda ids: ids.index_fill(1, torch.tensor([3]), 64), "vocabulary"),
        (lambda ids: ids.index_fill(1, torch.tensor([3]), -1), "vocabulary"),
    ],
    ids=["float", "rank", "empty", "above-vocab", "negative"],
)
def test_bad_token_ids(make_lm, make_ids, match: str) -> None:
    model, ids, _, _ = setup(make_lm, seed=0)
    with pytest.raises(AttributionInputError, match=match) as error:
        LayerMambaLRP(model, model.get_input_embeddings()).attribute(make_ids(ids), target=(-1, 0))
    assert "\n" not in str(error.value)


def test_layer_that_runs_twice_is_rejected(make_lm) -> None:
    model, ids, _, _ = setup(make_lm, seed=0)

    def twice(input_ids):
        first = model.backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        second = model.backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        return model.lm_head(first + second)

    hooks = len(model.backbone.layers[1]._forward_hooks)
    layer = LayerMambaLRP(model, model.backbone.layers[1], forward_func=twice)
    with pytest.raises(AttributionInputError, match="2 times") as error:
        layer.attribute(ids, target=(-1, 0))
    assert "\n" not in str(error.value)
    assert len(model.backbone.layers[1]._forward_hooks) == hooks
