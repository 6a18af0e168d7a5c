"""Operation kinds x backends: every backend of the package handles every kind of
:data:`captum_mamba.adapters.backend.KINDS`, as the kind's descriptor says.

A backend either computes an operation (its value and, under the rules it runs with, the
gradient of the kind's function with the setting that applies) or refuses it loudly where
the descriptor says it cannot (the stepper: kinds that are not steppable; the recorder of
the baselines: kinds that mix positions but are not recorded). The backends are found as
the subclasses of ``Backend`` in the package, so a new backend is checked too; a new kind
needs an example below.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from captum_mamba.adapters import Backend, BlockOps, ModuleHandler, PlanEntry
from captum_mamba.adapters.backend import KINDS, OpKind
from captum_mamba.attr._stepping import CONTINUED, STEPPABLE_KINDS, StepBackend
from captum_mamba.baselines import recording
from captum_mamba.baselines.recording import RECORDS, AttentionRecord, SSMRecord, SSMRecorder
from captum_mamba.baselines.rollout import MIXING_KINDS
from captum_mamba.lrp.modules import (
    CAPTUM_RULES,
    CONSTANT_KINDS,
    MAMBA_RULES,
    CaptumOps,
    OpLeaf,
    default_leaf_rule,
    keep_rule,
)
from captum_mamba.rules import MambaRules

DTYPE = torch.float64
RULES = {"mamba_lrp": MambaRules(), "gradient_x_input": MambaRules.gradient_x_input()}
#: Operations that are not kinds: the widening, parameter casts, layers called as modules.
NOT_KINDS = {"rules", "setting", "apply", "compute", "parameter", "linear", "causal_conv"}


def _tensor(generator: torch.Generator, *shape: int, positive: bool = False) -> Tensor:
    x = torch.randn(*shape, generator=generator, dtype=DTYPE)
    return x.abs() + 0.1 if positive else x


def examples() -> dict[str, dict[str, Any]]:
    """Arguments of each kind's method; sequences (batch, 5, ...) where a kind has one."""
    g = torch.Generator().manual_seed(0)
    causal = torch.full((5, 5), float("-inf"), dtype=DTYPE).triu(1)[None, None]
    return {
        "rms_norm": {
            "x": _tensor(g, 2, 5, 4),
            "weight": _tensor(g, 4),
            "eps": 1e-5,
            "group_size": 2,
        },
        "layer_norm": {
            "x": _tensor(g, 2, 5, 4),
            "weight": _tensor(g, 4),
            "bias": _tensor(g, 4),
            "eps": 1e-5,
        },
        "silu": {"x": _tensor(g, 2, 5, 4)},
        "gate": {"y": _tensor(g, 2, 5, 4), "gate": _tensor(g, 2, 5, 4)},
        "ssm": {
            "x": _tensor(g, 1, 5, 3),
            "dt": _tensor(g, 1, 5, 3, positive=True),
            "A": -_tensor(g, 3, 2, positive=True),
            "B": _tensor(g, 1, 5, 2),
            "C": _tensor(g, 1, 5, 2),
            "D": _tensor(g, 3),
            "reverse": False,
        },
        "ssd": {
            "x": _tensor(g, 1, 5, 2, 3),
            "dt": _tensor(g, 1, 5, 2, positive=True),
            "A": -_tensor(g, 2, positive=True),
            "B": _tensor(g, 1, 5, 1, 4),
            "C": _tensor(g, 1, 5, 1, 4),
            "D": _tensor(g, 2),
            "chunk_size": 2,
        },
        "rglru": {
            "x": _tensor(g, 2, 5, 4),
            "input_weight": _tensor(g, 2, 2, 2),
            "input_bias": _tensor(g, 2, 2),
            "recurrent_weight": _tensor(g, 2, 2, 2),
            "recurrent_bias": _tensor(g, 2, 2),
            "rate": _tensor(g, 4, positive=True),
        },
        "mamba3": {
            "x": _tensor(g, 2, 5, 2, 2),
            "B": _tensor(g, 2, 5, 2, 1, 4),
            "C": _tensor(g, 2, 5, 2, 1, 4),
            "dt": _tensor(g, 2, 5, 2),
            "decay": _tensor(g, 2, 5, 2),
            "trap": _tensor(g, 2, 5, 2),
            "angle": _tensor(g, 2, 5, 1),
            "dt_bias": _tensor(g, 2),
            "B_bias": _tensor(g, 2, 2, 4),
            "C_bias": _tensor(g, 2, 2, 4),
            "D": _tensor(g, 2),
            "x_weight": _tensor(g, 2, 2, 2),
            "a_floor": 1e-4,
            "pairwise": False,
            "chunk_size": 2,
        },
        "wkv": {
            "k": _tensor(g, 2, 5, 3),
            "v": _tensor(g, 2, 5, 3),
            "time_decay": _tensor(g, 3),
            "time_first": _tensor(g, 3),
        },
        "activation": {"x": _tensor(g, 2, 5, 4), "function": "leaky_relu", "negative_slope": 0.2},
        "attention": {
            "q": _tensor(g, 1, 2, 5, 3),
            "k": _tensor(g, 1, 1, 5, 3),
            "v": _tensor(g, 1, 1, 5, 3),
            "bias": causal,
            "scaling": 0.5,
        },
        "mlstm": {
            "q": _tensor(g, 1, 2, 5, 3),
            "k": _tensor(g, 1, 2, 5, 3),
            "v": _tensor(g, 1, 2, 5, 2),
            "igate": _tensor(g, 1, 2, 5),
            "fgate": _tensor(g, 1, 2, 5),
            "gate_cap": 4.0,
            "eps": 1e-6,
            "chunk_size": 2,
        },
        "delta_rule": {
            "q": _tensor(g, 1, 2, 5, 3),
            "k": _tensor(g, 1, 2, 5, 3),
            "v": _tensor(g, 1, 2, 5, 4),
            "beta": _tensor(g, 1, 2, 5, positive=True),
            "log_decay": -_tensor(g, 1, 2, 5, 3, positive=True),
            "chunk_size": 2,
        },
        "mixture": {
            "weights": _tensor(g, 4),
            "values": _tensor(g, 4, 3),
            "index": torch.tensor([0, 0, 1, 2]),
            "size": 3,
        },
        "grouped_linear": {
            "x": _tensor(g, 5, 3),
            "weight": _tensor(g, 2, 4, 3),
            "group_sizes": [2, 3],
        },
        "projection": {"x": _tensor(g, 2, 5, 3), "weight": _tensor(g, 4, 3), "bias": _tensor(g, 4)},
        "add": {"a": _tensor(g, 2, 5, 3), "b": _tensor(g, 2, 5, 3)},
        "scale": {"x": _tensor(g, 2, 5, 3), "factor": 0.5},
        "time_step": {"raw": _tensor(g, 2, 5, 3), "bias": _tensor(g, 3), "low": 0.0, "high": 3.0},
        "rotary": {
            "x": _tensor(g, 1, 2, 5, 4),
            "cos": _tensor(g, 1, 5, 4),
            "sin": _tensor(g, 1, 5, 4),
        },
        "routing": {"x": _tensor(g, 3, 4), "select": lambda x: x.softmax(-1)},
        "constant": {},
    }


