"""Attribution classes: relevance of continuous ``(batch, time, channels)`` inputs per
time step."""

from __future__ import annotations

from torch import Tensor

from captum_mamba.attr.targets import AttributionInputError


def time_step_relevance(relevance: Tensor, mask: Tensor | None = None) -> Tensor:
    """Relevance per time step: the sum over the channels (and any further dimension) of
    each time step, which keeps conservation (the steps sum to the same total).

    Args:
        relevance (Tensor): ``(batch, time, channels, ...)`` relevance, e.g. of
            :class:`~captum_mamba.MambaLRP` on ``(batch, time, channels)`` signals.
        mask (Tensor, optional): ``(batch, time)`` 0/1 mask of a padded batch; padded
            steps get exactly zero. Default: None.

    Returns:
        Tensor: ``(batch, time)``.

    Raises:
        AttributionInputError: if ``relevance`` has fewer than two dimensions or the mask
            does not have its ``(batch, time)`` shape.

    Examples::

        >>> relevance = MambaLRP(model).attribute(signals, target=label)
        >>> per_step = time_step_relevance(relevance, mask)     # (batch, time)
    """
    if relevance.dim() < 2:
        raise AttributionInputError(
            f"relevance has shape {tuple(relevance.shape)}; expected (batch, time, ...)"
        )
    steps = relevance.reshape(*relevance.shape[:2], -1).sum(-1)
    if mask is None:
        return steps
    if tuple(mask.shape) != tuple(steps.shape):
        raise AttributionInputError(
            f"mask has shape {tuple(mask.shape)} but the relevance has (batch, time) = "
            f"{tuple(steps.shape)}"
        )
    return steps * (mask != 0).to(steps.dtype)
