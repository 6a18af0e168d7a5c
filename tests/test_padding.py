"""Padded batches (left or right padding, attention mask as additional_forward_args)
give the relevances of the unpadded single examples on real tokens, and exactly zero
on padding."""

from __future__ import annotations

import pytest
import torch
from transformers import MambaForCausalLM

from captum_mamba import LayerMambaLRP, MambaLRP, MambaRules

VOCAB = 64
LENGTHS = (6, 11, 1, 9)
TOKENS = (5, 17, 42, 63)


@pytest.fixture
def model(make_lm) -> MambaForCausalLM:
    # Biases on (conv bias perturbed): a left pad would shift the causal conv if the
    # mask were mishandled.
    return make_lm(seed=11, vocab_size=VOCAB)


def examples(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen) for n in LENGTHS]


def pad(sequences: list[torch.Tensor], side: str, seed: int = 1):
    """Pad with random token ids (not a fixed pad id), so that any leak of a pad
    embedding changes the relevances."""
    gen = torch.Generator().manual_seed(seed)
    width = max(len(s) for s in sequences)
    ids = torch.randint(0, VOCAB, (len(sequences), width), generator=gen)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask


def targets(side: str, width: int) -> list[tuple[int, int]]:
    """The next-token logit at the last real token of each example."""
    last = [n - 1 if side == "right" else width - 1 for n in LENGTHS]
    return list(zip(last, TOKENS, strict=True))


def single(lrp, sequences: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Relevance and delta of each example alone, unpadded and without a mask."""
    results = []
    for seq, token in zip(sequences, TOKENS, strict=True):
        relevance, delta = lrp.attribute(
            seq[None], target=(len(seq) - 1, token), return_convergence_delta=True
        )
        results.append((relevance[0], delta[0]))
    return results


def real_span(side: str, n: int, width: int) -> slice:
    return slice(0, n) if side == "right" else slice(width - n, width)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    "rules", [MambaRules(), MambaRules.gradient_x_input()], ids=["mamba-lrp", "grad-x-input"]
)
def test_padded_batch_matches_single_examples(model, side, rules):
    sequences = examples()
    ids, mask = pad(sequences, side)
    width = ids.shape[1]
    lrp = LayerMambaLRP(model, model.get_input_embeddings(), rules=rules)
    relevance, delta = lrp.attribute(
        ids,
        target=targets(side, width),
        additional_forward_args=mask,
        return_convergence_delta=True,
    )
    for row, (n, (expected, expected_delta)) in enumerate(
        zip(LENGTHS, single(lrp, sequences), strict=True)
    ):
        real = real_span(side, n, width)
        torch.testing.assert_close(relevance[row, real], expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(delta[row], expected_delta, rtol=1e-6, atol=1e-11)
        padding = torch.ones(width, dtype=torch.bool)
        padding[real] = False
        assert (relevance[row, padding] == 0).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_embeddings_match_single_examples(model, side):
    sequences = examples(seed=5)
    ids, mask = pad(sequences, side, seed=6)
    width = ids.shape[1]
    embed = model.get_input_embeddings()
    lrp = MambaLRP(model)
    relevance = lrp.attribute(
        embed(ids).detach(), target=targets(side, width), additional_forward_args=mask
    )
    for row, (n, seq, token) in enumerate(zip(LENGTHS, sequences, TOKENS, strict=True)):
        expected = lrp.attribute(embed(seq[None]).detach(), target=(n - 1, token))[0]
        real = real_span(side, n, width)
        torch.testing.assert_close(relevance[row, real], expected, rtol=1e-9, atol=1e-12)
        assert relevance[row].abs().sum() == relevance[row, real].abs().sum()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_explained_output_matches_model(model, side):
    """The explained logits are those of the model on the padded batch (transformers'
    own masked forward) and of the unpadded examples."""
    sequences = examples(seed=7)
    ids, mask = pad(sequences, side, seed=8)
    width = ids.shape[1]
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    relevance, delta = lrp.attribute(
        ids,
        target=targets(side, width),
        additional_forward_args=mask,
        return_convergence_delta=True,
    )
    explained = relevance.sum((1, 2)) + delta

    def logits_of(tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        # transformers' logits are float32; its backbone and head keep float64.
        hidden = model.backbone(input_ids=tokens, attention_mask=attention_mask, use_cache=False)
        return model.lm_head(hidden.last_hidden_state)

    with torch.no_grad():
        logits = logits_of(ids, mask)
        alone = [logits_of(s[None], None)[0, -1] for s in sequences]
    for row, ((position, token), own) in enumerate(zip(targets(side, width), alone, strict=True)):
        torch.testing.assert_close(explained[row], logits[row, position, token], rtol=1e-6, atol=0)
        torch.testing.assert_close(explained[row], own[token], rtol=1e-6, atol=0)


def test_all_ones_mask_changes_nothing(model):
    ids = torch.stack([s[:6] for s in examples() if len(s) >= 6])
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    with_mask = lrp.attribute(ids, target=(-1, 3), additional_forward_args=torch.ones_like(ids))
    torch.testing.assert_close(with_mask, lrp.attribute(ids, target=(-1, 3)), rtol=0, atol=0)