def package_backends() -> list[type[Backend]]:
    """``Backend`` and its subclasses defined in the package."""
    found, todo = [], [Backend]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("captum_mamba."):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__qualname__)


def refuses(backend: Backend, kind: OpKind) -> bool:
    """Whether the kind's descriptor says that ``backend`` refuses it."""
    if isinstance(backend, StepBackend):
        return not kind.steppable
    if isinstance(backend, SSMRecorder):
        return kind.mixes_positions and kind.records is None
    return False


def run(backend: Backend, kind: OpKind, rules: MambaRules, arguments: dict[str, Any]) -> Any:
    """Run one operation of ``kind`` as the forward of a module handled by ``backend``."""
    module = nn.Module()
    site = "" if kind.method is None else "s"
    if issubclass(backend.ops_class, CaptumOps) and site:
        leaf = OpLeaf(kind.name)
        keep_rule(leaf)
        value = None if kind.setting is None else getattr(rules, kind.setting)
        leaf.rule = default_leaf_rule(kind.name, value)
        module.s = leaf

    def forward(ops: BlockOps, module: nn.Module, **arguments: Any) -> Any:
        if kind.method is None:  # the module's own forward, which no ops run
            return torch.ones(3, dtype=DTYPE)
        return getattr(ops, kind.method)(site, **arguments)

    handler = ModuleHandler(nn.Module, forward, {site: kind.name})
    entry = PlanEntry(module, "m", handler, rules, {site: rules})
    return backend.call(entry, backend.ops(module, "m", {site: rules}), **arguments)


def value_and_gradients(
    compute: Callable[[dict[str, Any]], Tensor], kind: OpKind, arguments: dict[str, Any]
) -> tuple[Tensor, list[Tensor]]:
    """Output of ``compute`` and the gradients of a fixed projection of it with respect to
    the kind's floating inputs."""
    leaves = {
        name: value.detach().clone().requires_grad_()
        for name, value in arguments.items()
        if name in kind.inputs and value.is_floating_point()
    }
    out = compute({**arguments, **leaves})
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), list(leaves.values()), allow_unused=True)
    return out.detach(), [
        torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves.values(), strict=True)
    ]


def test_every_kind_has_an_example() -> None:
    assert set(examples()) == set(KINDS)


@pytest.mark.parametrize(
    "changes",
    [
        {"inputs": ("x", "missing")},
        {"function": None},
        {"records": "weights"},
        {"mixes_positions": False},
    ],
)
def test_inconsistent_descriptors_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ssm"):
        OpKind(**{**vars(KINDS["ssm"]), **changes})


