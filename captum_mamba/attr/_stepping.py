"""Attribution classes: running a model token by token with its recurrent state.

:class:`StepBackend` is a backend of :mod:`captum_mamba.adapters.backend` that keeps,
for every causal convolution and every scan of the model, the state its next call
continues from: the last ``kernel - 1`` inputs of the convolution and the final state of
the scan. A forward pass of the prompt fills the states; each following forward pass of
one token continues them, so generating ``n`` tokens costs one forward pass of the
prompt and ``n`` forward passes of one token, instead of ``n`` forward passes of the
growing prefix. The block forwards are the package's handler forwards, the same code as
for explanations; only the three operations that mix time steps are continued here.

It refuses (``NotImplementedError``) models whose handlers use operations it cannot
continue: scans in reverse order (bidirectional mixers) and operations of unknown kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import Backend, BlockOps, PlanEntry
from captum_mamba.adapters.backend import KINDS
from captum_mamba.ops.selective_scan import selective_scan_with_state
from captum_mamba.ops.ssd_scan import ssd_scan_with_state
from captum_mamba.rules import MambaRules

#: Site kinds that generation token by token runs: those that act on each position alone,
#: and those that mix positions and are continued (:data:`CONTINUED`).
STEPPABLE_KINDS = frozenset(kind.name for kind in KINDS.values() if kind.steppable)


def _continue_ssm(state: Tensor | None, arguments: dict[str, Any]) -> tuple[Tensor, Tensor]:
    x, D = arguments["x"], arguments["D"]
    scan = (arguments[name] for name in ("dt", "A", "B", "C"))
    y, state = selective_scan_with_state(x, *scan, state)
    return (y if D is None else y + x * D), state


def _continue_ssd(state: Tensor | None, arguments: dict[str, Any]) -> tuple[Tensor, Tensor]:
    x, D = arguments["x"], arguments["D"]
    scan = (arguments[name] for name in ("dt", "A", "B", "C", "chunk_size"))
    y, state = ssd_scan_with_state(x, *scan, state)
    return (y if D is None else y + x * (D[:, None] if D.dim() == 1 else D)), state


#: Steppable kinds that mix positions -> ``continued(state, arguments)``, the output of
#: the operation continued from ``state`` (None at the first call) and its final state.
CONTINUED: dict[str, Callable[[Tensor | None, dict[str, Any]], tuple[Tensor, Tensor]]] = {
    "ssm": _continue_ssm,
    "ssd": _continue_ssd,
}


class StepOps(BlockOps):
    """Block operations that continue the convolutions and scans of the previous call.

    The states live in the backend (:attr:`StepBackend.states`), keyed by module path
    and site.
    """

    states: dict[tuple[str, str], Tensor]

    def causal_conv(self, conv: nn.Module, x: Tensor) -> Tensor:
        """Causal conv of ``x`` after the inputs kept from the previous call."""
        kernel = conv.weight.shape[-1]
        key = (self.path, f"conv:{id(conv)}")
        previous = self.states.get(key)
        if previous is None:
            previous = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
        full = torch.cat([previous, x], dim=1)
        self.states[key] = full[:, full.shape[1] - (kernel - 1) :]
        return super().causal_conv(conv, full)[:, previous.shape[1] :]

    def apply(self, kind: str, site: str, **arguments: Any) -> Tensor:
        """Scans continue from the state of the previous call; other operations act on
        each position alone."""
        continued = CONTINUED.get(kind)
        if continued is None:
            return super().apply(kind, site, **arguments)
        self.rules(site)
        if arguments.get("reverse"):
            raise NotImplementedError(
                f"{self.path}.{site} scans in reverse (a bidirectional mixer), which cannot "
                "be continued token by token; pass target_ids instead of generating"
            )
        key = (self.path, site)
        y, self.states[key] = continued(self.states.get(key), arguments)
        return y


class StepBackend(Backend):
    """Backend whose forward passes continue the previous one (see the module docstring).

    Attributes:
        states (dict): ``(module path, site) -> state`` of every convolution and scan.
    """

    ops_class = StepOps

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], Tensor] = {}

    def ops(self, module: nn.Module, path: str, site_rules: Mapping[str, MambaRules]) -> BlockOps:
        ops = super().ops(module, path, site_rules)
        ops.states = self.states
        return ops

    def call(self, entry: PlanEntry, ops: BlockOps, *args: Any, **kwargs: Any) -> Any:
        unknown = sorted(set(entry.handler.sites.values()) - STEPPABLE_KINDS)
        if unknown:
            raise NotImplementedError(
                f"{entry.path or '<model>'} ({type(entry.module).__name__}) uses operations "
                f"of kind {unknown}, which cannot be continued token by token; pass "
                "target_ids instead of generating"
            )
        return super().call(entry, ops, *args, **kwargs)
