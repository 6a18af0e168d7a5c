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
  scan, from which the hidden-attention baselines are computed.

Operations name their place in the module with a *site* string (e.g. ``"conv_act"``);
the site ``""`` is the module itself. Each site is declared with its kind in the
module's :class:`~captum_mamba.adapters.base.ModuleHandler`. Linear and convolutional
layers are not sites: they are called as modules (``ops.linear(module.in_proj, x)``), so
that their rule forward, user hooks and layer attributions apply.

Only operations whose backward is a routing of values (slicing, reshaping,
concatenation, flips, multiplication by a 0/1 padding mask) may be written outside
``ops``: Captum's LRP passes relevance through them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.rules import MambaRules
from captum_mamba.rules import functional as R

#: Op kinds of sites, and the rule setting that switches each (None: no MambaLRP rule).
SITE_KINDS: Mapping[str, str | None] = {
    "norm": "norm",
    "silu": "silu",
    "gate": "gate",
    "ssm": "ssm",
    "ssd": "ssm",
    "activation": "activation",
    "attention": "attention",
    "mixture": "router",
    "add": None,
    "scale": None,
    "time_step": None,
    "rotary": None,
    "routing": None,
    "grouped_linear": None,
    "constant": None,
}


def widened(x: Tensor) -> Tensor:
    """``x`` in at least float32: half-precision models are explained in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _param(weight: Tensor | None, x: Tensor) -> Tensor | None:
    return None if weight is None else weight.to(x.dtype)


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

    def compute(self, x: Tensor) -> Tensor:
        """``x`` in the dtype the explanation computes in (at least float32)."""
        return widened(x)

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
        return R.silu(x, self.rules(site).silu)

    def gate(self, site: str, y: Tensor, gate: Tensor) -> Tensor:
        """Product ``y * gate`` of two input-dependent branches, half rule with ``gate``."""
        return R.gated_product(y, gate, self.rules(site).gate)

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
        ln_rule = self.rules(site).norm
        if group_size is None or group_size == x.shape[-1]:
            return R.rms_norm(x, _param(weight, x), eps, ln_rule)
        groups = x.unflatten(-1, (-1, group_size))
        out = R.rms_norm(groups, None, eps, ln_rule).flatten(-2)
        return out if weight is None else _param(weight, x) * out

    def layer_norm(
        self, site: str, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        """LayerNorm, LN-rule with ``norm``."""
        return R.layer_norm(x, _param(weight, x), _param(bias, x), eps, self.rules(site).norm)

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
        return R.selective_ssm(x, dt, A.to(x.dtype), B, C, _param(D, x), self.rules(site).ssm)

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
        return R.multihead_ssm(
            x, dt, A.to(x.dtype), B, C, _param(D, x), self.rules(site).ssm, chunk_size
        )

    def add(self, site: str, a: Tensor, b: Tensor) -> Tensor:
        """Sum of two tensors on the relevance path (residual or branch sum)."""
        self.rules(site)
        return R.add(a, b)

    def scale(self, site: str, x: Tensor, factor: float | Tensor) -> Tensor:
        """Product with a constant: a number, or a tensor broadcast to ``x`` (a constant
        per channel, such as Falcon-H1's muP vector)."""
        self.rules(site)
        return R.scale(x, factor)

    def time_step(
        self,
        site: str,
        raw: Tensor,
        bias: Tensor | None = None,
        low: float = 0.0,
        high: float = float("inf"),
    ) -> Tensor:
        """Time step ``clamp(softplus(raw + bias), low, high)``."""
        self.rules(site)
        return R.time_step(raw, _param(bias, raw), low, high)

    def activation(self, site: str, x: Tensor, function: str) -> Tensor:
        """Elementwise activation of an MLP (transformers name, e.g. ``"silu"``,
        ``"relu2"``), identity rule with ``activation``."""
        return R.activation(x, function, self.rules(site).activation)

    def attention(
        self, site: str, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scaling: float
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

        Returns:
            Tensor: ``(batch, heads, queries, dim_v)``.
        """
        setting = self.rules(site).attention
        return R.attention(
            q,
            k,
            v,
            bias,
            scaling,
            uniform_rule=setting is True,
            constant_weights=setting == "cp_lrp",
        )

    def rotary(self, site: str, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotary position embedding of ``(batch, heads, length, dim)`` queries or keys."""
        self.rules(site)
        return R.rotary(x, cos, sin)

    def grouped_linear(
        self, site: str, x: Tensor, weight: Tensor, group_sizes: Sequence[int]
    ) -> Tensor:
        """Rows of ``x`` grouped by expert through ``weight[expert]`` ``(experts, out, in)``,
        with the linear rule."""
        return R.grouped_linear(x, _param(weight, x), group_sizes, self.rules(site).linear)

    def routing(self, site: str, x: Tensor, select: Callable[[Tensor], Tensor]) -> Tensor:
        """Router weights ``select(x)`` ``(tokens, experts)`` of a mixture of experts, zero
        for the experts a token is not sent to. No rule: they feed the mixture, whose
        router rule treats them as constants."""
        self.rules(site)
        return select(x)

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
        return R.mixture(weights, values, index, size, self.rules(site).router)


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
