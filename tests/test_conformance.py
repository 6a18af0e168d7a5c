"""Registry-driven conformance suite: every registered architecture adapter, every backend.

For each case of ``tests/cases`` (one per adapter, with an independent float64 reference):

- MambaLRP equals the reference for every rule preset (MambaLRP with AttnLRP, with
  CP-LRP, Gradient x Input, LN-rule only) and every single-rule ablation;
- with bias-free layers relevance is conserved under the case's conserving preset
  (CP-LRP for models with softmax attention), and switching any rule off breaks it;
- the forward under the rules equals the reference and the model's own forward;
- the model is left exactly as it was;
- a batch equals its examples one by one; padded batches equal unpadded examples;
- Captum's ``LRP`` and ``LayerLRP`` on the prepared copy equal MambaLRP / LayerMambaLRP;
- the recorded hidden attention reconstructs every scan's output, the recorded softmax
  attention equals transformers' own, and rollout and Mamba-Attr run;
- many targets in one call (one forward pass, one batched backward pass) equal single
  calls, for MambaLRP (normal and lean path) and LayerMambaLRP;
- the memory-lean path (each residual layer recomputed in the backward pass) gives
  bit-for-bit the relevance of the normal path, for MambaLRP and LayerMambaLRP at a
  layer inside a block, and matches the reference.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from captum.attr import LRP, LayerLRP
from cases import ArchitectureCase, case_adapters, load_cases
from helpers import assert_unchanged, gradient_x_input, relative_error, select, snapshot
from torch import Tensor, nn

from captum_mamba import LayerMambaLRP, MambaLRP, MambaRules, rules_applied
from captum_mamba.adapters import RecomputeBackend, plan_rules, registered_adapters
from captum_mamba.attr.forward import default_forward
from captum_mamba.baselines import MambaAttentionRollout, MambaAttr, hidden_attention_matrices
from captum_mamba.baselines.recording import record_layers
from captum_mamba.lrp import prepare_captum_lrp

CASES, SKIPPED = load_cases()
SEEDS = (0, 1, 2)
PRESETS = {
    "mamba_lrp": MambaRules(),
    "cp_lrp": MambaRules.cp_lrp(),
    "gradient_x_input": MambaRules.gradient_x_input(),
    "norm_only": MambaRules.norm_only(),
    **{f"no_{kind}": MambaRules(**{kind: False}) for kind in MambaRules.kinds()},
}

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")


def _ids(value: object) -> str:
    return value.name if isinstance(value, ArchitectureCase) else str(value)


def by_case_config() -> list:
    return [
        pytest.param(case, config, id=f"{case.name}-{config}")
        for case in CASES
        for config in case.configs
    ]


def _lrp(
    case: ArchitectureCase, model: nn.Module, rules: MambaRules, lean: bool | None = None
) -> MambaLRP:
    forward = case.forward_func(model) if case.forward_func else None
    return MambaLRP(model, forward_func=forward, rules=rules, lean=lean)


def _reference_relevance(
    case: ArchitectureCase, model: nn.Module, inputs: Tensor, targets: list, rules: MambaRules
) -> tuple[Tensor, Tensor]:
    return gradient_x_input(lambda x: case.reference(model, x, rules), inputs, targets)


def test_every_registered_adapter_has_a_case() -> None:
    architectures = {adapter.name for adapter in registered_adapters() if adapter.blocks}
    missing = architectures - set(case_adapters())
    assert not missing, f"adapters without a conformance case: {missing}"


@pytest.mark.parametrize("lean", [False, True], ids=["fast", "lean"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_matches_reference(case: ArchitectureCase, config: str, seed: int, lean: bool) -> None:
    model = case.build(config, seed, False)
    inputs, targets = case.inputs(model, config, seed)
    relevance = _lrp(case, model, MambaRules(), lean).attribute(inputs, target=targets)
    expected, _ = _reference_relevance(case, model, inputs, targets, MambaRules())
    assert relevance.dtype == torch.float64
    assert expected.abs().max() > 1e-6
    assert relative_error(relevance, expected) <= 1e-10


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "mamba_lrp"])
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_presets_and_ablations_match_reference(
    case: ArchitectureCase, config: str, preset: str
) -> None:
    rules = PRESETS[preset]
    model = case.build(config, 0, False)
    inputs, targets = case.inputs(model, config, 0)
    relevance = _lrp(case, model, rules).attribute(inputs, target=targets)
    expected, _ = _reference_relevance(case, model, inputs, targets, rules)
    assert relative_error(relevance, expected) <= 1e-10


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_conservation_without_biases(case: ArchitectureCase, config: str, seed: int) -> None:
    model = case.build(config, seed, True)
    inputs, targets = case.inputs(model, config, seed)
    rules = PRESETS[case.conserving]
    relevance, delta = _lrp(case, model, rules).attribute(
        inputs, target=targets, return_convergence_delta=True
    )
    explained = select(case.reference(model, inputs, rules), targets)
    total = relevance.flatten(1).sum(1)
    scale = 1 + relevance.abs().flatten(1).sum(1)
    assert ((total - explained).abs() / scale).max() <= 1e-10
    assert (delta.abs() / scale).max() <= 1e-10


@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_each_rule_is_needed_for_conservation(case: ArchitectureCase, config: str) -> None:
    model = case.build(config, 0, True)
    inputs, targets = case.inputs(model, config, 0)
    conserving = PRESETS[case.conserving]
    explained = select(case.reference(model, inputs, conserving), targets).abs()
    for kind in case.rule_kinds:
        _, delta = _lrp(case, model, replace(conserving, **{kind: False})).attribute(
            inputs, target=targets, return_convergence_delta=True
        )
        assert (delta.abs() / explained).max() > 1e-6, kind  # vs <= 1e-10 with all rules


@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_forward_is_unchanged_under_the_rules(case: ArchitectureCase, config: str) -> None:
    model = case.build(config, 1, False)
    inputs, _ = case.inputs(model, config, 1)
    forward = case.forward_func(model) if case.forward_func else None
    with torch.no_grad():
        own = case.own_output(model, inputs)
        reference = case.reference(model, inputs, MambaRules.gradient_x_input())
        for rules in PRESETS.values():
            with rules_applied(model, rules):
                ruled = forward(inputs) if forward else case.own_output(model, inputs)
            assert ruled.dtype == torch.float64
            assert relative_error(ruled, reference) <= 1e-12
            assert relative_error(ruled, own) <= 1e-6  # transformers computes parts in float32
    assert all("forward" not in vars(module) for module in model.modules())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_model_is_left_unchanged(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 2, False)
    inputs, targets = case.inputs(model, case.configs[0], 2)
    before = snapshot(model)
    lrp = _lrp(case, model, MambaRules())
    first = lrp.attribute(inputs, target=targets)
    assert_unchanged(before, model)

    def fail(module: nn.Module, args: object, output: object) -> None:
        raise RuntimeError("stop")

    handle = model.get_submodule(case.layer).register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="stop"):
        lrp.attribute(inputs, target=targets)
    handle.remove()
    assert_unchanged(before, model)
    torch.testing.assert_close(lrp.attribute(inputs, target=targets), first, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_batch_equals_single_examples(case: ArchitectureCase) -> None:
    model = case.build(case.configs[-1], 3, False)
    inputs, targets = case.inputs(model, case.configs[-1], 3)
    lrp = _lrp(case, model, MambaRules())
    batch = lrp.attribute(inputs, target=targets)
    for i, target in enumerate(targets):
        single = lrp.attribute(inputs[i : i + 1], target=[target])
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", [c for c in CASES if c.padding], ids=_ids)
def test_padded_batch_equals_unpadded_examples(case: ArchitectureCase, side: str) -> None:
    # The first configuration has no input-projection bias: with one, padding leaks into
    # the causal conv of the first real tokens (transformers masks before in_proj), so
    # padded and unpadded inputs differ in the model itself.
    model = case.build(case.configs[0], 4, False)
    inputs, _ = case.inputs(model, case.configs[0], 4)
    length = inputs.shape[1]
    lengths = [length, length - 3]
    mask = torch.ones(2, length, dtype=torch.long)
    pad = slice(0, 3) if side == "left" else slice(length - 3, length)
    mask[1, pad] = 0
    last = [length - 1, length - 1 if side == "left" else length - 4]
    targets = [(last[0], 1), (last[1], 2)]
    relevance = MambaLRP(model).attribute(inputs, target=targets, additional_forward_args=mask)
    assert torch.all(relevance[1, pad] == 0)
    real = mask[1].bool()
    alone = MambaLRP(model).attribute(inputs[1:2, real], target=[(lengths[1] - 1, 2)])
    tolerance = case.padding_rtol  # 1e-9 (1e-12 absolute) unless positions round differently
    torch.testing.assert_close(relevance[1:2, real], alone, rtol=tolerance, atol=1e-3 * tolerance)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_captum_lrp_equals_mamba_lrp(case: ArchitectureCase, config: str, preset: str) -> None:
    rules = PRESETS[preset]
    model = case.build(config, 5, False)
    inputs, targets = case.inputs(model, config, 5)
    expected = _lrp(case, model, rules).attribute(inputs, target=targets)
    prepared = prepare_captum_lrp(model, rules, forward_func=case.captum_forward)
    actual = LRP(prepared).attribute(inputs, target=targets)
    assert relative_error(actual, expected) <= 1e-10


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_captum_layer_lrp_equals_layer_mamba_lrp(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 6, False)
    inputs, targets = case.inputs(model, case.configs[0], 6)
    forward = (
        case.forward_func(model) if case.forward_func else default_forward(model, "inputs_embeds")
    )
    layer = model.get_submodule(case.layer)
    expected = LayerMambaLRP(model, layer, forward_func=forward).attribute(inputs, target=targets)
    prepared = prepare_captum_lrp(model, forward_func=case.captum_forward)
    actual = LayerLRP(prepared, prepared.model.get_submodule(case.layer)).attribute(
        inputs, target=targets
    )
    assert relative_error(actual, expected) <= 1e-10


def _loop_output(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None):
    """The recurrence step by step; ``B``/``C`` per channel group (test-local reference)."""
    batch, length, channels = x.shape
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    group = torch.arange(channels) // (channels // B.shape[2])
    h = x.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, group]
        ys.append((h * C[:, t, group]).sum(-1))
    y = torch.stack(ys, 1)
    return y if D is None else y + x * D


@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_hidden_attention_reconstructs_every_scan(case: ArchitectureCase, config: str) -> None:
    if not case.hidden_attention:
        pytest.skip("the hidden-attention baselines refuse this model (see the rollout test)")
    model = case.build(config, 7, False)
    inputs, _ = case.inputs(model, config, 7)
    forward = (
        case.forward_func(model) if case.forward_func else default_forward(model, "inputs_embeds")
    )
    with torch.no_grad():
        _, layers = record_layers(model, lambda: forward(inputs))
    assert len(layers) == case.num_layers(model)
    for layer in layers:
        for ssm in layer.ssms:
            s = ssm.inputs
            alpha = hidden_attention_matrices(s, leaf_size=2)
            y = torch.einsum("bdij,bjd->bid", alpha, s.x) + (0 if s.D is None else s.x * s.D)
            loop = _loop_output(s.x, s.dt, s.A, s.B, s.C, s.D)
            assert relative_error(y, loop) <= 1e-12, ssm.path
            assert relative_error(ssm.output, loop) <= 1e-12, ssm.path


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_rollout_and_mamba_attr_run(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 8, False)
    inputs, targets = case.inputs(model, case.configs[0], 8)
    forward = case.forward_func(model) if case.forward_func else None
    position = -1 if not case.forward_func else getattr(model, "cls_position", -1)
    for method in (MambaAttentionRollout(model, forward), MambaAttr(model, forward)):
        if not case.hidden_attention:
            with pytest.raises(NotImplementedError, match="not recorded"):
                method.attribute(inputs, target=targets, position=position)
            continue
        with torch.no_grad():
            scores = method.attribute(inputs, target=targets, position=position)
        assert scores.shape == inputs.shape[:2]
        assert torch.isfinite(scores).all() and scores.abs().sum() > 0


@pytest.mark.parametrize("case", [c for c in CASES if c.padding], ids=_ids)
def test_token_ids_through_layer_mamba_lrp_conserve(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 9, True)
    embedding = model.get_input_embeddings()
    ids = torch.randint(0, embedding.num_embeddings, (2, 7), generator=torch.Generator())
    rules = PRESETS[case.conserving]
    relevance, delta = LayerMambaLRP(model, embedding, rules=rules).attribute(
        ids, target=(6, 5), return_convergence_delta=True
    )
    explained = case.reference(model, embedding(ids).detach(), rules)[:, 6, 5]
    assert relevance.shape == (*ids.shape, embedding.embedding_dim)
    torch.testing.assert_close(relevance.sum((1, 2)), explained, rtol=1e-10, atol=1e-12)
    assert (delta.abs() / explained.abs()).max() <= 1e-10


EAGER_ATTENTION = [
    pytest.param(case, config, id=f"{case.name}-{config}")
    for case in CASES
    for config in case.eager_attention
]


@pytest.mark.parametrize(("case", "config"), EAGER_ATTENTION)
def test_recorded_softmax_attention_equals_the_models(case: ArchitectureCase, config: str) -> None:
    model = case.build(config, 10, False)
    inputs, _ = case.inputs(model, config, 10)
    forward = default_forward(model, "inputs_embeds")
    with torch.no_grad():
        _, layers = record_layers(model, lambda: forward(inputs))
        own = model(inputs_embeds=inputs, use_cache=False, output_attentions=True).attentions
    recorded = [attention.weights for layer in layers for attention in layer.attentions]
    assert len(recorded) == len(own) > 0
    for weights, expected in zip(recorded, own, strict=True):
        # transformers computes norms and the softmax in float32; large scores amplify it
        assert relative_error(weights, expected) <= 1e-5
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _block_children(model: nn.Module) -> list[nn.Module]:
    """The first child each residual layer calls (it runs again when the layer is
    recomputed; the layer's own hooks do not)."""
    entries = plan_rules(model, MambaRules()).entries
    return [getattr(e.module, e.handler.calls[0]) for e in entries if e.block]


@pytest.mark.parametrize("preset", ["mamba_lrp", "gradient_x_input"])
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_lean_path_is_bit_identical(case: ArchitectureCase, config: str, preset: str) -> None:
    rules = PRESETS[preset]
    model = case.build(config, 10, False)
    inputs, targets = case.inputs(model, config, 10)
    forward = (
        case.forward_func(model) if case.forward_func else default_forward(model, "inputs_embeds")
    )
    runs: list[int] = []
    hook = lambda *_: runs.append(1)  # noqa: E731
    handles = [child.register_forward_hook(hook) for child in _block_children(model)]
    results, calls = {}, {}
    try:
        for lean in (False, True):
            runs.clear()
            relevance = MambaLRP(model, forward, rules, lean).attribute(inputs, target=targets)
            calls[lean] = len(runs)
            layers = [_block_children(model)[0]]
            if _has_submodule(model, case.layer):  # the case's layer (not in every config)
                layers.append(model.get_submodule(case.layer))
            results[lean] = [relevance] + [
                LayerMambaLRP(model, layer, forward, rules, lean).attribute(inputs, target=targets)
                for layer in layers
            ]
    finally:
        for handle in handles:
            handle.remove()
    assert handles
    assert calls == {False: len(handles), True: 2 * len(handles)}  # each block recomputed
    for fast, lean in zip(results[False], results[True], strict=True):
        assert fast.abs().max() > 0
        assert fast.dtype == lean.dtype == torch.float64
        assert (fast - lean).abs().max() <= 1e-12 * fast.abs().max()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_lean_backward_outside_the_rules_raises(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 11, False)
    inputs, targets = case.inputs(model, case.configs[0], 11)
    forward = (
        case.forward_func(model) if case.forward_func else default_forward(model, "inputs_embeds")
    )
    leaf = inputs.detach().clone().requires_grad_()
    with rules_applied(model, MambaRules(), RecomputeBackend()):
        explained = select(forward(leaf), targets)
    with pytest.raises(RuntimeError, match="inside the rules_applied"):
        torch.autograd.grad(explained.sum(), leaf)
    assert all("forward" not in vars(module) for module in model.modules())


def _many_targets(case: ArchitectureCase, model: nn.Module, inputs: Tensor, targets: list) -> list:
    """Four targets for one call: the case's own (one per example), a random index of the
    output per example, one common random index (negative) for every example, and the
    case's own again (a repeated target)."""
    with torch.no_grad():
        shape = case.reference(model, inputs, MambaRules()).shape
    if len(shape) == 1:
        return [None] * 4
    generator = torch.Generator().manual_seed(5)

    def draw() -> tuple[int, ...]:
        return tuple(int(torch.randint(0, n, (1,), generator=generator)) for n in shape[1:])

    def other_than(own: object) -> tuple[int, ...]:
        """A random index that is not ``own`` (where the output has another one), so
        that the rows of the call differ even for outputs of two classes."""
        own = tuple(own) if isinstance(own, tuple | list) else (own,)
        choice = draw()
        while choice == own and math.prod(shape[1:]) > 1:
            choice = draw()
        return choice

    common = tuple(index - n for index, n in zip(draw(), shape[1:], strict=True))
    return [targets, [other_than(own) for own in targets], common, targets]


@pytest.mark.parametrize("lean", [False, True], ids=["fast", "lean"])
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_many_targets_equal_single_calls(case: ArchitectureCase, config: str, lean: bool) -> None:
    model = case.build(config, 4, False)
    inputs, targets = case.inputs(model, config, 4)
    lrp = _lrp(case, model, MambaRules(), lean)
    many = _many_targets(case, model, inputs, targets)
    relevance, delta = lrp.attribute(inputs, targets=many, return_convergence_delta=True)
    # every operation's backward takes the targets' cotangents as one batch (see
    # docs/developer_guide.md, "Many targets"): no case falls back to a loop
    assert lrp.last_backward == f"batched: {len(many)} targets in 1 pass"
    assert relevance.shape == (len(many), *inputs.shape)
    assert delta.shape == (len(many), inputs.shape[0])
    for k, target in enumerate(many):
        single, single_delta = lrp.attribute(inputs, target=target, return_convergence_delta=True)
        assert single.abs().max() > 1e-6
        assert relative_error(relevance[k], single) <= 1e-12
        scale = single.abs().flatten(1).sum(1).max()
        assert (delta[k] - single_delta).abs().max() <= 1e-12 * scale
    if many[1] is not None:
        assert relative_error(relevance[1], relevance[0]) > 1e-3  # the rows differ


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_many_targets_of_layer_mamba_lrp_equal_single_calls(case: ArchitectureCase) -> None:
    model = case.build(case.configs[0], 6, False)
    layer = model.get_submodule(case.layer)
    forward = (
        case.forward_func(model) if case.forward_func else default_forward(model, "inputs_embeds")
    )
    lrp = LayerMambaLRP(model, layer, forward_func=forward)
    inputs, targets = case.inputs(model, case.configs[0], 6)
    many = _many_targets(case, model, inputs, targets)
    relevance = lrp.attribute(inputs, targets=many)
    assert lrp.last_backward == f"batched: {len(many)} targets in 1 pass"
    for k, target in enumerate(many):
        single = lrp.attribute(inputs, target=target)
        assert relative_error(relevance[k], single) <= 1e-12
