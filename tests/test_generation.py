"""Generation attribution: one forward pass and one backward pass per generated token,
against what the per-prefix computation gives, written out here.

"Today's" method (before the one-forward implementation) explained step ``j`` by a
separate Gradient x Input pass over the context, with step ``j``'s ``(position,
token)`` target, and generated greedily by recomputing the whole prefix for every new
token. :func:`_per_prefix_reference` and :func:`_greedy_reference` do exactly that with
the independent float64 reference forwards of the conformance cases (the rules written
as ``detach`` calls, no captum-mamba code), for every transformers language model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from captum.attr import LLMAttributionResult
from cases import ArchitectureCase, load_cases
from torch import Tensor, nn

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.attr import AttributionInputError
from captum_mamba.attr._stepping import STEPPABLE_KINDS
from captum_mamba.attr.generation import (
    GenerationAttributionResult,
    attribute_generation,
    greedy_generate,
)
from captum_mamba.models import mamba_config, random_mamba_lm

VOCAB = 64
PROMPT = [5, 17, 33, 2, 48]
LM_CASES = [c for c in load_cases()[0] if c.name in ("hf_mamba", "hf_mamba2", "hf_falcon_mamba")]


def _model(seed: int) -> nn.Module:
    config = mamba_config(vocab_size=VOCAB, tie_word_embeddings=False)
    return random_mamba_lm(config, seed=seed, dtype=torch.float64)


def _embed(model: nn.Module, ids: list[int]) -> Tensor:
    return model.get_input_embeddings()(torch.tensor([ids])).detach().to(torch.float64)


def _greedy_reference(case: ArchitectureCase, model: nn.Module, prompt: list[int], steps: int):
    """Greedy tokens, recomputing the whole prefix with the reference forward each time."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = case.reference(model, _embed(model, sequence), MambaRules.gradient_x_input())
            sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(prompt) :]


def _per_prefix_reference(
    case: ArchitectureCase,
    model: nn.Module,
    prompt: list[int],
    generated: list[int],
    log_prob: bool,
    rules: MambaRules,
) -> tuple[Tensor, Tensor]:
    """Step by step: Gradient x Input of the reference forward over the context, for
    step ``j``'s logit (or log-probability) at its position. Returns the relevance rows
    ``(steps, context)`` and the explained values ``(steps,)``."""
    context = prompt + generated[:-1]
    rows, values = [], []
    for step, token in enumerate(generated):
        leaf = _embed(model, context).requires_grad_()
        logits = case.reference(model, leaf, rules)[0, len(prompt) - 1 + step]
        value = (torch.log_softmax(logits, -1) if log_prob else logits)[token]
        (grad,) = torch.autograd.grad(value, leaf)
        rows.append((leaf * grad).detach()[0].sum(-1))
        values.append(value.detach())
    return torch.stack(rows), torch.stack(values)


