"""Architecture adapters: the operations a block forward is written in, and their backends.

Every supported module's forward is written once, as a function
``forward(ops, module, *args, **kwargs)`` of the operations below. The object ``ops``
decides how each operation is computed:

- :class:`BlockOps` (this module) computes it with the rule functions of
  :mod:`captum_mamba.rules`: the value of the operation, with the backward of the rule
  that applies at that place (MambaLRP; with every rule off, the plain forward of the
  model, fully differentiable through this package's scans);
- :mod:`captum_mamba.lrp` subclasses it to call one Captum leaf module per operation, so
  that Captum's ``LRP`` sees every step;
- :mod:`captum_mamba.baselines` subclasses it to record the inputs of each state-space
  scan, from which the hidden-attention baselines are computed;
- :mod:`captum_mamba.attr` subclasses it to continue the scans of the previous call
  (generation token by token); backends can also wrap each module's call (recomputing
  residual layers in the backward pass).

Operations name their place in the module with a *site* string (e.g. ``"conv_act"``);
the site ``""`` is the module itself. Each site is declared with its kind in the
module's :class:`~captum_mamba.adapters.base.ModuleHandler`. Every kind is described
once, by an :class:`OpKind` in :data:`KINDS` (its method and arguments, the rule setting
that governs it, its rule function, whether it mixes positions, whether generation can
step it, what the baselines record of it); every method of :class:`BlockOps` ends in
:meth:`BlockOps.apply`, and each backend derives its tables from :data:`KINDS`
(``tests/test_op_kinds.py`` runs every kind through every backend).

Linear and convolutional layers are not sites: they are called as modules
(``ops.linear(module.in_proj, x)``), so that their rule forward, user hooks and layer
attributions apply.

Only operations whose backward is a routing of values (slicing, reshaping,
concatenation, flips, multiplication by a 0/1 padding mask) may be written outside
``ops``: Captum's LRP passes relevance through them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from captum_mamba.rules import MambaRules
from captum_mamba.rules import functional as R


@dataclass(frozen=True)
class OpKind:
    """One kind of operation: the single description every backend derives its table from.

    Args:
        name (str): the kind, as module handlers declare it for their sites.
        method (str or None): the :class:`BlockOps` method that runs it; None for a kind
            that is the module's own forward (``constant``).
        arguments (tuple of str): the method's arguments after ``site``, in order; the
            backends receive them by name (:meth:`BlockOps.apply`).
        inputs (tuple of str): the arguments on the relevance path: positional
            arguments of its Captum leaf (Captum's LRP hooks them), the others are
            keyword arguments. Empty for a kind through which no relevance passes.
        setting (str or None): the field of
            :class:`~captum_mamba.rules.MambaRules` that governs its rule; None for a
            kind without a rule.
        function (Callable or None): ``function(value, **arguments)``, the operation's
            value with the rule that the setting's ``value`` selects (rule functions
            of :mod:`captum_mamba.rules`).
        mixes_positions (bool): its output at one position depends on other
            positions (scans, attention): the hidden-attention baselines must read it.
        steppable (bool): generation token by token continues it (a state per site for
            the kinds that mix positions).
        records (str or None): what the scan recorder of the baselines files for it:
            ``"scan"`` (the scan's inputs, from which its hidden attention follows),
            ``"attention"`` (the softmax weights) or None (nothing; a kind that mixes
            positions is then refused by the baselines).
    """

    name: str
    method: str | None
    arguments: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    setting: str | None = None
    function: Callable[..., Tensor] | None = None
    mixes_positions: bool = False
    steppable: bool = False
    records: Literal["scan", "attention"] | None = None

    def __post_init__(self) -> None:
        if not set(self.inputs) <= set(self.arguments):
            raise ValueError(f"{self.name}: inputs {self.inputs} are not all arguments")
        if (self.method is None) != (self.function is None):
            raise ValueError(f"{self.name}: give both a method and a function, or neither")
        if self.records not in (None, "scan", "attention"):
            raise ValueError(f"{self.name}: records must be 'scan', 'attention' or None")
        if self.records is not None and not self.mixes_positions:
            raise ValueError(f"{self.name}: only kinds that mix positions are recorded")


def _delta_rule(setting: bool | str, **arguments: Any) -> Tensor:
    """The gated delta rule with the rule the ``attention`` setting selects: True for the
    uniform rule on reads and writes, ``"cp_lrp"`` for constant keys and queries, False
    for none."""
    return R.gated_delta_rule(
        **arguments, uniform_rule=setting is True, constant_keys=setting == "cp_lrp"
    )


def _attention(setting: bool | str, **arguments: Any) -> Tensor:
    """Softmax attention with the rule its setting selects: True for AttnLRP,
    ``"cp_lrp"`` for CP-LRP, False for none."""
    return R.attention(
        **arguments, uniform_rule=setting is True, constant_weights=setting == "cp_lrp"
    )


def _mlstm(setting: bool | str, **arguments: Any) -> Tensor:
    """The mLSTM cell with the rule its setting (``attention``) selects: True for the
    uniform rule, ``"cp_lrp"`` for constant queries and keys, False for none."""
    return R.mlstm(**arguments, uniform_rule=setting is True, constant_keys=setting == "cp_lrp")


#: Arguments of the Mamba-3 recurrence (kind ``mamba3``).
MAMBA3_ARGUMENTS = (
    "x",
    "B",
    "C",
    "dt",
    "decay",
    "trap",
    "angle",
    "dt_bias",
    "B_bias",
    "C_bias",
    "D",
    "x_weight",
    "a_floor",
    "pairwise",
    "chunk_size",
)


def _wkv(setting: bool | str, **arguments: Any) -> Tensor:
    """RWKV's WKV with the rule of softmax attention its setting selects (as
    :func:`_attention`)."""
    return R.wkv(**arguments, uniform_rule=setting is True, constant_weights=setting == "cp_lrp")


#: The operation kinds, by name.
KINDS: Mapping[str, OpKind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            OpKind(
                "rms_norm",
                "rms_norm",
                ("x", "weight", "eps", "group_size"),
                ("x",),
                "norm",
                lambda on, x, weight, eps, group_size: R.grouped_rms_norm(
                    x, weight, eps, group_size, on
                ),
                steppable=True,
            ),
            OpKind(
                "layer_norm",
                "layer_norm",
                ("x", "weight", "bias", "eps"),
                ("x",),
                "norm",
                lambda on, x, weight, bias, eps: R.layer_norm(x, weight, bias, eps, on),
                steppable=True,
            ),
            OpKind(
                "silu",
                "silu",
                ("x",),
                ("x",),
                "silu",
                lambda on, x: R.silu(x, on),
                steppable=True,
            ),
            OpKind(
                "gate",
                "gate",
                ("y", "gate"),
                ("y", "gate"),
                "gate",
                lambda on, y, gate: R.gated_product(y, gate, on),
                steppable=True,
            ),
            OpKind(
                "ssm",
                "ssm",
                ("x", "dt", "A", "B", "C", "D", "reverse"),
                ("x", "dt", "B", "C"),
                "ssm",
                lambda on, x, dt, A, B, C, D, reverse: R.selective_ssm(x, dt, A, B, C, D, on),
                mixes_positions=True,
                steppable=True,
                records="scan",
            ),
            OpKind(
                "ssd",
                "ssd",
                ("x", "dt", "A", "B", "C", "D", "chunk_size"),
                ("x", "dt", "B", "C"),
                "ssm",
                lambda on, x, dt, A, B, C, D, chunk_size: R.multihead_ssm(
                    x, dt, A, B, C, D, on, chunk_size
                ),
                mixes_positions=True,
                steppable=True,
                records="scan",
            ),
            OpKind(
                "rglru",
                "rg_lru",
                ("x", "input_weight", "input_bias", "recurrent_weight", "recurrent_bias", "rate"),
                ("x",),
                "ssm",
                lambda on, x, **parameters: R.rg_lru(x, **parameters, rule=on),
                mixes_positions=True,
                records="scan",
            ),
            OpKind(
                "mamba3",
                "mamba3",
                MAMBA3_ARGUMENTS,
                ("x", "B", "C", "dt", "decay", "trap", "angle"),
                "ssm",
                lambda on, **arguments: R.mamba3_ssm(**arguments, rule=on),
                mixes_positions=True,
            ),
            OpKind(
                "activation",
                "activation",
                ("x", "function", "negative_slope"),
                ("x",),
                "activation",
                lambda on, x, function, negative_slope: R.activation(
                    x, function, on, negative_slope
                ),
            ),
            OpKind(
                "attention",
                "attention",
                ("q", "k", "v", "bias", "scaling", "causal"),
                ("q", "k", "v"),
                "attention",
                _attention,
                mixes_positions=True,
                records="attention",
            ),
            OpKind(
                "mlstm",
                "mlstm",
                ("q", "k", "v", "igate", "fgate", "gate_cap", "eps", "chunk_size"),
                ("q", "k", "v", "igate", "fgate"),
                "attention",
                _mlstm,
                mixes_positions=True,
                records="attention",
            ),
            OpKind(
                "wkv",
                "wkv",
                ("k", "v", "time_decay", "time_first"),
                ("k", "v"),
                "attention",
                _wkv,
                mixes_positions=True,
                records="attention",
            ),
            OpKind(
                "delta_rule",
                "delta_rule",
                ("q", "k", "v", "beta", "log_decay", "chunk_size"),
                ("q", "k", "v", "beta", "log_decay"),
                "attention",
                _delta_rule,
                mixes_positions=True,
                records="attention",
            ),
            OpKind(
                "mixture",
                "mixture",
                ("weights", "values", "index", "size"),
                ("weights", "values"),
                "router",
                lambda on, weights, values, index, size: R.mixture(
                    weights, values, index, size, on
                ),
            ),
            OpKind(
                "grouped_linear",
                "grouped_linear",
                ("x", "weight", "group_sizes"),
                ("x",),
                "linear",
                lambda rule, x, weight, group_sizes: R.grouped_linear(x, weight, group_sizes, rule),
            ),
            OpKind(
                "projection",
                "projection",
                ("x", "weight", "bias"),
                ("x",),
                "linear",
                lambda rule, x, weight, bias: R.projection(x, weight, bias, rule),
            ),
            OpKind(
                "add",
                "add",
                ("a", "b"),
                ("a", "b"),
                None,
                lambda _, a, b: R.add(a, b),
                steppable=True,
            ),
            OpKind(
                "scale",
                "scale",
                ("x", "factor"),
                ("x",),
                None,
                lambda _, x, factor: R.scale(x, factor),
                steppable=True,
            ),
            OpKind(
                "time_step",
                "time_step",
                ("raw", "bias", "low", "high"),
                ("raw",),
                None,
                lambda _, raw, bias, low, high: R.time_step(raw, bias, low, high),
                steppable=True,
            ),
            OpKind(
                "rotary",
                "rotary",
                ("x", "cos", "sin"),
                ("x",),
                None,
                lambda _, x, cos, sin: R.rotary(x, cos, sin),
            ),
            OpKind(
                "routing", "routing", ("x", "select"), ("x",), None, lambda _, x, select: select(x)
            ),
            OpKind("constant", None),
        )
    }
)


def widened(x: Tensor) -> Tensor:
    """``x`` in at least float32: half-precision models are explained in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class BlockOps:
    """The operations of one module's forward, computed with the rule functions.

    Args:
        module (nn.Module): the module whose forward runs.
        path (str): its dotted path in the explained model.
        site_rules (Mapping): site name -> the rules resolved at that site.
    """

    def __init__(self, module: nn.Module, path: str, site_rules: Mapping[str, MambaRules]) -> None:
        self.module = module
        self.path = path
        self.site_rules = site_rules

    def rules(self, site: str) -> MambaRules:
        """The rules that apply at ``site`` of this module.

        Raises:
            KeyError: if the module's handler does not declare ``site``.
        """
        try:
            return self.site_rules[site]
        except KeyError:
            raise KeyError(
                f"{type(self.module).__name__} at {self.path or '<model>'} uses the undeclared "
                f"site {site!r}; add it to the sites of its ModuleHandler"
            ) from None

    def setting(self, kind: str, site: str) -> Any:
        """The value of the setting that governs ``kind`` at ``site`` (None for a kind
        without one)."""
        name = KINDS[kind].setting
        rules = self.rules(site)
        return None if name is None else getattr(rules, name)

    def apply(self, kind: str, site: str, **arguments: Any) -> Tensor:
        """Run one operation: every method of an operation kind ends here, so a backend
        changes how all of them compute by overriding this one method.

        Args:
            kind (str): the operation's kind, a key of :data:`KINDS`.
            site (str): its site.
            **arguments: the kind's arguments (:attr:`OpKind.arguments`), by name.

        Returns:
            Tensor: the kind's function with the setting that applies at ``site``.
        """
        return KINDS[kind].function(self.setting(kind, site), **arguments)

    def compute(self, x: Tensor) -> Tensor:
        """``x`` in the dtype the explanation computes in (at least float32)."""
        return widened(x)

    def parameter(self, value: Tensor | None, x: Tensor) -> Tensor | None:
        """A parameter (weight, bias, skip) in the dtype of the operation's input ``x``."""
        return None if value is None else value.to(x.dtype)

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        """A linear or convolutional layer (or any covered module), called as a module."""
        return layer(x)

    def causal_conv(self, conv: nn.Module, x: Tensor) -> Tensor:
        """Causal depthwise ``nn.Conv1d`` (padded on both sides, cut to the input length)
        of ``(batch, seq, channels)`` inputs."""
        length = x.shape[1]
        return self.linear(conv, x.transpose(1, 2))[..., :length].transpose(1, 2)

    def silu(self, site: str, x: Tensor) -> Tensor:
        """SiLU, identity rule with ``silu``."""
        return self.apply("silu", site, x=x)

    def gate(self, site: str, y: Tensor, gate: Tensor) -> Tensor:
        """Product ``y * gate`` of two input-dependent branches, half rule with ``gate``."""
        return self.apply("gate", site, y=y, gate=gate)

    def rms_norm(
        self,
        site: str,
        x: Tensor,
        weight: Tensor | None,
        eps: float,
        group_size: int | None = None,
    ) -> Tensor:
        """RMSNorm over the last dimension or over groups of ``group_size`` channels,
        LN-rule with ``norm``."""
        weight = self.parameter(weight, x)
        return self.apply("rms_norm", site, x=x, weight=weight, eps=eps, group_size=group_size)

    def layer_norm(
        self, site: str, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        """LayerNorm, LN-rule with ``norm``."""
        weight, bias = self.parameter(weight, x), self.parameter(bias, x)
        return self.apply("layer_norm", site, x=x, weight=weight, bias=bias, eps=eps)

    def ssm(
        self,
        site: str,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        reverse: bool = False,
    ) -> Tensor:
        """Selective SSM of Mamba-1, SSM rule with ``ssm``.

        Args:
            site (str): the site.
            x (Tensor): ``(batch, seq, channels)`` scan input.
            dt (Tensor): ``(batch, seq, channels)`` time steps.
            A (Tensor): ``(channels, state)`` state matrix.
            B (Tensor): ``(batch, seq, state)``, or ``(batch, seq, groups, state)`` for
                consecutive groups of channels with their own ``B`` and ``C`` (the heads
                of Zamba's multi-head mixer).
            C (Tensor): the shape of ``B``.
            D (Tensor or None): ``(channels,)`` skip weight.
            reverse (bool, optional): the sequence is given in reversed order (the
                backward scan of a bidirectional mixer); only recorders use it.
                Default: False.

        Returns:
            Tensor: ``(batch, seq, channels)``.
        """
        A, D = A.to(x.dtype), self.parameter(D, x)
        return self.apply("ssm", site, x=x, dt=dt, A=A, B=B, C=C, D=D, reverse=reverse)

    def ssd(
        self,
        site: str,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        chunk_size: int,
    ) -> Tensor:
        """Multi-head SSM of Mamba-2 (state-space duality), SSM rule with ``ssm``.

        Args:
            site (str): the site.
            x (Tensor): ``(batch, seq, heads, head_dim)`` scan input.
            dt (Tensor): ``(batch, seq, heads)`` time steps.
            A (Tensor): ``(heads,)`` decay rates.
            B (Tensor): ``(batch, seq, groups, state)``.
            C (Tensor): ``(batch, seq, groups, state)``.
            D (Tensor or None): ``(heads,)`` or ``(heads, head_dim)`` skip weight.
            chunk_size (int): time steps per chunk of the scan.

        Returns:
            Tensor: ``(batch, seq, heads, head_dim)``.
        """
        A, D = A.to(x.dtype), self.parameter(D, x)
        return self.apply("ssd", site, x=x, dt=dt, A=A, B=B, C=C, D=D, chunk_size=chunk_size)

    def rg_lru(
        self,
        site: str,
        x: Tensor,
        input_weight: Tensor,
        input_bias: Tensor,
        recurrent_weight: Tensor,
        recurrent_bias: Tensor,
        rate: Tensor,
    ) -> Tensor:
        """Griffin's real-gated linear recurrent unit, SSM rule with ``ssm``.

        Args:
            site (str): the site.
            x (Tensor): ``(batch, seq, channels)`` the unit's input.
            input_weight (Tensor): ``(heads, width, width)`` input-gate weights.
            input_bias (Tensor): ``(heads, width)`` input-gate bias.
            recurrent_weight (Tensor): ``(heads, width, width)`` recurrence-gate weights.
            recurrent_bias (Tensor): ``(heads, width)`` recurrence-gate bias.
            rate (Tensor): ``(channels,)`` decay rates ``c * softplus(Lambda)``.

        Returns:
            Tensor: ``(batch, seq, channels)``.
        """
        parameters = dict(
            input_weight=input_weight,
            input_bias=input_bias,
            recurrent_weight=recurrent_weight,
            recurrent_bias=recurrent_bias,
            rate=rate,
        )
        parameters = {name: value.to(x.dtype) for name, value in parameters.items()}
        return self.apply("rglru", site, x=x, **parameters)

    def mamba3(
        self,
        site: str,
        x: Tensor,
        B: Tensor,
        C: Tensor,
        dt: Tensor,
        decay: Tensor,
        trap: Tensor,
        angle: Tensor,
        dt_bias: Tensor,
        B_bias: Tensor,
        C_bias: Tensor,
        D: Tensor,
        x_weight: Tensor | None,
        a_floor: float,
        pairwise: bool,
        chunk_size: int,
    ) -> Tensor:
        """The Mamba-3 recurrence (trapezoid rule, rotary state, SISO or MIMO), SSM rule
        with ``ssm``.

        Args:
            site (str): the site.
            x (Tensor): ``(batch, seq, heads, head_dim)`` values.
            B (Tensor): ``(batch, seq, ranks, groups, state)`` normalised input projection.
            C (Tensor): like ``B``, the output projection.
            dt (Tensor): ``(batch, seq, heads)`` raw time steps.
            decay (Tensor): ``(batch, seq, heads)`` raw decay rates.
            trap (Tensor): ``(batch, seq, heads)`` raw trapezoid weights.
            angle (Tensor): ``(batch, seq, angles)`` raw rotary angle rates.
            dt_bias (Tensor): ``(heads,)``.
            B_bias (Tensor): ``(heads, ranks, state)``.
            C_bias (Tensor): ``(heads, ranks, state)``.
            D (Tensor): ``(heads,)`` skip weights.
            x_weight (Tensor or None): ``(ranks, heads, head_dim)`` MIMO up-projection.
            a_floor (float): smallest decay rate.
            pairwise (bool): rotary pairs ``(2i, 2i+1)`` (SISO) or ``(i, i + state/2)``.
            chunk_size (int): time steps per chunk of the scan.

        Returns:
            Tensor: ``(batch, seq, ranks, heads, head_dim)``.
        """
        parameters = dict(dt_bias=dt_bias, B_bias=B_bias, C_bias=C_bias, D=D, x_weight=x_weight)
        parameters = {name: self.parameter(value, x) for name, value in parameters.items()}
        return self.apply(
            "mamba3",
            site,
            x=x,
            B=B,
            C=C,
            dt=dt,
            decay=decay,
            trap=trap,
            angle=angle,
            **parameters,
            a_floor=a_floor,
            pairwise=pairwise,
            chunk_size=chunk_size,
        )

    def add(self, site: str, a: Tensor, b: Tensor) -> Tensor:
        """Sum of two tensors on the relevance path (residual or branch sum)."""
        return self.apply("add", site, a=a, b=b)

    def scale(self, site: str, x: Tensor, factor: float | Tensor) -> Tensor:
        """Product with a constant: a number, or a tensor broadcast to ``x`` (a constant
        per channel, such as Falcon-H1's muP vector)."""
        return self.apply("scale", site, x=x, factor=factor)

    def time_step(
        self,
        site: str,
        raw: Tensor,
        bias: Tensor | None = None,
        low: float = 0.0,
        high: float = float("inf"),
    ) -> Tensor:
        """Time step ``clamp(softplus(raw + bias), low, high)``."""
        bias = self.parameter(bias, raw)
        return self.apply("time_step", site, raw=raw, bias=bias, low=low, high=high)

    def activation(
        self, site: str, x: Tensor, function: str, negative_slope: float = 0.01
    ) -> Tensor:
        """Elementwise activation (transformers name, e.g. ``"silu"``, ``"relu2"``,
        ``"tanh"``; ``negative_slope`` of ``"leaky_relu"``), identity rule with
        ``activation``."""
        return self.apply("activation", site, x=x, function=function, negative_slope=negative_slope)

    def attention(
        self,
        site: str,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None,
        scaling: float,
        causal: bool = False,
    ) -> Tensor:
        """Softmax attention, AttnLRP or CP-LRP with ``attention``.

        Args:
            site (str): the site.
            q (Tensor): ``(batch, heads, queries, dim)`` (position embedding applied).
            k (Tensor): ``(batch, kv_heads, keys, dim)``.
            v (Tensor): ``(batch, kv_heads, keys, dim_v)``.
            bias (Tensor or None): additive mask (see
                :func:`captum_mamba.adapters.blocks.attention_bias`).
            scaling (float): factor of the scores.
            causal (bool, optional): query ``i`` attends to keys ``j <= i`` only, on top
                of ``bias`` (a causal mask that is never materialised). Default: False.

        Returns:
            Tensor: ``(batch, heads, queries, dim_v)``.
        """
        return self.apply(
            "attention", site, q=q, k=k, v=v, bias=bias, scaling=scaling, causal=causal
        )

    def mlstm(
        self,
        site: str,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        igate: Tensor,
        fgate: Tensor,
        gate_cap: float | None,
        eps: float,
        chunk_size: int | None = 64,
    ) -> Tensor:
        """The mLSTM cell of xLSTM (matrix memory, exponential gating), governed by
        ``attention``: the gates and the normaliser constant, with the uniform rule on
        queries, keys and values (True) or constant queries and keys (``"cp_lrp"``).

        Args:
            site (str): the site.
            q (Tensor): ``(batch, heads, length, d_qk)`` queries (unscaled).
            k (Tensor): ``(batch, heads, length, d_qk)`` keys.
            v (Tensor): ``(batch, heads, length, d_v)`` values.
            igate (Tensor): ``(batch, heads, length)`` input-gate pre-activations.
            fgate (Tensor): ``(batch, heads, length)`` forget-gate pre-activations.
            gate_cap (float or None): soft cap ``cap tanh(x / cap)`` of both gates.
            eps (float): the normaliser's epsilon.
            chunk_size (int or None, optional): time steps per chunk of the scan; None
                for the sequential reference. Default: 64.

        Returns:
            Tensor: ``(batch, heads, length, d_v)``.
        """
        return self.apply(
            "mlstm",
            site,
            q=q,
            k=k,
            v=v,
            igate=igate,
            fgate=fgate,
            gate_cap=gate_cap,
            eps=eps,
            chunk_size=chunk_size,
        )

    def wkv(
        self, site: str, k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor
    ) -> Tensor:
        """RWKV-4's WKV recurrence (per-channel softmax attention with a decaying
        position bias), AttnLRP or CP-LRP with ``attention``.

        Args:
            site (str): the site.
            k (Tensor): ``(batch, seq, channels)`` keys.
            v (Tensor): ``(batch, seq, channels)`` values.
            time_decay (Tensor): ``(channels,)`` log decay rates.
            time_first (Tensor): ``(channels,)`` the bonus of the current position.

        Returns:
            Tensor: ``(batch, seq, channels)``.
        """
        time_decay, time_first = time_decay.to(k.dtype), time_first.to(k.dtype)
        return self.apply("wkv", site, k=k, v=v, time_decay=time_decay, time_first=time_first)

    def delta_rule(
        self,
        site: str,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        log_decay: Tensor,
        chunk_size: int | None = 32,
    ) -> Tensor:
        """Gated delta rule (Gated DeltaNet, Kimi Delta Attention), its rule chosen by
        ``attention``: decays, step sizes and transitions constant, with the uniform
        rule on the reads and writes (True) or constant keys and queries (``"cp_lrp"``).

        Args:
            site (str): the site.
            q (Tensor): ``(batch, heads, seq, dk)`` queries (normalised and scaled).
            k (Tensor): ``(batch, heads, seq, dk)`` keys.
            v (Tensor): ``(batch, heads, seq, dv)`` values.
            beta (Tensor): ``(batch, heads, seq)`` step sizes.
            log_decay (Tensor): ``(batch, heads, seq)`` or ``(batch, heads, seq, dk)``
                log decays.
            chunk_size (int or None, optional): time steps per chunk, None for the
                sequential loop. Default: 32.

        Returns:
            Tensor: ``(batch, heads, seq, dv)``.
        """
        return self.apply(
            "delta_rule",
            site,
            q=q,
            k=k,
            v=v,
            beta=beta,
            log_decay=log_decay,
            chunk_size=chunk_size,
        )

    def rotary(self, site: str, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary position embedding of ``(batch, heads, length, dim)`` queries or keys."""
        return self.apply("rotary", site, x=x, cos=cos, sin=sin)

    def grouped_linear(
        self, site: str, x: Tensor, weight: Tensor, group_sizes: Sequence[int]
    ) -> Tensor:
        """Rows of ``x`` grouped by expert through ``weight[expert]`` ``(experts, out, in)``,
        with the linear rule."""
        weight = self.parameter(weight, x)
        return self.apply("grouped_linear", site, x=x, weight=weight, group_sizes=group_sizes)

    def projection(self, site: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``x weight^T + bias`` with a weight that is not a linear layer of its own (the
        packed input projection of ``nn.MultiheadAttention``), with the linear rule."""
        weight, bias = self.parameter(weight, x), self.parameter(bias, x)
        return self.apply("projection", site, x=x, weight=weight, bias=bias)

    def routing(self, site: str, x: Tensor, select: Callable[[Tensor], Tensor]) -> Tensor:
        """Router weights ``select(x)`` ``(tokens, experts)`` of a mixture of experts, zero
        for the experts a token is not sent to. No rule: they feed the mixture, whose
        router rule treats them as constants."""
        return self.apply("routing", site, x=x, select=select)

    def mixture(
        self, site: str, weights: Tensor, values: Tensor, index: Tensor, size: int
    ) -> Tensor:
        """Weighted sum of expert outputs per token, router rule with ``router``.

        Args:
            site (str): the site.
            weights (Tensor): ``(pairs,)`` router weight of each (token, expert) pair.
            values (Tensor): ``(pairs, hidden)`` expert outputs.
            index (Tensor): ``(pairs,)`` token of each pair.
            size (int): number of tokens.

        Returns:
            Tensor: ``(size, hidden)``.
        """
        return self.apply("mixture", site, weights=weights, values=values, index=index, size=size)


class Backend:
    """How the handled modules of a model compute while rules are applied.

    The base backend computes every operation with the rule functions
    (:class:`BlockOps`). Subclasses change the ops class or wrap each call.
    """

    ops_class: type[BlockOps] = BlockOps

    def ops(self, module: nn.Module, path: str, site_rules: Mapping[str, MambaRules]) -> BlockOps:
        """The ops object of one handled module."""
        return self.ops_class(module, path, site_rules)

    def call(self, entry: Any, ops: BlockOps, *args: Any, **kwargs: Any) -> Any:
        """Run a handled module's forward (a plan entry) with its ops object."""
        return entry.handler.forward(ops, entry.module, *args, **kwargs)
