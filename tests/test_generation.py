"""Generation attribution against per-step MambaLRP calls on each prefix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from captum.attr import LLMAttributionResult
from torch import Tensor, nn

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.attr import AttributionInputError
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.models import mamba_config, random_mamba_lm

VOCAB = 64
PROMPT = [5, 17, 33, 2, 48]


def _model(seed: int) -> nn.Module:
    config = mamba_config(vocab_size=VOCAB, tie_word_embeddings=False)
    return random_mamba_lm(config, seed=seed, dtype=torch.float64)


def _logits(model: nn.Module, embeds: Tensor) -> Tensor:
    return model.lm_head(model.backbone(inputs_embeds=embeds).last_hidden_state)


def _greedy(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(prompt) :]


def _per_step(model: nn.Module, prompt: list[int], generated: list[int], log_prob: bool, rules):
    def forward(embeds: Tensor) -> Tensor:
        logits = _logits(model, embeds)
        return torch.log_softmax(logits, -1) if log_prob else logits

    lrp = MambaLRP(model, forward_func=forward, rules=rules)
    width = len(prompt) + len(generated) - 1
    rows = []
    for step, token in enumerate(generated):
        prefix = torch.tensor([prompt + generated[:step]])
        embeds = model.get_input_embeddings()(prefix).detach()
        relevance = lrp.attribute(embeds, target=(-1, token)).sum(-1)[0]
        rows.append(torch.cat([relevance, relevance.new_zeros(width - len(relevance))]))
    return torch.stack(rows)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("log_prob", [False, True], ids=["logit", "log_prob"])
def test_matches_per_step_mamba_lrp(seed: int, log_prob: bool) -> None:
    model = _model(seed)
    result = attribute_generation(model, PROMPT, max_new_tokens=6, log_prob=log_prob)
    generated = _greedy(model, PROMPT, 6)
    assert isinstance(result, LLMAttributionResult)
    assert result.output_tokens == [str(t) for t in generated]
    assert result.input_tokens == [str(t) for t in PROMPT + generated[:-1]]
    expected = _per_step(model, PROMPT, generated, log_prob, MambaRules())
    torch.testing.assert_close(result.token_attr, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.seq_attr, expected.sum(0), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + generated])).logits[0]
    probs = [
        float(torch.softmax(logits[len(PROMPT) - 1 + j], -1)[t]) for j, t in enumerate(generated)
    ]
    torch.testing.assert_close(result.output_probs, torch.tensor(probs, dtype=torch.float64))


def test_given_targets_rules_and_batches() -> None:
    model = _model(2)
    targets = [7, 7, 60, 1]
    rules = MambaRules(gate=False)
    result = attribute_generation(
        model, torch.tensor([PROMPT]), target_ids=targets, rules=rules, steps_per_batch=3
    )
    expected = _per_step(model, PROMPT, targets, False, rules)
    torch.testing.assert_close(result.token_attr, expected, rtol=1e-9, atol=1e-12)
    future = torch.ones_like(expected, dtype=torch.bool).triu(len(PROMPT))
    assert bool((result.token_attr[future] == 0).all())


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


def test_stops_at_eos_and_rejects_empty() -> None:
    model = _model(0)
    first = _greedy(model, PROMPT, 1)[0]
    result = attribute_generation(model, PROMPT, max_new_tokens=5, eos_token_id=first)
    assert result.output_tokens == [str(first)]
    with pytest.raises(AttributionInputError, match="no generated token"):
        attribute_generation(model, PROMPT, max_new_tokens=0)
    with pytest.raises(AttributionInputError, match="one sequence"):
        attribute_generation(model, torch.tensor([PROMPT, PROMPT]))