def _relative(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("log_prob", [False, True], ids=["logit", "log_prob"])
@pytest.mark.parametrize("case", LM_CASES, ids=lambda c: c.name)
def test_matches_per_prefix_reference(case: ArchitectureCase, log_prob: bool) -> None:
    model = case.build(case.configs[0], 0, False)
    vocab = model.get_input_embeddings().num_embeddings
    prompt = [t % vocab for t in PROMPT]
    result = attribute_generation(model, prompt, max_new_tokens=6, log_prob=log_prob)
    generated = _greedy_reference(case, model, prompt, 6)
    assert isinstance(result, GenerationAttributionResult)
    assert isinstance(result, LLMAttributionResult)
    assert result.output_tokens == [str(t) for t in generated]
    assert result.input_tokens == [str(t) for t in prompt + generated[:-1]]
    expected, values = _per_prefix_reference(case, model, prompt, generated, log_prob, MambaRules())
    assert _relative(result.token_attr, expected) <= 1e-10
    assert _relative(result.seq_attr, expected.sum(0)) <= 1e-10
    assert _relative(result.explained, values) <= 1e-12
    assert _relative(result.convergence_delta, values - expected.sum(1)) <= 1e-9
    future = torch.ones_like(expected, dtype=torch.bool).triu(len(prompt))
    assert bool((result.token_attr[future] == 0).all())
    with torch.no_grad():
        logits = case.reference(model, _embed(model, prompt + generated), MambaRules())[0]
    probs = [
        float(torch.softmax(logits[len(prompt) - 1 + j], -1)[t]) for j, t in enumerate(generated)
    ]
    assert _relative(result.output_probs, torch.tensor(probs, dtype=torch.float64)) <= 1e-12


@pytest.mark.parametrize("case", LM_CASES, ids=lambda c: c.name)
def test_greedy_generation_continues_the_state(case: ArchitectureCase) -> None:
    """20 tokens from the recurrent state equal 20 full recomputations, with the reference
    forward and with the model's own forward."""
    model = case.build(case.configs[-1], 1, False)
    vocab = model.get_input_embeddings().num_embeddings
    prompt = [t % vocab for t in PROMPT]
    generated = greedy_generate(model, prompt, 20).tolist()
    assert generated == _greedy_reference(case, model, prompt, 20)
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            logits = model(torch.tensor([sequence]), use_cache=False).logits
            sequence.append(int(logits[0, -1].argmax()))
    assert generated == sequence[len(prompt) :]


@pytest.mark.parametrize(
    "case", [c for c in LM_CASES if c.name != "hf_mamba2"], ids=lambda c: c.name
)
def test_greedy_generation_equals_transformers_generate(case: ArchitectureCase) -> None:
    """Mamba-1 families: transformers' own cached generation gives the same tokens.
    (transformers' cached Mamba-2 generation on CPU differs from its own full forward, so
    it is no reference there.)"""
    model = case.build(case.configs[-1], 1, False)
    vocab = model.get_input_embeddings().num_embeddings
    prompt = [t % vocab for t in PROMPT]
    own = model.generate(
        torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False
    )
    assert greedy_generate(model, prompt, 20).tolist() == own[0, len(prompt) :].tolist()


@pytest.mark.parametrize("case", LM_CASES, ids=lambda c: c.name)
def test_conservation_and_the_log_softmax_delta(case: ArchitectureCase) -> None:
    """Bias-free models: the relevances sum to each logit; for log-probabilities the
    delta is minus the entropy of the predicted distribution (the logsumexp term the
    rules do not explain)."""
    model = case.build(case.configs[0], 2, True)
    vocab = model.get_input_embeddings().num_embeddings
    prompt, targets = [t % vocab for t in PROMPT], [1, 4, 2, 3]
    logit = attribute_generation(model, prompt, target_ids=targets)
    assert (logit.convergence_delta.abs() <= 1e-10 * logit.explained.abs()).all()
    log_prob = attribute_generation(model, prompt, target_ids=targets, log_prob=True)
    with torch.no_grad():
        logits = case.reference(model, _embed(model, prompt + targets[:-1]), MambaRules())[0]
    p = torch.softmax(logits[len(prompt) - 1 :], -1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(log_prob.convergence_delta, -entropy, rtol=1e-9, atol=1e-12)
    assert (log_prob.explained < 0).all()


def test_lean_path_is_bit_identical() -> None:
    model = _model(3)
    fast = attribute_generation(model, PROMPT, max_new_tokens=4, lean=False)
    lean = attribute_generation(model, PROMPT, max_new_tokens=4, lean=True)
    assert fast.token_attr.abs().max() > 0
    assert (fast.token_attr - lean.token_attr).abs().max() <= 1e-12 * fast.token_attr.abs().max()
    assert fast.output_tokens == lean.output_tokens


def test_given_targets_rules_and_mamba_lrp() -> None:
    model = _model(2)
    targets = [7, 7, 60, 1]
    rules = MambaRules(gate=False)
    result = attribute_generation(model, torch.tensor([PROMPT]), target_ids=targets, rules=rules)
    lrp = MambaLRP(model, rules=rules)
    for step, token in enumerate(targets):
        prefix = PROMPT + targets[:step]
        relevance = lrp.attribute(_embed(model, prefix), target=(-1, token)).sum(-1)[0]
        torch.testing.assert_close(
            result.token_attr[step, : len(prefix)], relevance, rtol=1e-9, atol=1e-12
        )


class _Letters:
    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_token_labels_and_plots() -> None:
    plt.switch_backend("Agg")
    model = _model(3)
    result = attribute_generation(model, PROMPT, max_new_tokens=3, tokenizer=_Letters())
    assert result.input_tokens[: len(PROMPT)] == ["f", "r", "h", "c", "w"]
    fig, ax = result.plot_token_attr()
    assert len(ax.get_yticklabels()) == 3
    assert len(ax.get_xticklabels()) == len(PROMPT) + 2
    plt.close(fig)
    fig, _ = result.plot_seq_attr()
    plt.close(fig)


def test_stops_at_eos_and_rejects_bad_arguments() -> None:
    model = _model(0)
    first = int(greedy_generate(model, PROMPT, 1)[0])
    result = attribute_generation(model, PROMPT, max_new_tokens=5, eos_token_id=first)
    assert result.output_tokens == [str(first)]
    with pytest.raises(AttributionInputError, match=r"no generated token.*max_new_tokens=0"):
        attribute_generation(model, PROMPT, max_new_tokens=0)
    with pytest.raises(AttributionInputError, match="one sequence"):
        attribute_generation(model, torch.tensor([PROMPT, PROMPT]))
    with pytest.raises(AttributionInputError, match="prompt_ids is empty"):
        attribute_generation(model, [])
    with pytest.raises(AttributionInputError, match="target_ids is empty"):
        attribute_generation(model, PROMPT, target_ids=[])
    with pytest.raises(AttributionInputError, match="token ids have dtype"):
        attribute_generation(model, [0.5, 1.0])
    for bad in (0, -2, 1.5, True):
        with pytest.raises(AttributionInputError, match="steps_per_batch must be a positive"):
            attribute_generation(model, PROMPT, max_new_tokens=2, steps_per_batch=bad)
    with pytest.warns(DeprecationWarning, match="steps_per_batch has no effect"):
        attribute_generation(model, PROMPT, max_new_tokens=2, steps_per_batch=1)


def test_step_backend_refuses_operations_it_cannot_continue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("captum_mamba.attr._stepping.STEPPABLE_KINDS", STEPPABLE_KINDS - {"gate"})
    with pytest.raises(NotImplementedError, match=r"of kind \['gate'\], which cannot be"):
        greedy_generate(_model(0), PROMPT, 2)
