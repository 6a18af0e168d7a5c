"""Vision: patch-level MambaLRP heatmaps of a :class:`~captum_mamba.adapters.vim.VisionMamba`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from captum_mamba.adapters.vim import VisionMamba
from captum_mamba.attr import MambaLRP
from captum_mamba.attr.targets import TargetType
from captum_mamba.rules import MambaRules


@dataclass(frozen=True)
class PatchExplanation:
    """MambaLRP relevance of the token sequence of a Vision Mamba.

    The token sequence is ``content + position``; its relevance is split into the
    two parts (the sum is linear, so each part keeps its Gradient x Input share) and
    into patches and the class token:
    ``heatmap.sum((1, 2)) + position.sum((1, 2)) + cls_relevance + delta`` is the
    explained logit.

    Args:
        heatmap (Tensor): ``(batch, grid, grid)`` relevance of the content of each
            patch token (its pixels' projection), in image layout.
        position (Tensor): ``(batch, grid, grid)`` relevance of the position embedding
            of each patch token.
        cls_relevance (Tensor): ``(batch,)`` relevance of the class token (its learned
            embedding and position embedding).
        delta (Tensor): ``(batch,)`` explained logit minus the sum of all relevances;
            zero up to rounding when the blocks and the head have no biases.
    """

    heatmap: Tensor
    position: Tensor
    cls_relevance: Tensor
    delta: Tensor


def explain_patches(
    model: VisionMamba,
    images: Tensor,
    target: TargetType,
    rules: MambaRules | None = None,
) -> PatchExplanation:
    """Patch heatmaps of ``model``'s logit ``target`` for ``images``.

    Args:
        model (VisionMamba): the classifier. Build it with ``patch_bias=False`` for
            heatmaps that depend on the pixels only.
        images (Tensor): ``(batch, channels, size, size)`` in the model's dtype.
        target (int, Tensor or list): class to explain, one for all images or one
            per image (Captum convention).
        rules (MambaRules, optional): rules to apply. Default: MambaLRP.

    Returns:
        PatchExplanation: patch heatmaps, position and class-token relevance, and the
        conservation delta.

    Examples::

        >>> model = VisionMamba(patch_bias=False).double().eval()
        >>> result = explain_patches(model, images.double(), target=labels)
        >>> result.heatmap.shape
        torch.Size([8, 4, 4])
    """
    lrp = MambaLRP(
        model,
        forward_func=lambda content, position: model.forward_tokens(content + position),
        rules=rules,
    )
    content, position = (part.detach() for part in model.embed_parts(images))
    (content_relevance, position_relevance), delta = lrp.attribute(
        (content, position), target=target, return_convergence_delta=True
    )
    heatmap, cls_content = model.split_tokens(content_relevance.sum(-1))
    position_map, cls_position = model.split_tokens(position_relevance.sum(-1))
    return PatchExplanation(heatmap, position_map, cls_content + cls_position, delta)
