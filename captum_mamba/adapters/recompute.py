"""Architecture adapters: a backend that recomputes each residual layer in the backward pass.

:class:`RecomputeBackend` runs every module whose handler has the role ``"block"`` (a
residual layer) under non-reentrant activation checkpointing
(:func:`torch.utils.checkpoint.checkpoint`): the forward pass keeps only the inputs of
each layer, and the backward pass recomputes one layer at a time, with the same rules,
just before it differentiates it. The relevance is bit-for-bit the same as without
recomputation (the recomputed values are the same operations on the same inputs); the
memory of a backward pass drops from the activations of every layer to the layer inputs
plus the activations of one layer.

It works for every architecture alike, because the blocks are found through their
handlers' role, not through model-specific code. Nested blocks are recomputed as part
of the outermost one.

The backward pass must run while the rules are still applied (inside the ``with
rules_applied(...)`` block), because the recomputation calls the modules' rule
forwards again; a backward pass after the block raises a ``RuntimeError`` saying so.
Module hooks fire again during the recomputation; :func:`recomputing` tells them apart.
A hook that replaces a tensor must replace it in the recomputation too (e.g. by a fresh
tensor that requires grad), so that the recomputation saves the tensors the forward pass
saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from captum_mamba.adapters.backend import Backend, BlockOps
from captum_mamba.adapters.base import PlanEntry, RuleForward

_INSIDE_BLOCK: ContextVar[bool] = ContextVar("captum_mamba_inside_block", default=False)
_RECOMPUTING: ContextVar[bool] = ContextVar("captum_mamba_recomputing", default=False)


def recomputing() -> bool:
    """True while a residual layer is being recomputed for the backward pass.

    Forward hooks that record activations (as :class:`~captum_mamba.LayerMambaLRP`
    does) use it to ignore the second run of their module.

    Returns:
        bool: whether the calling code runs inside a recomputation.
    """
    return _RECOMPUTING.get()


@contextmanager
def _flag(var: ContextVar[bool]) -> Iterator[None]:
    token = var.set(True)
    try:
        yield
    finally:
        var.reset(token)


class RecomputeBackend(Backend):
    """Backend that keeps only the inputs of each residual layer and recomputes the
    layer in the backward pass (activation checkpointing per block); the operations
    are the rule functions, as in :class:`Backend`.

    Examples::

        >>> with rules_applied(model, MambaRules(), RecomputeBackend()):
        ...     logit = model(inputs_embeds=embeds).logits[0, -1, token]
        ...     (grad,) = torch.autograd.grad(logit, embeds)  # inside the block
    """

    def call(self, entry: PlanEntry, ops: BlockOps, *args: Any, **kwargs: Any) -> Any:
        """Run a residual layer under checkpointing, any other module directly."""
        if not entry.block or _INSIDE_BLOCK.get() or not torch.is_grad_enabled():
            return super().call(entry, ops, *args, **kwargs)
        runs = [0]
        compute = super().call

        def run(*args: Any, **kwargs: Any) -> Any:
            runs[0] += 1
            if runs[0] == 1:
                with _flag(_INSIDE_BLOCK):
                    return compute(entry, ops, *args, **kwargs)
            _check_still_applied(entry)
            with _flag(_INSIDE_BLOCK), _flag(_RECOMPUTING):
                return compute(entry, ops, *args, **kwargs)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)


def _check_still_applied(entry: PlanEntry) -> None:
    forward = vars(entry.module).get("forward")
    if not (isinstance(forward, RuleForward) and any(b is entry for b in forward.bound)):
        raise RuntimeError(
            f"{entry.path or '<model>'} is recomputed for a backward pass after its rules "
            "were removed; run the backward pass inside the rules_applied(...) block "
            "when using RecomputeBackend"
        )
