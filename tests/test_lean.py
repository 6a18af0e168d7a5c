"""The memory-lean path: the LM head at the explained positions only, residual layers
recomputed in the backward pass, its automatic choice, its memory, and the warnings for
explained padding.

Bit-identity of the lean path for every architecture is in ``test_conformance.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from captum_mamba import LayerMambaLRP, MambaLRP
from captum_mamba.adapters.base import RuleForward
from captum_mamba.attr import LEAN_FROM_TOKENS, MaskedTargetWarning, uses_lean
from captum_mamba.baselines.captum_methods import (
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    SALIENCY,
    SMOOTHGRAD,
    MethodSettings,
    build_method,
)
from captum_mamba.models import mamba_config, random_mamba_lm

VOCAB = 64


def _model(seed: int = 0, **config) -> nn.Module:
    config = mamba_config(vocab_size=VOCAB, tie_word_embeddings=False, **config)
    return random_mamba_lm(config, seed=seed, dtype=torch.float64)


def _full_logits(model: nn.Module):
    """A forward that returns the logits of every position (no targeted head)."""

    def forward(embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = model.backbone(inputs_embeds=embeds, attention_mask=attention_mask)
        return model.lm_head(hidden.last_hidden_state)

    return forward


def _head_rows(model: nn.Module) -> tuple[list[int], object]:
    rows: list[int] = []
    handle = model.lm_head.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[:-1].numel())
    )
    return rows, handle


@pytest.mark.parametrize("lean", [False, True], ids=["fast", "lean"])
def test_head_runs_at_explained_positions_only(lean: bool) -> None:
    model = _model(1)
    embeds = torch.randn(3, 9, 16, dtype=torch.float64, generator=torch.Generator())
    targets = [(8, 3), (2, 60), (-4, 7)]
    rows, handle = _head_rows(model)
    try:
        relevance, delta = MambaLRP(model, lean=lean).attribute(
            embeds, target=targets, return_convergence_delta=True
        )
    finally:
        handle.remove()
    assert rows == [3]  # one row per example, not 3 x 9 x vocab logits
    full, full_delta = MambaLRP(model, _full_logits(model), lean=False).attribute(
        embeds, target=targets, return_convergence_delta=True
    )
    assert (relevance - full).abs().max() <= 1e-12 * full.abs().max()
    assert (delta - full_delta).abs().max() <= 1e-12 * full.abs().sum()


def test_layer_mamba_lrp_head_at_explained_positions_only() -> None:
    model = _model(2)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    rows, handle = _head_rows(model)
    embedding = model.get_input_embeddings()
    try:
        relevance = LayerMambaLRP(model, embedding).attribute(ids, target=(5, 11))
    finally:
        handle.remove()
    assert rows == [2]

    def full(ids: Tensor) -> Tensor:
        return model.lm_head(model.backbone(input_ids=ids).last_hidden_state)

    expected = LayerMambaLRP(model, embedding, full).attribute(ids, target=(5, 11))
    assert (relevance - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_other_targets_and_forwards_keep_the_full_output() -> None:
    model = _model(3)
    embeds = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator())
    rows, handle = _head_rows(model)
    try:
        MambaLRP(model, _full_logits(model)).attribute(embeds, target=(4, 1))
    finally:
        handle.remove()
    assert rows == [10]
    with pytest.raises(ValueError, match="has 1 indices but the output has shape"):
        MambaLRP(model).attribute(embeds, target=3)


def test_tensor_targets() -> None:
    model = _model(8)
    embeds = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator())
    rows, handle = _head_rows(model)
    try:
        by_tensor = MambaLRP(model).attribute(embeds, target=torch.tensor([[4, 1], [2, 9]]))
    finally:
        handle.remove()
    assert rows == [2]
    by_list = MambaLRP(model, _full_logits(model)).attribute(embeds, target=[(4, 1), (2, 9)])
    assert (by_tensor - by_list).abs().max() <= 1e-12 * by_list.abs().max()
    with pytest.raises(ValueError, match="has 1 indices"):  # (2,): one class per example
        MambaLRP(model).attribute(embeds, target=torch.tensor([4, 1]))


def test_automatic_choice() -> None:
    assert not uses_lean(None, LEAN_FROM_TOKENS - 1)
    assert uses_lean(None, LEAN_FROM_TOKENS)
    assert uses_lean(True, 1) and not uses_lean(False, 10**9)
    with pytest.raises(TypeError, match="lean must be True, False or None"):
        uses_lean("yes", 5)
    with pytest.raises(TypeError, match="lean must be True, False or None"):
        MambaLRP(_model(0), lean=1)


def test_automatic_choice_recomputes_long_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(4)
    runs: list[int] = []
    handle = model.backbone.layers[0].norm.register_forward_hook(lambda *_: runs.append(1))
    embeds = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator())
    try:
        monkeypatch.setattr("captum_mamba.attr.forward.LEAN_FROM_TOKENS", 12)
        MambaLRP(model).attribute(embeds, target=(5, 1))
        assert len(runs) == 2  # 12 tokens: forward and recomputation
        runs.clear()
        MambaLRP(model).attribute(embeds[:, :5], target=(4, 1))
        assert len(runs) == 1
    finally:
        handle.remove()


@pytest.mark.parametrize("name", [SALIENCY, INTEGRATED_GRADIENTS, SMOOTHGRAD, INPUT_X_GRADIENT])
def test_captum_gradient_methods_run_through_the_package(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(7)
    embeds = torch.randn(1, 6, 16, dtype=torch.float64, generator=torch.Generator())
    settings = MethodSettings(ig_steps=4, smoothgrad_samples=3)
    plain = build_method(name, model, settings=settings)(embeds, (-1, 3))
    method = build_method(name, model, settings=settings)  # SmoothGrad: same noise again
    runs: list[bool] = []

    def record(module: nn.Module, args: object, output: object) -> None:
        runs.append(isinstance(vars(module).get("forward"), RuleForward))

    handle = model.backbone.layers[0].register_forward_hook(record)
    norm = model.backbone.layers[0].norm.register_forward_hook(lambda *_: runs.append(False))
    try:
        monkeypatch.setattr("captum_mamba.attr.forward.LEAN_FROM_TOKENS", 6)
        lean = method(embeds, (-1, 3))
    finally:
        handle.remove()
        norm.remove()
    assert runs.count(True) >= 1 and runs.count(True) == runs.count(False) // 2
    assert (lean - plain).abs().max() <= 1e-12 * plain.abs().max()


def test_explaining_padding_warns() -> None:
    model = _model(5)
    embeds = torch.randn(3, 6, 16, dtype=torch.float64, generator=torch.Generator())
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2] = 0
    lrp = MambaLRP(model)
    with pytest.warns(MaskedTargetWarning) as record:
        lrp.attribute(embeds, target=[(5, 1), (5, 1), (3, 1)], additional_forward_args=mask)
    messages = [str(w.message) for w in record]
    assert any("example(s) [2] are fully masked" in m for m in messages)
    assert any("example(s) [1] explain a padded position" in m for m in messages)
    with pytest.warns(MaskedTargetWarning, match=r"\[0\] explain a padded position"):
        LayerMambaLRP(model, model.get_input_embeddings()).attribute(
            torch.randint(0, VOCAB, (1, 6)),
            target=(-1, 2),
            additional_forward_args=torch.tensor([[1, 1, 1, 1, 1, 0]]),
        )


def test_real_targets_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    model = _model(6)
    embeds = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator())
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    MambaLRP(model).attribute(embeds, target=[(5, 1), (-1, 2)], additional_forward_args=mask)
    MambaLRP(model, _full_logits(model)).attribute(
        embeds, target=(5, 1), additional_forward_args=mask
    )
    assert not [w for w in recwarn if issubclass(w.category, MaskedTargetWarning)]


#: Run in a fresh interpreter: explain ``length`` tokens of a 12-layer model on the fast
#: or lean path and print the peak resident set growth in KiB (peak reset first, as in
#: ``test_long_inputs.py``).
_CHILD = """
import json, re, sys, torch
from captum_mamba import MambaLRP
from captum_mamba.models import mamba_config, random_mamba_lm

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

