"""Length-bucketed, padded batches equal the sequences explained one by one."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from captum_mamba import LayerMambaLRP, MambaLRP, attribute_batches
from captum_mamba.attr import AttributionInputError
from captum_mamba.attr.batches import length_buckets
from captum_mamba.models import mamba_config, random_mamba_lm

VOCAB = 64
LENGTHS = [7, 3, 12, 5, 12, 1, 9]


def _model(seed: int) -> nn.Module:
    return random_mamba_lm(mamba_config(vocab_size=VOCAB), seed=seed, dtype=torch.float64)


def _ids(seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in LENGTHS]


def _targets(seed: int) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    positions = [int(torch.randint(-n, n, (1,), generator=generator)) for n in LENGTHS]
    return [(p, int(torch.randint(0, VOCAB, (1,), generator=generator))) for p in positions]


def test_buckets_group_similar_lengths() -> None:
    assert list(length_buckets(LENGTHS, 3)) == [[2, 4, 6], [0, 3, 1], [5]]
    assert list(length_buckets(LENGTHS, 8, max_tokens=24)) == [[2, 4], [6, 0], [3, 1, 5]]
    assert list(length_buckets([30, 2], 4, max_tokens=10)) == [[0], [1]]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batches_equal_single_sequences(batch_size: int, side: str) -> None:
    model = _model(0)
    ids, targets = _ids(1), _targets(2)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    rows = attribute_batches(lrp, ids, targets, batch_size=batch_size, padding_side=side)
    for row, seq, target in zip(rows, ids, targets, strict=True):
        alone = lrp.attribute(seq[None], target=target)[0]
        assert row.shape == alone.shape
        torch.testing.assert_close(row, alone, rtol=1e-9, atol=1e-12)


def test_embeddings_deltas_and_token_budget() -> None:
    model = _model(3)
    embeds = [model.get_input_embeddings()(seq).detach() for seq in _ids(4)]
    targets = _targets(5)
    lrp = MambaLRP(model)
    pairs = attribute_batches(
        lrp, embeds, targets, batch_size=4, max_tokens=30, return_convergence_delta=True
    )
    for (row, delta), seq, target in zip(pairs, embeds, targets, strict=True):
        alone, alone_delta = lrp.attribute(seq[None], target=target, return_convergence_delta=True)
        torch.testing.assert_close(row, alone[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(delta, alone_delta[0], rtol=1e-9, atol=1e-12)


def test_bad_arguments() -> None:
    model = _model(0)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    ids = _ids(0)
    cases = [
        (([], []), {}, "at least one sequence"),
        ((ids, [(0, 1)]), {}, "1 targets given for 7 sequences"),
        ((ids, _targets(0)), {"batch_size": 0}, "batch_size must be a positive int"),
        ((ids, _targets(0)), {"max_tokens": -1}, "max_tokens must be a positive int"),
        ((ids, _targets(0)), {"padding_side": "top"}, "padding_side must be"),
        (([ids[0], ids[1].double()], [(0, 1)] * 2), {}, "all be"),
        (([ids[0], ids[0][:0]], [(0, 1)] * 2), {}, "non-empty"),
        (([ids[0]], [(9, 1)]), {}, "target position 9 is out of range for a sequence of 7"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(AttributionInputError, match=message):
            attribute_batches(lrp, *args, **kwargs)
