"""MambaLRP on transformers Mamba beyond the conformance suite: linear rules (epsilon,
gamma) against the reference, float32, long sequences, and Captum's API and targets."""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba import ReferenceRules, reference_forward, reference_relevance, select
from torch import nn

from captum_mamba import (
    AttributionInputError,
    Epsilon,
    Gamma,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
    rules_applied,
)
from captum_mamba.models import mamba_config, random_mamba_lm

# (hidden, layers, state, seq, batch, extra config); seq from 1 to 64, batch > 1
CONFIGS = {
    "h8-l1-n4-s1": dict(hidden_size=8, num_hidden_layers=1, state_size=4, seq=1, batch=2),
    "h16-l2-n8-s23-bias": dict(
        hidden_size=16, num_hidden_layers=2, state_size=8, seq=23, batch=3, use_bias=True
    ),
    "h32-l3-n16-s64": dict(hidden_size=32, num_hidden_layers=3, state_size=16, seq=64, batch=2),
}


def setup(make_lm, name: str, seed: int, **kwargs):
    """Model, embeddings and one ``(position, token)`` target per example."""
    config = dict(CONFIGS[name])
    seq, batch = config.pop("seq"), config.pop("batch")
    model = make_lm(seed=seed, **config, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, seq, config["hidden_size"], generator=gen, dtype=torch.float64)
    embeds = embeds.to(model.dtype)
    logits, _ = reference_forward(model, embeds)
    positions = torch.randint(-seq, seq, (batch,), generator=gen).tolist()
    targets = [(p, int(logits[i, p].abs().argmax())) for i, p in enumerate(positions)]
    return model, embeds, targets


def max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def lm_logits(model, embeds, attention_mask=None):
    hidden = model.backbone(
        inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    return model.lm_head(hidden)


# ------------------------------------------------------------ against the reference


LINEAR_RULES = {
    "epsilon-default": (Epsilon(), ("epsilon", 1e-9)),
    "epsilon-0.1": (Epsilon(0.1), ("epsilon", 0.1)),
    "gamma": (Gamma(), ("gamma", 0.25, 1e-9)),
    "gamma-1-eps-0.05": (Gamma(1.0, 0.05), ("gamma", 1.0, 0.05)),
}


@pytest.mark.parametrize("ssm", [True, False])
@pytest.mark.parametrize("linear", list(LINEAR_RULES))
def test_linear_rules_match_reference(make_lm, linear: str, ssm: bool) -> None:
    """Epsilon/gamma on every Linear and Conv1d (the reference's backward is the explicit
    LRP formula); with the SSM rule off they also act on x_proj and dt_proj."""
    rule, reference_rule = LINEAR_RULES[linear]
    model, embeds, targets = setup(make_lm, "h16-l2-n8-s23-bias", seed=4)
    expected, _, _ = reference_relevance(
        model, embeds, targets, ReferenceRules(ssm=ssm, linear=reference_rule)
    )
    actual = MambaLRP(model, rules=MambaRules(ssm=ssm, linear=rule)).attribute(
        embeds, target=targets
    )
    # float64 throughout: LRP-0 agrees to ~1e-16, so anything above 1e-12 is a bug
    assert max_relative(actual, expected) <= 1e-12


# ------------------------------------------------------------ forward values


def test_forward_under_rules_is_unchanged_float32(make_lm) -> None:
    model, embeds, _ = setup(make_lm, "h32-l3-n16-s64", seed=1, dtype=torch.float32)
    with torch.no_grad():
        own = model(inputs_embeds=embeds).logits
        with rules_applied(model, MambaRules()):
            ruled = model(inputs_embeds=embeds).logits
    reference, _ = reference_forward(model, embeds)
    assert max_relative(ruled, own.double()) <= 1e-5
    assert max_relative(ruled, reference) <= 1e-5


# ------------------------------------------------------------ conservation


def conservation_error(relevance: torch.Tensor, explained: torch.Tensor) -> torch.Tensor:
    total = relevance.double().reshape(relevance.shape[0], -1).sum(1)
    return (total - explained.double()).abs() / explained.double().abs()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_mamba_lm_with_zero_biases_conserves(dtype: torch.dtype) -> None:
    """The library's own factory, unperturbed, with in/out projection biases switched on."""
    config = mamba_config(hidden_size=16, num_hidden_layers=2, state_size=8, use_bias=True)
    model = random_mamba_lm(config, seed=5, dtype=dtype, zero_biases=True)
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(2, 40, 16, generator=gen, dtype=torch.float64).to(dtype)
    logits, _ = reference_forward(model, embeds)
    targets = [(-1, int(logits[i, -1].abs().argmax())) for i in range(2)]
    relevance, delta = MambaLRP(model).attribute(
        embeds, target=targets, return_convergence_delta=True
    )
    explained = select(logits, targets).detach()
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    assert conservation_error(relevance, explained).max() <= tolerance
    assert (delta.double().abs() / explained.abs()).max() <= tolerance


def test_float32_matches_float64_reference(make_lm) -> None:
    model, embeds, targets = setup(make_lm, "h16-l2-n8-s23-bias", seed=2, dtype=torch.float32)
    expected, _, _ = reference_relevance(model, embeds, targets)
    actual = MambaLRP(model).attribute(embeds, target=targets)
    assert actual.dtype == torch.float32
    assert max_relative(actual, expected) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_sequence_is_finite_and_conserved(make_lm, dtype: torch.dtype) -> None:
    model = make_lm(seed=0, dtype=dtype, zero_biases=True, hidden_size=8, num_hidden_layers=1)
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 4096, 8, generator=gen, dtype=torch.float64).to(dtype)
    relevance, delta = MambaLRP(model).attribute(
        embeds, target=(-1, 5), return_convergence_delta=True
    )
    assert torch.isfinite(relevance).all()
    explained = delta + relevance.double().sum((1, 2))
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    assert (delta.abs() / explained.abs()).max() <= tolerance
    # the first token still gets relevance through the scan
    assert relevance[0, -1].abs().sum() > 0