def test_the_package_backends_are_found() -> None:
    names = {cls.__name__ for cls in package_backends()}
    assert {"Backend", "RecomputeBackend", "_CaptumBackend", "StepBackend", "SSMRecorder"} <= names


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_block_ops_has_the_method_of_every_kind(kind: str) -> None:
    op = KINDS[kind]
    if op.method is None:
        assert not op.inputs, "a kind without a method is the module's own forward"
        return
    parameters = list(inspect.signature(getattr(BlockOps, op.method)).parameters)
    assert parameters == ["self", "site", *op.arguments]


def test_every_block_ops_operation_is_a_kind() -> None:
    methods = {name for name, _ in inspect.getmembers(BlockOps, inspect.isfunction)}
    operations = {name for name in methods if not name.startswith("_")} - NOT_KINDS
    assert operations == {op.method for op in KINDS.values() if op.method is not None}


@pytest.mark.parametrize("rules", sorted(RULES))
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("backend_class", package_backends(), ids=lambda cls: cls.__name__)
def test_every_backend_handles_every_kind(
    backend_class: type[Backend], kind: str, rules: str
) -> None:
    op, arguments, backend = KINDS[kind], examples()[kind], backend_class()
    if refuses(backend, op):
        with pytest.raises(NotImplementedError, match=kind):
            run(backend, op, RULES[rules], arguments)
        return
    if op.method is None:
        assert torch.equal(run(backend, op, RULES[rules], arguments), torch.ones(3, dtype=DTYPE))
        return
    if isinstance(backend, StepBackend):  # generation: every rule off, no gradients
        if rules != "gradient_x_input":
            pytest.skip("generation runs with every rule off")
        with torch.no_grad():
            out = run(backend, op, RULES[rules], arguments)
        torch.testing.assert_close(out, op.function(False, **arguments), rtol=1e-9, atol=1e-12)
        return
    value = None if op.setting is None else getattr(RULES[rules], op.setting)
    out, grads = value_and_gradients(
        lambda a: run(backend_class(), op, RULES[rules], a), op, arguments
    )
    expected, expected_grads = value_and_gradients(lambda a: op.function(value, **a), op, arguments)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_recorder_files_every_recorded_kind(kind: str) -> None:
    op, recorder = KINDS[kind], SSMRecorder()
    if refuses(recorder, op):
        pytest.skip("refused")
    run(recorder, op, RULES["gradient_x_input"], examples()[kind])
    records = [r for layer in recorder.layers for r in (*layer.ssms, *layer.attentions)]
    expected = {"scan": [SSMRecord], "attention": [AttentionRecord], None: []}[op.records]
    assert [type(r) for r in records] == expected
    assert all(r.path == "m.s" for r in records)


def test_a_kind_that_mixes_positions_unrecorded_is_refused_by_the_recorder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new scan kind without a record must not escape the baselines silently."""
    unrecorded = OpKind(**{**vars(KINDS["ssm"]), "records": None})
    monkeypatch.setattr(recording, "KINDS", {**KINDS, "ssm": unrecorded})
    with pytest.raises(NotImplementedError, match="mixes positions but is not recorded"):
        run(SSMRecorder(), unrecorded, RULES["gradient_x_input"], examples()["ssm"])


@pytest.mark.parametrize("kind", sorted(STEPPABLE_KINDS))
def test_the_stepper_continues_every_steppable_kind(kind: str) -> None:
    """Running the sequence in two calls equals running it at once (dimension 1 is the
    sequence of every steppable kind's inputs)."""
    op, arguments, backend = KINDS[kind], examples()[kind], StepBackend()
    rules = RULES["gradient_x_input"]
    parts = [
        {n: v[:, part] if n in op.inputs else v for n, v in arguments.items()}
        for part in (slice(0, 2), slice(2, None))
    ]
    stepped = torch.cat([run(backend, op, rules, part) for part in parts], dim=1)
    torch.testing.assert_close(stepped, op.function(False, **arguments), rtol=1e-9, atol=1e-12)


def test_the_tables_are_derived_from_the_kinds() -> None:
    assert set(CAPTUM_RULES) == set(MambaRules.kinds())
    assert set(MAMBA_RULES) == {k.name for k in KINDS.values() if k.setting in CAPTUM_RULES}
    assert {k.name for k in KINDS.values() if k.records is not None} == set(RECORDS)
    assert {k.name for k in KINDS.values() if k.mixes_positions} == MIXING_KINDS
    assert {k.name for k in KINDS.values() if k.steppable} == STEPPABLE_KINDS
    continued = {k.name for k in KINDS.values() if k.steppable and k.mixes_positions}
    assert continued == set(CONTINUED)
    assert {k.name for k in KINDS.values() if not k.inputs} == CONSTANT_KINDS
    assert {k.setting for k in KINDS.values()} - {None} <= set(MambaRules.setting_names())


def test_a_captum_leaf_refuses_an_operation_of_another_kind() -> None:
    module = nn.Module()
    module.s = OpLeaf("silu")
    ops = CaptumOps(module, "m", {"s": MambaRules()})
    with pytest.raises(TypeError, match="declared as a 'silu' site but runs 'gate'"):
        ops.gate("s", **examples()["gate"])
