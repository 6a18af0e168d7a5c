"""Baselines: recording the state-space scans and softmax attentions of a forward pass,
for every architecture.

:class:`SSMRecorder` is a backend of :mod:`captum_mamba.adapters.backend`: the model runs
its handler forwards (the same code as MambaLRP, here with every rule off, so values and
gradients are the model's own), and every selective scan (Mamba-1) or multi-head scan
(Mamba-2) is recorded with its inputs as
:class:`~captum_mamba.baselines.hidden_attention.SelectiveSSMInputs`, and every softmax
attention (the attention layers of hybrid models) with its weights, grouped by the
residual layer (handler role ``"block"``) that ran it. The hidden-attention baselines read
the records; they need no code per architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import Backend, BlockOps, PlanEntry, rules_applied
from captum_mamba.adapters.backend import KINDS
from captum_mamba.baselines.hidden_attention import SelectiveSSMInputs, ssd_as_selective
from captum_mamba.ops.delta_rule import delta_rule_weights
from captum_mamba.ops.mlstm import mlstm_attention, mlstm_gates
from captum_mamba.ops.rglru import rglru_as_selective, rglru_gates
from captum_mamba.ops.wkv import wkv_weights
from captum_mamba.rules import MambaRules
from captum_mamba.rules import functional as R


@dataclass(frozen=True)
class SSMRecord:
    """One scan of a forward pass.

    Args:
        path (str): the scan's site path, e.g. ``"backbone.layers.0.mixer.ssm"``.
        inputs (SelectiveSSMInputs): its inputs (detached), in the order scanned.
        output (Tensor): its output ``y`` (skip term included, detached), in the order
            scanned.
        reverse (bool): the sequence was scanned backwards (inputs and output are in
            reversed order).
    """

    path: str
    inputs: SelectiveSSMInputs
    output: Tensor
    reverse: bool


@dataclass(frozen=True)
class AttentionRecord:
    """One softmax attention of a forward pass, or an attention-like operation's exact
    matrix (the mLSTM cell of xLSTM: its output is ``weights @ v``; signed, rows not
    normalised).

    Args:
        path (str): the attention's site path, e.g. ``"model.layers.1.self_attn.attention"``.
        weights (Tensor): ``(batch, heads, queries, keys)`` attention weights (detached).
    """

    path: str
    weights: Tensor

    @property
    def causal(self) -> bool:
        """Whether no query attends to a later key."""
        return bool((torch.triu(self.weights, diagonal=1) == 0).all())


@dataclass
class LayerRecord:
    """The scans and softmax attentions of one residual layer.

    Args:
        path (str): the layer's path.
        hidden_states (Tensor or None): the residual stream entering the layer (part of
            the autograd graph of the forward pass); None for records outside any layer.
        attention_mask (Tensor or None): the padding mask given to the layer (for an
            attention layer: as the model passes it, see ``padding_mask``).
        ssms (list of SSMRecord): its scans, in execution order.
        attentions (list of AttentionRecord): its softmax attentions, in execution order.
    """

    path: str
    hidden_states: Tensor | None
    attention_mask: Tensor | None
    ssms: list[SSMRecord] = field(default_factory=list)
    attentions: list[AttentionRecord] = field(default_factory=list)

    @property
    def bidirectional(self) -> bool:
        """Whether a scan of the layer runs backwards or an attention is not causal."""
        return any(ssm.reverse for ssm in self.ssms) or not all(
            attention.causal for attention in self.attentions
        )

    @property
    def padding_mask(self) -> Tensor | None:
        """The ``(batch, seq)`` 0/1 padding mask of the layer, if it was given one (the
        4-D masks of attention layers are not padding masks: masked keys already have
        zero weight)."""
        mask = self.attention_mask
        return mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def _selective_record(path: str, arguments: dict[str, Any], y: Tensor) -> SSMRecord:
    """A Mamba-1 scan (kind ``ssm``) as it ran."""
    x = arguments["x"]
    D = arguments["D"]
    inputs = SelectiveSSMInputs(
        *(arguments[name].detach().to(x.dtype) for name in ("x", "dt", "A", "B", "C")),
        None if D is None else D.detach().to(x.dtype),
    )
    return SSMRecord(path, inputs, y.detach(), arguments["reverse"])


def _ssd_record(path: str, arguments: dict[str, Any], y: Tensor) -> SSMRecord:
    """A Mamba-2 scan (kind ``ssd``) as the selective scan it equals."""
    x = arguments["x"]
    D = arguments["D"]
    detached = [arguments[name].detach().to(x.dtype) for name in ("x", "dt", "A", "B", "C")]
    inputs = ssd_as_selective(*detached, None if D is None else D.detach().to(x.dtype))
    return SSMRecord(path, inputs, y.detach().reshape(inputs.x.shape), False)


def _rglru_record(path: str, arguments: dict[str, Any], y: Tensor) -> SSMRecord:
    """A real-gated linear recurrent unit (kind ``rglru``) as the selective scan it equals."""
    with torch.no_grad():
        x = arguments["x"].detach()
        names = ("input_weight", "input_bias", "recurrent_weight", "recurrent_bias")
        gates = rglru_gates(x, *(arguments[name] for name in names))
        inputs = SelectiveSSMInputs(*rglru_as_selective(x, *gates, arguments["rate"]), None)
    return SSMRecord(path, inputs, y.detach(), False)


def _attention_record(path: str, arguments: dict[str, Any], out: Tensor) -> AttentionRecord:
    """A softmax attention (kind ``attention``): its weights."""
    with torch.no_grad():
        weights = R.attention_weights(
            arguments["q"],
            arguments["k"],
            arguments["bias"],
            arguments["scaling"],
            arguments["causal"],
        )
    return AttentionRecord(path, weights)


def _mlstm_record(path: str, arguments: dict[str, Any], out: Tensor) -> AttentionRecord:
    """An mLSTM cell (kind ``mlstm``): its causal attention matrix (``out = weights @ v``)."""
    with torch.no_grad():
        gates = mlstm_gates(arguments["igate"], arguments["fgate"], arguments["gate_cap"])
        weights = mlstm_attention(arguments["q"], arguments["k"], *gates, arguments["eps"])
    return AttentionRecord(path, weights)


def _wkv_record(path: str, arguments: dict[str, Any], out: Tensor) -> AttentionRecord:
    """RWKV's WKV (kind ``wkv``): the weights of each channel, channels as heads."""
    with torch.no_grad():
        weights = wkv_weights(arguments["k"], arguments["time_decay"], arguments["time_first"])
    return AttentionRecord(path, weights)


