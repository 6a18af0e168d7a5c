"""Architecture adapter and model: a small Vision Mamba (Vim) built from bidirectional
Mamba-1 blocks, whose forwards are written once, in the operations of the adapters.

The architecture follows Vim (Zhu et al., 2024) with its "bimamba v2" mixer:

- :class:`PatchEmbed` cuts the image into non-overlapping patches and projects each
  to ``embed_dim`` with a strided convolution.
- A learned class token is inserted at a configurable position of the patch sequence
  (Vim puts it in the middle) and learned position embeddings are added.
- Every :class:`VimBlock` is ``x + BiMambaMixer(RMSNorm(x))``. The mixer shares one
  input projection between two :class:`SSMBranch` scans: one over the sequence in its
  order and one over the reversed sequence, each with its own causal convolution,
  projections and SSM parameters. The two outputs are added (or averaged) before the
  output projection.
- The final RMSNorm of the class token feeds a linear head.

Each module's forward is its handler's forward with every rule off
(:func:`~captum_mamba.adapters.base.plain_forward`); under
:func:`~captum_mamba.adapters.rules_applied` the same code runs with the MambaLRP rules:
LN-rule on :class:`RMSNorm`; identity rule on both SiLUs, SSM rule on the scan and half
rule on the gate of each :class:`SSMBranch`; the sum of the two directions, the
averaging, the residual and the position embedding as sums (LRP-0); the linear rule of
the explanation on every linear and convolutional layer. :class:`PatchEmbed` only routes
its convolution's output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import (
    ArchitectureAdapter,
    ModuleHandler,
    plain_forward,
    register_adapter,
)
from captum_mamba.adapters.blocks import (
    RESIDUAL_SITES,
    SELECTIVE_SITES,
    residual_block,
    selective_branch,
    selective_params,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "captum-mamba Vision Mamba",
    ("VisionMamba", "models containing VimBlock/BiMambaMixer/SSMBranch"),
    (),
)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned scale.

    Args:
        dim (int): size of the normalised dimension.
        eps (float, optional): added to the mean square. Default: ``1e-5``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return plain_forward(RMS_NORM, self, x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches of an image, linearly projected to tokens.

    Args:
        image_size (int): height and width of the (square) input images.
        patch_size (int): height and width of a patch; must divide ``image_size``.
        in_channels (int): image channels.
        embed_dim (int): token width.
        bias (bool, optional): bias of the projection. Default: True.
    """

    def __init__(
        self, image_size: int, patch_size: int, in_channels: int, embed_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
        self.image_size = image_size
        self.grid_size = image_size // patch_size
        self.proj = nn.Conv2d(
            in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias
        )

    @property
    def num_patches(self) -> int:
        """Number of patches (tokens) per image, ``grid_size ** 2``."""
        return self.grid_size**2

    def forward(self, images: Tensor) -> Tensor:
        """Tokens ``(batch, num_patches, embed_dim)`` in row-major patch order.

        Raises:
            ValueError: if ``images`` is not ``(batch, in_channels, image_size,
                image_size)``, or wider than the model's dtype (narrower images are cast
                up without loss).
        """
        expected = (self.proj.in_channels, self.image_size, self.image_size)
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1:] != expected:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            wanted = ", ".join(map(str, expected))
            raise ValueError(f"images have shape {shape}; this model takes (batch, {wanted})")
        dtype = self.proj.weight.dtype
        if images.dtype != dtype:
            if not images.is_floating_point() or torch.promote_types(images.dtype, dtype) != dtype:
                raise ValueError(
                    f"images have dtype {images.dtype} but the model computes in {dtype}; "
                    f"pass images.to({dtype}) or convert the model"
                )
            images = images.to(dtype)
        return self.proj(images).flatten(2).transpose(1, 2)


