"""Bad inputs get a one-line AttributionInputError that names the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import MambaForCausalLM

from captum_mamba import (
    AttributionInputError,
    Epsilon,
    Gamma,
    LayerMambaLRP,
    MambaAttentionRollout,
    MambaAttr,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
)
from captum_mamba.models import mamba_config

VOCAB = 64


@pytest.fixture
def model(make_lm) -> MambaForCausalLM:
    return make_lm(seed=3, dtype=torch.float32, vocab_size=VOCAB)


def ids(batch: int = 2, seq: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))


def embeds(model: MambaForCausalLM, batch: int = 2, seq: int = 5) -> torch.Tensor:
    return model.get_input_embeddings()(ids(batch, seq)).detach()


def expect_error(call, *fragments: str) -> str:
    """Run ``call`` and check that it raises a one-line AttributionInputError whose
    message contains every fragment (case-insensitive)."""
    with pytest.raises(AttributionInputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


# Token ids (LayerMambaLRP on the embedding layer).


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 100, -1])
def test_token_ids_out_of_vocabulary(model, bad):
    tokens = ids()
    tokens[1, 2] = bad
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(tokens, target=(-1, 0)), "vocabulary", str(bad), "64")


def test_float_token_ids(model):
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(ids().float(), target=(-1, 0)), "float32", "LongTensor")


def test_float_ids_passed_as_embeddings(model):
    expect_error(
        lambda: MambaLRP(model).attribute(ids().float(), target=(-1, 0)),
        "(2, 5)",
        "LayerMambaLRP",
    )


def test_integer_ids_passed_as_embeddings(model):
    expect_error(lambda: MambaLRP(model).attribute(ids(), target=(-1, 0)), "int64", "LayerMambaLRP")


@pytest.mark.parametrize("shape", [(5,), (2, 5, 1)])
def test_token_ids_of_wrong_rank(model, shape):
    tokens = torch.zeros(shape, dtype=torch.long)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(tokens, target=(-1, 0)), str(shape), "(batch, seq)")


@pytest.mark.parametrize("shape", [(2, 0), (0, 5)])
def test_empty_token_ids(model, shape):
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(
        lambda: lrp.attribute(torch.zeros(shape, dtype=torch.long), target=(-1, 0)), "non-empty"
    )


# Embeddings (MambaLRP).


@pytest.mark.parametrize("shape", [(2, 16), (2, 5, 8), (2, 5, 16, 1)])
def test_embeddings_of_wrong_shape(model, shape):
    expect_error(
        lambda: MambaLRP(model).attribute(torch.randn(shape), target=(-1, 0)),
        str(shape).replace(",)", ")"),
        "(batch, seq, 16)",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings(model, value):
    x = embeds(model)
    x[0, 3, 1] = value
    expect_error(lambda: MambaLRP(model).attribute(x, target=(-1, 0)), "NaN or inf")


def test_non_finite_embedding_weights(model):
    with torch.no_grad():
        model.get_input_embeddings().weight[ids()[0, 0]] = float("nan")
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(ids(), target=(-1, 0)), "Embedding", "NaN or inf")


def test_differing_batch_sizes(model):
    lrp = MambaLRP(model, forward_func=lambda a, b: model(inputs_embeds=a + b).logits)
    inputs = (embeds(model, batch=2), embeds(model, batch=3)[:, :5])
    expect_error(lambda: lrp.attribute(inputs, target=(-1, 0)), "batch size 3", "2")


# Targets.


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ((5, 0), ("target index 0", "5", "size 5")),
        ((-6, 0), ("-6", "size 5")),
        ((-1, VOCAB), ("target index 1", "64")),
        ((-1,), ("1 indices", "2 per example")),
        ((-1, 0, 0), ("3 indices",)),
        (None, ("target is None", "(2, 5, 64)")),
        (torch.tensor([1.0, 2.0]), ("torch.float32", "LongTensor")),
        ((-1, 2.5), ("must be an int", "2.5")),
        ("x", ("unsupported target type str",)),
    ],
)
def test_target_does_not_fit_output(model, target, fragments):
    expect_error(lambda: MambaLRP(model).attribute(embeds(model), target=target), *fragments)


@pytest.mark.parametrize(
    "target", [[(-1, 0)] * 3, torch.tensor([0, 1, 2]), torch.tensor([[4, 0]] * 3)]
)
def test_batch_target_mismatch(model, target):
    expect_error(
        lambda: MambaLRP(model).attribute(embeds(model), target=target),
        "3 targets",
        "batch of 2",
    )


def test_per_example_targets_are_accepted(model):
    relevance = MambaLRP(model).attribute(embeds(model), target=[(4, 1), (-2, 7)])
    assert relevance.shape == (2, 5, 16)


# Forward functions.


@pytest.mark.parametrize(
    "forward",
    [
        lambda m, x: m(inputs_embeds=x),
        lambda m, x: {"logits": m(inputs_embeds=x).logits},
        lambda m, x: (m(inputs_embeds=x).logits,),
        lambda m, x: None,
    ],
    ids=["model-output", "dict", "tuple", "none"],
)
def test_forward_not_returning_a_tensor(model, forward):
    lrp = MambaLRP(model, forward_func=lambda x: forward(model, x))
    expect_error(lambda: lrp.attribute(embeds(model), target=(-1, 0)), "not a tensor", "logits")


@pytest.mark.parametrize(
    "forward",
    [lambda logits: logits[0], lambda logits: logits[:1], lambda logits: logits.sum()],
    ids=["dropped-batch", "first-row", "scalar"],
)
def test_forward_not_returning_one_row_per_example(model, forward):
    lrp = MambaLRP(model, forward_func=lambda x: forward(model(inputs_embeds=x).logits))
    expect_error(lambda: lrp.attribute(embeds(model), target=0), "for 2 examples", "one row")


def test_non_finite_output(model):
    lrp = MambaLRP(model, forward_func=lambda x: model(inputs_embeds=x).logits * float("inf"))
    expect_error(lambda: lrp.attribute(embeds(model), target=(-1, 0)), "NaN or inf", "output")


# Attention masks.


@pytest.mark.parametrize(
    ("mask", "fragments"),
    [
        (torch.ones(2, 4), ("(2, 4)", "(2, 5)")),
        (torch.ones(5), ("(5,)",)),
        (torch.full((2, 5), 2), ("only 0",)),
        ([[1] * 5] * 2, ("must be a tensor", "list")),
    ],
)
def test_bad_attention_mask(model, mask, fragments):
    expect_error(
        lambda: MambaLRP(model).attribute(
            embeds(model), target=(-1, 0), additional_forward_args=mask
        ),
        *fragments,
    )


# Dtypes and devices.


def test_inputs_wider_than_model(model):
    expect_error(
        lambda: MambaLRP(model).attribute(embeds(model).double(), target=(-1, 0)),
        "float64",
        "computes in torch.float32",
        ".to(torch.float32)",
    )


def test_narrower_inputs_are_widened(make_lm):
    model = make_lm(seed=3, dtype=torch.float64, zero_biases=True, vocab_size=VOCAB)
    x = torch.randn(2, 5, 16, dtype=torch.float32)
    narrow = MambaLRP(model).attribute(x, target=(-1, 0))
    assert narrow.dtype == torch.float64
    expected = MambaLRP(model).attribute(x.double(), target=(-1, 0))
    torch.testing.assert_close(narrow, expected, rtol=0, atol=0)


def test_model_without_floating_weights(model):
    model.requires_grad_(False)
    for parameter in model.parameters():
        parameter.data = parameter.data.to(torch.int8)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(ids(), target=(-1, 0)), "no floating-point", "bfloat16")


def test_inputs_on_another_device(model):
    x = embeds(model).to("meta")
    expect_error(
        lambda: MambaLRP(model).attribute(x, target=(-1, 0)), "inputs is on the meta device"
    )


def test_mask_on_another_device(model):
    mask = torch.ones(2, 5, device="meta")
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(
        lambda: lrp.attribute(ids(), target=(-1, 0), additional_forward_args=mask),
        "additional_forward_args[0] is on the meta device",
    )


def test_model_on_another_device():
    with torch.device("meta"):
        meta_model = MambaForCausalLM(mamba_config(vocab_size=VOCAB))
    lrp = LayerMambaLRP(meta_model, meta_model.get_input_embeddings())
    expect_error(lambda: lrp.attribute(ids(), target=(-1, 0)), "weights on the meta device")


def test_model_and_inputs_on_the_meta_device():
    """Both on meta (so on one device): refused in one line, not deep inside torch."""
    with torch.device("meta"):
        meta_model = MambaForCausalLM(mamba_config(vocab_size=VOCAB))
    x = torch.zeros(1, 5, meta_model.config.hidden_size, device="meta")
    expect_error(lambda: MambaLRP(meta_model).attribute(x, target=(-1, 0)), "meta device")
    lrp = LayerMambaLRP(meta_model, meta_model.get_input_embeddings())
    tokens = torch.zeros(1, 5, dtype=torch.long, device="meta")
    expect_error(lambda: lrp.attribute(tokens, target=(-1, 0)), "meta device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_inputs_on_cpu_for_a_cuda_model(model):
    model = model.cuda()
    expect_error(lambda: MambaLRP(model).attribute(embeds(model).cpu(), target=(-1, 0)), "cuda")


def test_model_without_mamba_blocks():
    with pytest.raises(UnsupportedModelError, match="no supported block"):
        MambaLRP(nn.Sequential(nn.Linear(4, 4)))


def test_layer_that_runs_twice(model):
    layer = model.backbone.norm_f

    def twice(tokens: torch.Tensor) -> torch.Tensor:
        hidden = model.backbone(input_ids=tokens).last_hidden_state
        return model.lm_head(layer(hidden))

    lrp = LayerMambaLRP(model, layer, forward_func=twice)
    expect_error(lambda: lrp.attribute(ids(), target=(-1, 0)), "ran 2 times", "exactly once")


# Inputs and targets of other types than Captum expects (Captum asserts on them).

NOT_TENSORS = {
    "numpy": lambda x: x.numpy(),
    "nested-list": lambda x: x.tolist(),
    "list-of-rows": lambda x: list(x),
    "tuple-with-list": lambda x: (x, x.tolist()),
}


@pytest.mark.parametrize("kind", list(NOT_TENSORS))
def test_inputs_that_are_not_tensors(model, kind):
    convert = NOT_TENSORS[kind]
    expect_error(
        lambda: MambaLRP(model).attribute(convert(embeds(model)), target=(-1, 0)),
        "not a torch.Tensor",
        "torch.as_tensor",
    )
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    expect_error(
        lambda: lrp.attribute(convert(ids()), target=(-1, 0)), "not a torch.Tensor", "torch.tensor"
    )


TARGET_FORMS = {
    "list-of-lists": [[-1, 3], [2, 5]],
    "list-of-tensors": [torch.tensor([-1, 3]), torch.tensor([2, 5])],
    "list-of-mixed": [(-1, 3), [2, torch.tensor(5)]],
    "numpy-array": np.array([[-1, 3], [2, 5]]),
    "list-of-numpy-rows": list(np.array([[-1, 3], [2, 5]])),
}


@pytest.mark.parametrize("form", list(TARGET_FORMS))
def test_targets_as_lists_of_lists_tensors_and_numpy(model, form):
    lrp = MambaLRP(model)
    expected = lrp.attribute(embeds(model), target=[(-1, 3), (2, 5)])
    torch.testing.assert_close(lrp.attribute(embeds(model), target=TARGET_FORMS[form]), expected)


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ([[-1, 3], [2, 5.0]], "must be an int"),
        ([torch.tensor([-1.0, 3.0]), (2, 5)], "dtype torch.float32"),
        ([[-1, 3, 0], (2, 5)], "has 3 indices"),
        (np.array([[-1.5, 3], [2, 5]]), "dtype torch.float64"),
    ],
)
def test_bad_targets_of_other_types(model, target, fragment):
    expect_error(lambda: MambaLRP(model).attribute(embeds(model), target=target), fragment)


# Arguments checked at construction: one-line TypeError or ValueError with the fix.

CONSTRUCTION = {
    "epsilon-zero": (lambda m: Epsilon(0), ValueError, "for no stabiliser use LRP0()"),
    "epsilon-nan": (lambda m: Epsilon(float("nan")), ValueError, "finite number > 0"),
    "epsilon-negative": (lambda m: Epsilon(-1), ValueError, "> 0"),
    "epsilon-string": (lambda m: Epsilon("1e-6"), ValueError, "finite number"),
    "gamma-negative": (lambda m: Gamma(-1), ValueError, "gamma must be >= 0"),
    "gamma-inf": (lambda m: Gamma(float("inf")), ValueError, "finite"),
    "gamma-epsilon-zero": (lambda m: Gamma(0.25, 0.0), ValueError, "epsilon must be > 0"),
    "linear-as-string": (lambda m: MambaRules(linear="lrp0"), TypeError, "LRP0()"),
    "linear-as-class": (lambda m: MambaRules(linear=Epsilon), TypeError, "an instance"),
    "switch-not-bool": (lambda m: MambaRules(norm="yes"), TypeError, "True or False"),
    "override-unknown-setting": (
        lambda m: MambaRules().override("lm_head", epsilon=0.1),
        ValueError,
        "unknown rule setting",
    ),
    "override-no-change": (lambda m: MambaRules().override("lm_head"), ValueError, "at least"),
    "override-bad-selector": (lambda m: MambaRules().override(3, norm=False), TypeError, "class"),
    "rules-class": (lambda m: MambaLRP(m, rules=MambaRules), TypeError, "call the class"),
    "rules-dict": (lambda m: MambaLRP(m, rules={"norm": True}), TypeError, "MambaRules"),
    "model-none": (lambda m: MambaLRP(None), TypeError, "torch.nn.Module"),
    "layer-model-none": (lambda m: LayerMambaLRP(None, None), TypeError, "torch.nn.Module"),
    "layer-not-module": (lambda m: LayerMambaLRP(m, "embeddings"), TypeError, "layer"),
    "rollout-leaf-zero": (lambda m: MambaAttentionRollout(m, leaf_size=0), ValueError, ">= 1"),
    "rollout-chunk-negative": (
        lambda m: MambaAttentionRollout(m, chunk_elements=-5),
        ValueError,
        ">= 1",
    ),
    "rollout-start-out-of-range": (
        lambda m: MambaAttentionRollout(m, start_layer=2),
        ValueError,
        "out of range",
    ),
    "attr-start-negative-out-of-range": (
        lambda m: MambaAttr(m, start_layer=-3),
        ValueError,
        "out of range",
    ),
    "rollout-start-float": (lambda m: MambaAttentionRollout(m, start_layer=0.5), ValueError, "int"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTION))
def test_bad_arguments_at_construction(model, case):
    build, error, fragment = CONSTRUCTION[case]
    with pytest.raises(error) as info:
        build(model)
    message = str(info.value)
    assert "\n" not in message and fragment.lower() in message.lower(), message


def test_overflowing_embeddings_are_refused(model):
    expect_error(
        lambda: MambaLRP(model).attribute(embeds(model) * 1e30, target=(-1, 0)),
        "overflow",
        "float64",
    )


def test_captum_lrp_refuses_non_finite_inputs(model):
    from captum.attr import LRP

    from captum_mamba.lrp import prepare_captum_lrp

    bad = embeds(model)
    bad[0, 1, 2] = float("nan")
    expect_error(lambda: LRP(prepare_captum_lrp(model)).attribute(bad, target=(-1, 0)), "NaN")
