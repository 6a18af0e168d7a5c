"""Vision: a synthetic image task and a training loop that fits a small model in seconds.

Each image is Gaussian noise with one bright square, either in the left or in the
right half; the label is the half. The square's pixels are returned as a mask, so
that explanations can be checked against the evidence the model must use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SquareImages:
    """A labelled set of square images.

    Args:
        images (Tensor): ``(n, 1, size, size)`` float32 images.
        labels (Tensor): ``(n,)`` class ids, 0 (square on the left) or 1 (right).
        masks (Tensor): ``(n, size, size)`` booleans, True on the square's pixels.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor


def square_images(
    num_images: int,
    image_size: int = 16,
    square_size: int = 4,
    noise: float = 0.2,
    seed: int = 0,
) -> SquareImages:
    """Noise images with a bright square in the left (label 0) or right (label 1) half.

    Args:
        num_images (int): number of images.
        image_size (int, optional): height and width, even. Default: 16.
        square_size (int, optional): side of the square, at most ``image_size // 2``.
            Default: 4.
        noise (float, optional): standard deviation of the background noise; the
            square adds 1. Default: 0.2.
        seed (int, optional): random seed. Default: 0.

    Returns:
        SquareImages: images, labels and square masks.

    Examples::

        >>> data = square_images(256, seed=1)
        >>> data.images.shape, data.labels[:4]
    """
    half = image_size // 2
    if image_size % 2 or not 0 < square_size <= half:
        raise ValueError(
            f"need an even image_size and 0 < square_size <= image_size // 2, got "
            f"{image_size} and {square_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (num_images,), generator=generator)
    rows = torch.randint(0, image_size - square_size + 1, (num_images,), generator=generator)
    cols = torch.randint(0, half - square_size + 1, (num_images,), generator=generator)
    cols = cols + labels * half
    grid = torch.arange(image_size)
    in_rows = (grid >= rows[:, None]) & (grid < rows[:, None] + square_size)
    in_cols = (grid >= cols[:, None]) & (grid < cols[:, None] + square_size)
    masks = in_rows[:, :, None] & in_cols[:, None, :]
    images = noise * torch.randn(num_images, 1, image_size, image_size, generator=generator)
    images = images + masks[:, None].float()
    return SquareImages(images, labels, masks)


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` with Adam and cross-entropy on random mini-batches.

    Args:
        model (nn.Module): classifier ``images -> (batch, classes)`` logits.
        images (Tensor): ``(n, ...)`` training inputs.
        labels (Tensor): ``(n,)`` class ids.
        steps (int, optional): optimisation steps. Default: 150.
        batch_size (int, optional): examples per step. Default: 64.
        lr (float, optional): Adam learning rate. Default: ``3e-3``.
        seed (int, optional): seed of the mini-batch sampling. Default: 0.

    Returns:
        list of float: the training loss of every step. The model is left in eval mode.

    Examples::

        >>> data = square_images(512)
        >>> model = VisionMamba()
        >>> losses = train_classifier(model, data.images, data.labels)
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` whose arg-max logit is the label."""
    return (model(images).argmax(-1) == labels).float().mean().item()
