"""Architecture adapters: the gated selective-SSM branch shared by Mamba-1-style mixers.

transformers' ``MambaMixer`` and ``FalconMambaMixer``, mamba-ssm's ``Mamba`` (both
directions of Vim's variant) and this package's Vision Mamba compute the same branch
from differently named parameters: causal conv, SiLU, input-dependent coefficients,
selective scan, and the gate ``y * silu(z)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from captum_mamba.rules import MambaRules, gated_product, selective_ssm, silu

#: Maps the scan input ``x`` to ``(dt, A, B, C)`` of the selective scan.
Coefficients = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def mask_padding(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero the padded positions of ``x`` ``(batch, seq, ...)``, as transformers does."""
    if attention_mask is None:
        return x
    return x * attention_mask[:, :, None].to(x.dtype)


def gated_selective_branch(
    rules: MambaRules,
    x: Tensor,
    z: Tensor,
    conv: nn.Module,
    coefficients: Coefficients,
    D: Tensor,
    attention_mask: Tensor | None = None,
) -> Tensor:
    r"""``scan(silu(conv(x))) * silu(z)`` with the SiLU, SSM and half rules.

    Args:
        rules (MambaRules): the rules to apply.
        x (Tensor): ``(batch, seq, channels)`` branch input (before the causal conv).
        z (Tensor): ``(batch, seq, channels)`` gate input.
        conv (nn.Module): causal depthwise ``nn.Conv1d`` (padded, cut to ``seq``).
        coefficients (Callable): maps the scan input to ``(dt, A, B, C)``.
        D (Tensor): ``(channels,)`` skip weight.
        attention_mask (Tensor, optional): ``(batch, seq)`` padding mask applied to
            the scan input. Default: None.

    Returns:
        Tensor: ``(batch, seq, channels)`` gated SSM output.
    """
    length = x.shape[1]
    x = conv(x.transpose(1, 2))[..., :length].transpose(1, 2)
    x = mask_padding(silu(x, rules.silu), attention_mask)
    dt, A, B, C = coefficients(x)
    y = selective_ssm(x, dt, A, B, C, D.to(x.dtype), rules.ssm)
    return gated_product(y, silu(z, rules.silu), rules.gate)
