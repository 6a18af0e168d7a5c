"""Vision: a small Vision Mamba (bidirectional Mamba over image patches), a synthetic
image task to train it in seconds, and patch-level MambaLRP heatmaps.

:mod:`captum_mamba.vision.explain` (``explain_patches``) is imported on its own:
``from captum_mamba.vision.explain import explain_patches``.
"""

from captum_mamba.adapters.vim import (
    BiMambaMixer,
    PatchEmbed,
    RMSNorm,
    SSMBranch,
    VimBlock,
    VisionMamba,
)
from captum_mamba.vision.synthetic import SquareImages, accuracy, square_images, train_classifier

__all__ = [
    "BiMambaMixer",
    "PatchEmbed",
    "RMSNorm",
    "SSMBranch",
    "SquareImages",
    "VimBlock",
    "VisionMamba",
    "accuracy",
    "square_images",
    "train_classifier",
]
