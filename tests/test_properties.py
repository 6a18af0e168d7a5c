"""Property-based tests over random tiny Mamba configurations (hypothesis, 50 examples
per property): conservation, batch equals per-example (also padded), forward unchanged,
no state left behind."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from helpers import assert_unchanged, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import MambaForCausalLM

from captum_mamba import Epsilon, LayerMambaLRP, MambaLRP, MambaRules

VOCAB = 32
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # make_lm is a factory
)


@dataclass(frozen=True)
class Case:
    """One random tiny model, a batch of token ids and one target per example."""

    seed: int
    hidden_size: int
    num_hidden_layers: int
    state_size: int
    expand: int
    conv_kernel: int
    ids: torch.Tensor
    targets: list[tuple[int, int]]

    def model(self, make_lm, zero_biases: bool = True) -> MambaForCausalLM:
        return make_lm(
            seed=self.seed,
            zero_biases=zero_biases,
            vocab_size=VOCAB,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            state_size=self.state_size,
            expand=self.expand,
            conv_kernel=self.conv_kernel,
        )


@st.composite
def cases(draw: st.DrawFn, max_batch: int = 3) -> Case:
    batch = draw(st.integers(1, max_batch))
    seq = draw(st.integers(1, 12))
    ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=batch * seq, max_size=batch * seq))
    positions = st.integers(-seq, seq - 1)
    targets = draw(
        st.lists(st.tuples(positions, st.integers(0, VOCAB - 1)), min_size=batch, max_size=batch)
    )
    return Case(
        seed=draw(st.integers(0, 2**16)),
        hidden_size=draw(st.integers(4, 16)),
        num_hidden_layers=draw(st.integers(1, 2)),
        state_size=draw(st.integers(1, 4)),
        expand=draw(st.integers(1, 2)),
        conv_kernel=draw(st.integers(2, 4)),
        ids=torch.tensor(ids).reshape(batch, seq),
        targets=targets,
    )


def explain(model: MambaForCausalLM, ids: torch.Tensor, targets, rules=None, mask=None):
    lrp = LayerMambaLRP(model, model.get_input_embeddings(), rules=rules)
    return lrp.attribute(
        ids, target=targets, additional_forward_args=mask, return_convergence_delta=True
    )


@PROPERTY
@given(case=cases())
def test_conservation(make_lm, case):
    """Bias-free models: the relevances of each example sum to its explained logit."""
    relevance, delta = explain(case.model(make_lm), case.ids, case.targets)
    scale = 1 + relevance.abs().sum((1, 2))
    assert (delta.abs() <= 1e-12 * scale).all(), delta


@PROPERTY
@given(case=cases(), linear=st.sampled_from([None, Epsilon(1e-3)]))
def test_batch_equals_per_example(make_lm, case, linear):
    """Explaining a batch gives each example's relevance alone (biases on)."""
    model = case.model(make_lm, zero_biases=False)
    rules = None if linear is None else MambaRules(linear=linear)
    relevance, delta = explain(model, case.ids, case.targets, rules)
    for row, target in enumerate(case.targets):
        alone, alone_delta = explain(model, case.ids[row : row + 1], target, rules)
        torch.testing.assert_close(relevance[row], alone[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(delta[row], alone_delta[0], rtol=1e-8, atol=1e-12)


@PROPERTY
@given(case=cases(), data=st.data())
def test_padded_batch_equals_per_example(make_lm, case, data):
    """Left or right padding with a mask: real tokens keep the unpadded relevances of
    the example alone, padding gets exactly zero."""
    batch, width = case.ids.shape
    lengths = data.draw(st.lists(st.integers(1, width), min_size=batch, max_size=batch))
    left = data.draw(st.booleans())
    model = case.model(make_lm, zero_biases=False)
    mask = torch.zeros(batch, width, dtype=torch.long)
    targets, spans = [], []
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if left else slice(0, n)
        mask[row, span] = 1
        targets.append((span.stop - 1, case.targets[row][1]))
        spans.append(span)
    relevance, _ = explain(model, case.ids, targets, mask=mask)
    for row, span in enumerate(spans):
        alone, _ = explain(model, case.ids[row : row + 1, span], (-1, targets[row][1]))
        torch.testing.assert_close(relevance[row, span], alone[0], rtol=1e-9, atol=1e-12)
        assert (relevance[row][mask[row] == 0] == 0).all()


@PROPERTY
@given(case=cases())
def test_forward_unchanged(make_lm, case):
    """The explained logits are the model's own: transformers' forward without rules
    (which computes A in float32, hence 1e-6 of the logits' scale) and, up to float64
    rounding, the forward with all rules off."""
    model = case.model(make_lm, zero_biases=False)
    relevance, delta = explain(model, case.ids, case.targets)
    explained = relevance.sum((1, 2)) + delta
    _, plain_delta = explain(model, case.ids, case.targets, MambaRules.gradient_x_input())
    with torch.no_grad():
        hidden = model.backbone(input_ids=case.ids, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden)
    own = torch.stack([logits[row][target] for row, target in enumerate(case.targets)])
    torch.testing.assert_close(explained, own, rtol=1e-6, atol=1e-6 * logits.abs().max())
    plain = explain(model, case.ids, case.targets, MambaRules.gradient_x_input())[0]
    torch.testing.assert_close(plain.sum((1, 2)) + plain_delta, explained, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(case=cases(), to_input=st.booleans(), embeddings=st.booleans())
def test_no_state_left_behind(make_lm, case, to_input, embeddings):
    """Model, hooks, flags, grad mode and Captum's tables are unchanged after a call."""
    model = case.model(make_lm, zero_biases=False)
    before = snapshot(model)
    if embeddings:
        embeds = model.get_input_embeddings()(case.ids).detach()
        MambaLRP(model).attribute(embeds, target=case.targets)
    else:
        layer = model.backbone.layers[-1]
        LayerMambaLRP(model, layer).attribute(
            case.ids, target=case.targets, attribute_to_layer_input=to_input
        )
    assert_unchanged(before, model)