class SSMBranch(nn.Module):
    """One scan direction of a bidirectional Mamba mixer.

    Computes ``(SSM(silu(conv(x))) + D x) * silu(z)``: a causal depthwise convolution,
    SiLU, the selective SSM of Mamba-1 with skip term ``D`` and the SiLU gate, over the
    sequence in its order, or with ``reverse`` over the reversed sequence (the result is
    flipped back).

    Args:
        d_inner (int): channels of the branch.
        d_state (int): SSM state size per channel.
        d_conv (int): width of the causal convolution.
        dt_rank (int): rank of the time-step projection.
        conv_bias (bool): give the convolution a bias.
        reverse (bool, optional): scan from the last position to the first.
            Default: False.
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        conv_bias: bool,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        self.dt_rank = dt_rank
        self.d_state = d_state
        self.reverse = reverse
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # S4D-real initialisation A[d, n] = -(n + 1) and time steps in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Gated SSM output ``(batch, length, d_inner)`` of inputs ``x`` and gate ``z``."""
        return plain_forward(SSM_BRANCH, self, x, z)


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer (Vim's "bimamba v2").

    ``out_proj(branch_f(x, z) + branch_b(x, z))`` (``branch_b`` scans backwards) with
    ``x, z = in_proj(u)`` split in two; with ``divide_output`` the sum is halved.

    Args:
        d_model (int): token width.
        d_state (int, optional): SSM state size. Default: 8.
        d_conv (int, optional): width of the causal convolutions. Default: 4.
        expand (int, optional): inner width is ``expand * d_model``. Default: 2.
        dt_rank (int, optional): rank of the time-step projection. Default:
            ``ceil(d_model / 16)``.
        divide_output (bool, optional): average instead of add the two directions.
            Default: False.
        conv_bias (bool, optional): biases in the causal convolutions. Default: True.
        bias (bool, optional): biases in the input and output projections.
            Default: False.

    Examples::

        >>> mixer = BiMambaMixer(d_model=16)
        >>> mixer(torch.randn(2, 17, 16)).shape
        torch.Size([2, 17, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 8,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        divide_output: bool = False,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.divide_output = divide_output
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.forward_branch = SSMBranch(d_inner, d_state, d_conv, dt_rank, conv_bias)
        self.backward_branch = SSMBranch(d_inner, d_state, d_conv, dt_rank, conv_bias, reverse=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return plain_forward(BI_MAMBA_MIXER, self, hidden_states)


class VimBlock(nn.Module):
    """Pre-norm residual block ``x + BiMambaMixer(RMSNorm(x))``.

    Args:
        d_model (int): token width.
        eps (float, optional): RMSNorm epsilon. Default: ``1e-5``.
        **mixer_kwargs: further arguments of :class:`BiMambaMixer`.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, **mixer_kwargs: object) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps)
        self.mixer = BiMambaMixer(d_model, **mixer_kwargs)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return plain_forward(VIM_BLOCK, self, hidden_states)


class VisionMamba(nn.Module):
    r"""A small Vision Mamba classifier: patch tokens, a class token, bidirectional blocks.

    ``forward(images) = forward_tokens(embed(images))``: :meth:`embed` builds the token
    sequence (patches, class token, position embeddings) and :meth:`forward_tokens`
    runs the blocks and classifies the class token. Explain :meth:`forward_tokens`
    to get one relevance per token (see :func:`captum_mamba.vision.explain.explain_patches`).

    Args:
        image_size (int, optional): height and width of the images. Default: 16.
        patch_size (int, optional): patch height and width. Default: 4.
        in_channels (int, optional): image channels. Default: 1.
        embed_dim (int, optional): token width. Default: 16.
        depth (int, optional): number of :class:`VimBlock`. Default: 2.
        num_classes (int, optional): outputs of the head. Default: 2.
        cls_position (int or str, optional): index of the class token in the token
            sequence, from 0 (before the first patch) to ``num_patches`` (after the
            last), or ``"middle"`` for ``num_patches // 2`` as in Vim.
            Default: ``"middle"``.
        patch_bias (bool, optional): bias in the patch projection; without it, a patch
            token's content is a linear function of its pixels only. Default: True.
        head_bias (bool, optional): bias in the classification head. Default: True.
        **mixer_kwargs: arguments of :class:`BiMambaMixer` (``d_state``, ``d_conv``,
            ``expand``, ``dt_rank``, ``divide_output``, ``conv_bias``, ``bias``).

    Examples::

        >>> model = VisionMamba(image_size=16, patch_size=4, cls_position="middle")
        >>> model(torch.randn(8, 1, 16, 16)).shape
        torch.Size([8, 2])
    """

    def __init__(
        self,
        image_size: int = 16,
        patch_size: int = 4,
        in_channels: int = 1,
        embed_dim: int = 16,
        depth: int = 2,
        num_classes: int = 2,
        cls_position: int | str = "middle",
        patch_bias: bool = True,
        head_bias: bool = True,
        **mixer_kwargs: object,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, embed_dim, patch_bias)
        num_patches = self.patch_embed.num_patches
        if cls_position == "middle":
            cls_position = num_patches // 2
        if not isinstance(cls_position, int) or not 0 <= cls_position <= num_patches:
            raise ValueError(
                f"cls_position must be 'middle' or an int in [0, {num_patches}], "
                f"got {cls_position!r}"
            )
        self.cls_position = cls_position
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, embed_dim))
        self.layers = nn.ModuleList(VimBlock(embed_dim, **mixer_kwargs) for _ in range(depth))
        self.norm_f = RMSNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes, bias=head_bias)

    def embed_parts(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Content and position parts of the token sequence, whose sum is :meth:`embed`.

        Args:
            images (Tensor): ``(batch, in_channels, image_size, image_size)``.

        Returns:
            tuple of Tensor: ``content``, the patch tokens with the class token inserted
            at ``cls_position``, and ``position``, the position embeddings expanded to
            the batch; both ``(batch, num_patches + 1, embed_dim)``.
        """
        patches = self.patch_embed(images)
        cls = self.cls_token.to(patches.dtype).expand(patches.shape[0], -1, -1)
        split = self.cls_position
        content = torch.cat([patches[:, :split], cls, patches[:, split:]], dim=1)
        return content, self.pos_embed.to(patches.dtype).expand_as(content)

    def embed(self, images: Tensor) -> Tensor:
        """Token sequence ``(batch, num_patches + 1, embed_dim)`` of ``images``: patch
        tokens, the class token at ``cls_position`` and the position embeddings."""
        content, position = self.embed_parts(images)
        return content + position

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """Class logits ``(batch, num_classes)`` of a token sequence from :meth:`embed`."""
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(self.norm_f(tokens[:, self.cls_position]))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(batch, num_classes)`` of ``images``."""
        return plain_forward(VISION_MAMBA_HANDLER, self, images)

    def split_tokens(self, token_values: Tensor) -> tuple[Tensor, Tensor]:
        """Separate per-token values into a patch grid and the class token.

        Args:
            token_values (Tensor): ``(batch, num_patches + 1, ...)``, e.g. token
                relevances summed over the embedding (``(batch, num_patches + 1)``).

        Returns:
            tuple of Tensor: ``(batch, grid, grid, ...)`` patch values in image
            layout and ``(batch, ...)`` class-token values.
        """
        split = self.cls_position
        patches = torch.cat([token_values[:, :split], token_values[:, split + 1 :]], dim=1)
        grid = self.patch_embed.grid_size
        return patches.unflatten(1, (grid, grid)), token_values[:, split]


def norm_forward(ops: BlockOps, norm: RMSNorm, x: Tensor) -> Tensor:
    """RMSNorm with the LN-rule."""
    return ops.rms_norm("", ops.compute(x), norm.weight, norm.eps)


def branch_forward(ops: BlockOps, branch: SSMBranch, x: Tensor, z: Tensor) -> Tensor:
    """One scan direction with the SiLU, SSM and half rules."""
    params = selective_params(
        branch.conv1d,
        branch.x_proj,
        branch.dt_proj,
        branch.A_log,
        branch.D,
        branch.dt_rank,
        branch.d_state,
    )
    return selective_branch(ops, params, x, z, reverse=branch.reverse)


def mixer_forward(ops: BlockOps, mixer: BiMambaMixer, hidden_states: Tensor) -> Tensor:
    """Both directions from one input projection, summed (or averaged)."""
    x, z = mixer.in_proj(ops.compute(hidden_states)).chunk(2, dim=-1)
    y = ops.add("directions", mixer.forward_branch(x, z), mixer.backward_branch(x, z))
    if mixer.divide_output:
        y = ops.scale("halve", y, 0.5)
    return mixer.out_proj(y)


def vision_forward(ops: BlockOps, model: VisionMamba, images: Tensor) -> Tensor:
    """Patch and class tokens plus position embeddings, then the blocks and the head."""
    content, position = model.embed_parts(images)
    return model.forward_tokens(ops.add("position", ops.compute(content), position))


RMS_NORM = ModuleHandler(RMSNorm, norm_forward, {"": "rms_norm"})
SSM_BRANCH = ModuleHandler(
    SSMBranch, branch_forward, SELECTIVE_SITES, ("conv1d", "x_proj", "dt_proj")
)
BI_MAMBA_MIXER = ModuleHandler(
    BiMambaMixer,
    mixer_forward,
    {"directions": "add", "halve": "scale"},
    ("in_proj", "forward_branch", "backward_branch", "out_proj"),
)
VIM_BLOCK = ModuleHandler(VimBlock, residual_block, RESIDUAL_SITES, ("norm", "mixer"), "block")
VISION_MAMBA_HANDLER = ModuleHandler(
    VisionMamba, vision_forward, {"position": "add"}, ("patch_embed", "layers", "norm_f", "head")
)

VISION_MAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(RMS_NORM, SSM_BRANCH, BI_MAMBA_MIXER, VIM_BLOCK, VISION_MAMBA_HANDLER),
        containers=(PatchEmbed,),
        blocks=(SSMBranch,),
    )
)