# ------------------------------------------------------------ Captum contract


@pytest.fixture
def lm(make_lm):
    return setup(make_lm, "h16-l2-n8-s23-bias", seed=3, zero_biases=True)


def test_captum_properties(lm) -> None:
    model, _, _ = lm
    lrp = MambaLRP(model)
    assert lrp.has_convergence_delta() is True
    assert lrp.multiplies_by_inputs is True
    assert lrp.rules == MambaRules()


def test_int_target_on_classifier_output(lm) -> None:
    model, embeds, _ = lm
    lrp = MambaLRP(model, forward_func=lambda e: lm_logits(model, e)[:, -1, :])
    expected, _, _ = reference_relevance(model, embeds, [(-1, 7)] * embeds.shape[0])
    assert max_relative(lrp.attribute(embeds, target=7), expected) <= 1e-8
    # the same through the model's own float32 logits
    lrp32 = MambaLRP(model, forward_func=lambda e: model(inputs_embeds=e).logits[:, -1, :])
    assert max_relative(lrp32.attribute(embeds, target=7), expected) <= 1e-5


def test_target_forms(lm) -> None:
    model, embeds, _ = lm
    batch = embeds.shape[0]
    lrp = MambaLRP(model)
    per_example = [(1, 3), (-1, 10), (5, 63)][:batch]
    expected, _, _ = reference_relevance(model, embeds, per_example)
    for target in (per_example, torch.tensor(per_example)):
        assert max_relative(lrp.attribute(embeds, target=target), expected) <= 1e-8
    same, _, _ = reference_relevance(model, embeds, [(-2, 4)] * batch)
    assert max_relative(lrp.attribute(embeds, target=(-2, 4)), same) <= 1e-8

    classifier = MambaLRP(model, forward_func=lambda e: lm_logits(model, e)[:, -1, :])
    tokens = [3, 9, 60][:batch]
    expected, _, _ = reference_relevance(model, embeds, [(-1, k) for k in tokens])
    for target in (tokens, torch.tensor(tokens)):
        assert max_relative(classifier.attribute(embeds, target=target), expected) <= 1e-8
    single, _, _ = reference_relevance(model, embeds, [(-1, 9)] * batch)
    assert max_relative(classifier.attribute(embeds, target=torch.tensor(9)), single) <= 1e-8

    # target None for an output that is one value per example
    scalar = MambaLRP(model, forward_func=lambda e: lm_logits(model, e)[:, 2, 11])
    expected, _, _ = reference_relevance(model, embeds, [(2, 11)] * batch)
    assert max_relative(scalar.attribute(embeds), expected) <= 1e-8


