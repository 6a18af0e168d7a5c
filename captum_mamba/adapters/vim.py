"""Architecture adapter for the bidirectional (Vision) Mamba modules of
:mod:`captum_mamba.vision.vim`, in :class:`~captum_mamba.vision.vim.VisionMamba` or in
any user network built from them.

Rule assignment:

- :class:`~captum_mamba.vision.vim.RMSNorm`: LN-rule.
- :class:`~captum_mamba.vision.vim.SSMBranch` (one scan direction): identity rule on
  both SiLUs (after the causal conv and on the gate ``z``), SSM rule on the selective
  scan, half rule on ``y * silu(z)``. The forward and backward branches of a
  :class:`~captum_mamba.vision.vim.BiMambaMixer` each get these rules; the shared input
  projection, the flips, the sum of the two directions and the output projection are
  linear and propagate relevance as they are.
- :class:`~captum_mamba.vision.vim.PatchEmbed`: the linear rule of the explanation
  (LRP-0, epsilon or gamma) on its patch convolution.
"""

from __future__ import annotations

from torch import Tensor

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.selective_branch import gated_selective_branch
from captum_mamba.rules import MambaRules, rms_norm
from captum_mamba.vision.vim import PatchEmbed, RMSNorm, SSMBranch


def norm_forward(norm: RMSNorm, rules: MambaRules, x: Tensor) -> Tensor:
    """RMSNorm with the LN-rule."""
    return rms_norm(x, norm.weight.to(x.dtype), norm.eps, rules.norm)


def branch_forward(branch: SSMBranch, rules: MambaRules, x: Tensor, z: Tensor) -> Tensor:
    """One scan direction with the SiLU, SSM and half rules."""
    return gated_selective_branch(rules, x, z, branch.conv1d, branch.coefficients, branch.D)


def patch_embed_forward(embed: PatchEmbed, rules: MambaRules, images: Tensor) -> Tensor:
    """Patch projection with the linear rule."""
    conv = embed.proj
    tokens = rules.linear.apply(conv._conv_forward, images, conv.weight, conv.bias)
    return tokens.flatten(2).transpose(1, 2)


VISION_MAMBA = register_adapter(
    ArchitectureAdapter(
        name="captum-mamba Vision Mamba",
        models=("VisionMamba", "models containing BiMambaMixer/SSMBranch"),
        blocks=(SSMBranch,),
        forwards={
            RMSNorm: norm_forward,
            SSMBranch: branch_forward,
            PatchEmbed: patch_embed_forward,
        },
    )
)