def _delta_rule_record(path: str, arguments: dict[str, Any], out: Tensor) -> AttentionRecord:
    """A gated delta rule (kind ``delta_rule``): its implicit attention
    ``o[t] = sum_s W[t, s] v[s]``."""
    with torch.no_grad():
        names = ("q", "k", "beta", "log_decay")
        weights = delta_rule_weights(*(arguments[name].detach() for name in names))
    return AttentionRecord(path, weights)


#: Op kind -> its record: every kind whose descriptor ``records`` something (``"scan"``:
#: an :class:`SSMRecord`, ``"attention"``: an :class:`AttentionRecord`).
RECORDS: dict[str, Callable[[str, dict[str, Any], Tensor], SSMRecord | AttentionRecord]] = {
    "ssm": _selective_record,
    "ssd": _ssd_record,
    "rglru": _rglru_record,
    "attention": _attention_record,
    "mlstm": _mlstm_record,
    "wkv": _wkv_record,
    "delta_rule": _delta_rule_record,
}


class RecordingOps(BlockOps):
    """Block operations that also record every scan and softmax attention into their
    recorder, and refuse operations that mix positions but are not recorded (the
    baselines would silently miss them)."""

    recorder: SSMRecorder

    def apply(self, kind: str, site: str, **arguments: Any) -> Tensor:
        out = super().apply(kind, site, **arguments)
        if KINDS[kind].records is not None:
            path = f"{self.path}.{site}" if self.path else site
            self.recorder.add(RECORDS[kind](path, arguments, out))
        elif KINDS[kind].mixes_positions:
            raise NotImplementedError(
                f"{self.path or '<model>'}.{site} runs an operation of kind {kind!r}, which "
                "mixes positions but is not recorded: the hidden-attention baselines "
                "cannot explain this model"
            )
        return out


class SSMRecorder(Backend):
    """Backend that records the scans of a forward pass by residual layer.

    Attributes:
        layers (list of LayerRecord): the layers in execution order, filled while the
            model runs.
    """

    ops_class = RecordingOps

    def __init__(self) -> None:
        self.layers: list[LayerRecord] = []
        self._open: list[LayerRecord] = []

    def ops(self, module: nn.Module, path: str, site_rules: Mapping[str, MambaRules]) -> BlockOps:
        ops = super().ops(module, path, site_rules)
        ops.recorder = self
        return ops

    def call(self, entry: PlanEntry, ops: BlockOps, *args: Any, **kwargs: Any) -> Any:
        if not entry.block:
            return super().call(entry, ops, *args, **kwargs)
        hidden = args[0] if args else kwargs.get("hidden_states")
        layer = LayerRecord(entry.path, hidden, kwargs.get("attention_mask"))
        self.layers.append(layer)
        self._open.append(layer)
        try:
            return super().call(entry, ops, *args, **kwargs)
        finally:
            self._open.pop()

    def add(self, record: SSMRecord | AttentionRecord) -> None:
        """File a scan or a softmax attention under the innermost running layer (or a
        layer of its own)."""
        if self._open:
            layer = self._open[-1]
        else:
            layer = LayerRecord(record.path, None, None)
            self.layers.append(layer)
        (layer.ssms if isinstance(record, SSMRecord) else layer.attentions).append(record)


def record_layers(model: nn.Module, forward: Callable[[], Any]) -> tuple[Any, list[LayerRecord]]:
    """Run ``forward()`` with the model's plain forward (every rule off) and record its
    scans and softmax attentions.

    Args:
        model (nn.Module): the model that ``forward`` runs.
        forward (Callable): runs the model and returns its output.

    Returns:
        tuple: the output of ``forward`` and the recorded layers (those with at least one
        scan or attention; layers of MLPs alone are left out), in execution order.

    Raises:
        UnsupportedModelError: if a module of ``model`` is not covered by an adapter.
    """
    recorder = SSMRecorder()
    with rules_applied(model, MambaRules.gradient_x_input(), recorder):
        output = forward()
    return output, [layer for layer in recorder.layers if layer.ssms or layer.attentions]
