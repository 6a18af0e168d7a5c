"""Baselines: random token relevance, the floor every method should beat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor

from captum_mamba.attr.targets import TargetType
from captum_mamba.baselines.rollout import check_token_embeddings


class RandomAttribution(Attribution):
    r"""Independent uniform ``[0, 1)`` scores per token, from a seeded generator.

    Successive calls continue the generator's stream, so a run over a data set is
    reproducible for a fixed seed.

    Args:
        forward_func (Callable, optional): unused; accepted for Captum's API.
            Default: None.
        seed (int, optional): generator seed. Default: 0.

    Examples::

        >>> scores = RandomAttribution(seed=1).attribute(embeds)   # (batch, seq)
    """

    def __init__(self, forward_func: Callable[..., Tensor] | None = None, seed: int = 0) -> None:
        super().__init__(forward_func or (lambda *args: None))
        self.generator = torch.Generator().manual_seed(seed)

    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        r"""Random token scores.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            target (optional): ignored.
            additional_forward_args (optional): ignored.

        Returns:
            Tensor: ``(batch, seq)`` scores in the dtype and on the device of ``inputs``.
        """
        check_token_embeddings(inputs)
        scores = torch.rand(inputs.shape[:2], generator=self.generator, dtype=torch.float64)
        return scores.to(dtype=inputs.dtype, device=inputs.device)