torch.set_num_threads(1)
length, lean = int(sys.argv[1]), sys.argv[2] == "lean"
model = random_mamba_lm(mamba_config(hidden_size=32, num_hidden_layers=12, vocab_size=64))
lrp = MambaLRP(model, lean=lean)
lrp.attribute(torch.randn(1, 64, 32), target=(-1, 1))
embeds = torch.randn(1, length, 32)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
relevance = lrp.attribute(embeds, target=(-1, 1))
growth = status("VmHWM") - base
print(json.dumps({"growth_kib": growth, "finite": bool(torch.isfinite(relevance).all())}))
"""


def _growth_kib(length: int, path: str) -> int:
    # A fixed mmap threshold returns every freed tensor above 128 KiB to the system, so
    # that the peak reflects the tensors alive at once, not glibc's heap fragmentation
    # (its dynamic threshold otherwise moves the 2 MiB tensors of this model to the heap).
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(length), path],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"]
    return result["growth_kib"]


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs")
def test_lean_path_keeps_a_fraction_of_the_memory() -> None:
    """12 layers: the fast path keeps every layer's activations (about 20 vectors of
    width 64 per token and layer), the lean path the layer inputs (width 32) and one
    layer's activations."""
    fast, lean = _growth_kib(4096, "fast"), _growth_kib(4096, "lean")
    assert fast > 20 * 1024, fast
    assert lean < 0.25 * fast, (fast, lean)
