"""Captum's LLM workflow with MambaLRP: ``LLMGradientAttribution`` accepts
``LayerMambaLRP`` as it accepts ``LayerGradientXActivation``.

A tiny float64 ``MambaForCausalLM`` with Mamba's vocabulary and the shared GPT-NeoX
tokenizer (``$CAPTUM_MAMBA_DATA`` or ``<repo>/../shared/data``), wrapped as a transformers
fast tokenizer. Every relevance is checked against an independent reference: Captum's own
``LayerGradientXActivation`` through transformers' forward (rules off), and the float64
re-implementation of the conformance case with the rules as ``detach`` calls (rules on).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch
from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput
from cases.hf_mamba import ReferenceRules, build_lm, reference_relevance
from helpers import assert_unchanged, snapshot
from torch import Tensor

from captum_mamba import LayerMambaLRP, MambaRules, attribute_generation

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTUM_MAMBA_DATA", ROOT.parent / "shared" / "data"))
TOKENIZER = DATA / "gpt-neox-20b-tokenizer.json"
VOCAB = 50280
PROMPT = "The quick brown fox"
CONTINUATION = " jumps over the"

pytestmark = pytest.mark.skipif(
    not TOKENIZER.is_file(),
    reason=f"{TOKENIZER} not found; set CAPTUM_MAMBA_DATA to the shared data folder",
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(TOKENIZER)))


@pytest.fixture(scope="module")
def model():
    return build_lm(seed=3, vocab_size=VOCAB, zero_biases=True)


def _assert_close(actual: Tensor, expected: Tensor) -> None:
    """Equal up to float32 rounding: transformers returns float32 logits, so the
    explained log-probability is computed in float32 on every path."""
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=0, atol=1e-5 * scale)


def _reference_rows(model, tokenizer, rules: ReferenceRules) -> Tensor:
    """Relevance of the prompt tokens for the log-probability of each continuation
    token given the prompt and the continuation before it, from the reference."""
    prompt = tokenizer.encode(PROMPT, return_tensors="pt")
    continuation = tokenizer.encode(CONTINUATION, add_special_tokens=False)
    rows = []
    for j, token in enumerate(continuation):
        ids = torch.cat([prompt, torch.tensor([continuation[:j]], dtype=torch.long)], dim=1)
        embeds = model.get_input_embeddings()(ids).detach()

        def explain(logits: Tensor, token: int = token) -> Tensor:
            return torch.log_softmax(logits[:, -1], dim=-1)[:, token]

        relevance, _, _ = reference_relevance(model, embeds, [], rules, explain=explain)
        rows.append(relevance.sum(-1)[0, : prompt.shape[1]])
    return torch.stack(rows)


def test_gradient_x_input_equals_captums_layer_gradient_x_activation(model, tokenizer):
    embedding = model.get_input_embeddings()
    inp = TextTokenInput(PROMPT, tokenizer)
    ours = LLMGradientAttribution(
        LayerMambaLRP(model, embedding, rules=MambaRules.gradient_x_input()), tokenizer
    ).attribute(inp, target=CONTINUATION)
    captum = LLMGradientAttribution(LayerGradientXActivation(model, embedding), tokenizer)
    expected = captum.attribute(inp, target=CONTINUATION)
    assert ours.token_attr.shape == (3, 4) == expected.token_attr.shape
    assert ours.input_tokens == expected.input_tokens == ["The", "Ġquick", "Ġbrown", "Ġfox"]
    assert ours.output_tokens == expected.output_tokens
    _assert_close(ours.token_attr, expected.token_attr)
    reference = _reference_rows(model, tokenizer, ReferenceRules(False, False, False, False))
    _assert_close(ours.token_attr, reference)


def test_mamba_lrp_in_llm_gradient_attribution_matches_the_reference(model, tokenizer):
    before = snapshot(model)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    result = LLMGradientAttribution(lrp, tokenizer).attribute(
        TextTokenInput(PROMPT, tokenizer), target=CONTINUATION
    )
    assert_unchanged(before, model)
    reference = _reference_rows(model, tokenizer, ReferenceRules())
    _assert_close(result.token_attr, reference)
    _assert_close(result.seq_attr, reference.sum(0))
    # The same quantities from this package's own generation explainer (prompt columns).
    prompt = tokenizer.encode(PROMPT)
    target = tokenizer.encode(CONTINUATION, add_special_tokens=False)
    ours = attribute_generation(model, prompt, target_ids=target, log_prob=True)
    _assert_close(ours.token_attr[:, : len(prompt)], reference)


def test_generated_target_and_plots(model, tokenizer):
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    llm = LLMGradientAttribution(lrp, tokenizer)
    inp = TextTokenInput(PROMPT, tokenizer, skip_tokens=[])
    result = llm.attribute(inp, gen_args={"max_new_tokens": 3, "do_sample": False})
    assert result.token_attr.shape == (3, 4)
    assert torch.isfinite(result.token_attr).all() and result.token_attr.abs().sum() > 0
    generated = model.generate(
        tokenizer.encode(PROMPT, return_tensors="pt"), max_new_tokens=3, do_sample=False
    )[0, 4:]
    same = llm.attribute(inp, target=generated)
    assert result.output_tokens == same.output_tokens and len(same.output_tokens) == 3
    torch.testing.assert_close(result.token_attr, same.token_attr, rtol=0, atol=0)
    figure, _ = result.plot_token_attr()
    assert figure is not None
    figure, _ = result.plot_seq_attr()
    assert figure is not None


def test_direct_call_with_the_model_as_forward_function_explains_its_logits(model):
    ids = torch.tensor([[5, 17, 33, 2]])
    embedding = model.get_input_embeddings()
    default = LayerMambaLRP(model, embedding).attribute(ids, target=(-1, 7))
    explicit = LayerMambaLRP(model, embedding, forward_func=model).attribute(ids, target=(-1, 7))
    torch.testing.assert_close(explicit, default, rtol=0, atol=0)
    reference, _, _ = reference_relevance(model, embedding(ids).detach(), [(-1, 7)])
    torch.testing.assert_close(default, reference, rtol=1e-10, atol=1e-12)