def test_tuple_inputs(lm) -> None:
    model, embeds, targets = lm
    split = 9

    def forward(first, second):
        return lm_logits(model, torch.cat([first, second], dim=1))

    inputs = (embeds[:, :split], embeds[:, split:])
    result, delta = MambaLRP(model, forward_func=forward).attribute(
        inputs, target=targets, return_convergence_delta=True
    )
    assert isinstance(result, tuple) and len(result) == 2
    assert result[0].shape == inputs[0].shape and result[1].shape == inputs[1].shape
    expected, explained, _ = reference_relevance(model, embeds, targets)
    assert max_relative(torch.cat(result, dim=1), expected) <= 1e-8
    assert (delta.abs() / explained.abs()).max() <= 1e-9


def test_attention_mask_as_additional_forward_arg(lm) -> None:
    model, embeds, targets = lm
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    mask[0, :4] = 0
    mask[1, :1] = 0
    targets = [(-1, k) for _, k in targets]
    lrp = MambaLRP(model)
    actual = lrp.attribute(embeds, target=targets, additional_forward_args=(mask,))
    expected, _, _ = reference_relevance(model, embeds, targets, attention_mask=mask)
    assert max_relative(actual, expected) <= 1e-8
    unmasked, _, _ = reference_relevance(model, embeds, targets)
    assert max_relative(expected, unmasked) > 1e-6
    # masked positions receive relevance only through the residual stream
    with_ones = lrp.attribute(embeds, target=targets, additional_forward_args=torch.ones_like(mask))
    assert max_relative(with_ones, unmasked) <= 1e-8


# ------------------------------------------------------------ errors


def assert_one_line(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert message and "\n" not in message


@pytest.mark.parametrize(
    ("make_inputs", "match"),
    [
        (lambda e: torch.zeros(e.shape[:2], dtype=torch.long), "dtype"),
        (lambda e: e[0, 0], "shape"),
        (lambda e: e[:, :0], "non-empty"),
        (lambda e: e.index_fill(1, torch.tensor([2]), float("nan")), "NaN"),
        (lambda e: e.index_fill(1, torch.tensor([2]), float("inf")), "inf"),
    ],
    ids=["integer", "rank", "empty", "nan", "inf"],
)
def test_bad_inputs(lm, make_inputs, match: str) -> None:
    model, embeds, _ = lm
    with pytest.raises(AttributionInputError, match=match) as error:
        MambaLRP(model).attribute(make_inputs(embeds), target=(-1, 0))
    assert_one_line(error)


@pytest.mark.parametrize(
    "target",
    [(-1, 64), (23, 0), (-24, 0), (1,), (0, 1, 2), [(0, 1)], [(0, 1)] * 4, 1.5, "a", None],
    ids=[
        "token",
        "position",
        "negative",
        "short",
        "long",
        "too-few",
        "too-many",
        "float",
        "str",
        "none",
    ],
)
def test_bad_targets(lm, target) -> None:
    model, embeds, _ = lm
    with pytest.raises(AttributionInputError) as error:
        MambaLRP(model).attribute(embeds, target=target)
    assert_one_line(error)


def test_int_target_out_of_range_on_classifier(lm) -> None:
    model, embeds, _ = lm
    lrp = MambaLRP(model, forward_func=lambda e: lm_logits(model, e)[:, -1, :])
    for target in (64, -65, [0, 64, 1], torch.tensor([0, 1, 99])):
        with pytest.raises(AttributionInputError, match="out of range") as error:
            lrp.attribute(embeds, target=target)
        assert_one_line(error)


def test_non_mamba_model_is_rejected() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    for build in (lambda: MambaLRP(model), lambda: MambaLRP(model, forward_func=model)):
        with pytest.raises(UnsupportedModelError, match="no supported block") as error:
            build()
        assert_one_line(error)


@pytest.mark.parametrize(
    "forward",
    [
        lambda model, e: {"logits": lm_logits(model, e)},
        lambda model, e: [lm_logits(model, e)],
        lambda model, e: None,
        lambda model, e: lm_logits(model, e)[0, 0, 0],
    ],
    ids=["dict", "list", "none", "scalar"],
)
def test_forward_returning_non_tensor(lm, forward) -> None:
    model, embeds, _ = lm
    lrp = MambaLRP(model, forward_func=lambda e: forward(model, e))
    with pytest.raises(AttributionInputError) as error:
        lrp.attribute(embeds, target=(-1, 0))
    assert_one_line(error)
