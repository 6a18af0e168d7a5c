"""Half-precision models are explained with float32 arithmetic, the model untouched;
conservation error per dtype stays within the documented bounds."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import MambaForCausalLM

from captum_mamba import LayerMambaLRP, MambaLRP

VOCAB = 64
HALF = (torch.bfloat16, torch.float16)
#: Documented bound on |delta| / sum(|relevance|) (docs/guarantees.md, "Precision").
CONSERVATION = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-5,
    torch.float16: 1e-5,
}


def tokens(seed: int = 0, batch: int = 3, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def model_in(make_lm, dtype: torch.dtype, seed: int = 21) -> MambaForCausalLM:
    return make_lm(seed=seed, zero_biases=True, vocab_size=VOCAB).to(dtype)


def explain(model: MambaForCausalLM, ids: torch.Tensor):
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    return lrp.attribute(ids, target=(-1, 7), return_convergence_delta=True)


@pytest.mark.parametrize("dtype", list(CONSERVATION), ids=str)
def test_conservation_per_dtype(make_lm, dtype):
    relevance, delta = explain(model_in(make_lm, dtype), tokens())
    assert relevance.dtype == torch.promote_types(dtype, torch.float32)
    scale = relevance.abs().sum((1, 2))
    assert (delta.abs() <= CONSERVATION[dtype] * scale).all(), (delta / scale).tolist()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_is_explained_in_float32(make_lm, dtype):
    """The explanation of a half model equals that of a float32 copy of its (rounded)
    weights: every operation ran in float32. Computing in half precision would be
    wrong by ~1e-3 (float16) to ~1e-2 (bfloat16)."""
    half = model_in(make_lm, dtype)
    relevance, delta = explain(half, tokens())
    expected, expected_delta = explain(copy.deepcopy(half).float(), tokens())
    torch.testing.assert_close(relevance, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(delta, expected_delta, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_model_is_untouched(make_lm, dtype):
    half = model_in(make_lm, dtype)
    before = {name: p.detach().clone() for name, p in half.named_parameters()}
    explain(half, tokens())
    MambaLRP(half).attribute(half.get_input_embeddings()(tokens()).detach(), target=(-1, 7))
    for name, p in half.named_parameters():
        assert p.dtype == dtype, name
        assert torch.equal(p, before[name]), name
        assert p.grad is None, name


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_embeddings(make_lm, dtype):
    """MambaLRP takes the model's own half-precision embeddings, widens them and
    returns float32 relevances equal to LayerMambaLRP's on the embedding output."""
    half = model_in(make_lm, dtype)
    embeds = half.get_input_embeddings()(tokens()).detach()
    assert embeds.dtype == dtype
    relevance = MambaLRP(half).attribute(embeds, target=(-1, 7))
    assert relevance.dtype == torch.float32
    torch.testing.assert_close(relevance, explain(half, tokens())[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("dtype", "bound"),
    [(torch.float32, 1e-5), (torch.bfloat16, 0.05), (torch.float16, 0.01)],
    ids=str,
)
def test_relevance_close_to_float64(make_lm, dtype, bound):
    """Relative L1 distance to the float64 explanation of the same model is bounded
    by the rounding of the weights to ``dtype`` (docs/guarantees.md, "Precision")."""
    reference, _ = explain(model_in(make_lm, torch.float64), tokens())
    relevance, _ = explain(model_in(make_lm, dtype), tokens())
    error = (relevance.double() - reference).abs().sum() / reference.abs().sum()
    assert error < bound, float(error)
