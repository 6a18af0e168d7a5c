"""Architecture adapter for generic ``torch.nn`` modules found around Mamba blocks:
``nn.LayerNorm`` and ``nn.RMSNorm`` (LN-rule: ``1 / std`` or ``1 / rms`` constant, as for
every norm of a Mamba model) and ``nn.SiLU`` (identity rule), e.g. in a user's
classifier head or in place of a model's own norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(__name__, "torch.nn", ("nn.LayerNorm", "nn.RMSNorm", "nn.SiLU"), ())


def _last_dims(norm: nn.Module, x: Tensor) -> None:
    shape = tuple(norm.normalized_shape)
    if len(shape) != 1:
        raise NotImplementedError(
            f"{type(norm).__name__} over {len(shape)} dimensions is not supported; "
            "normalise over the last dimension only"
        )


def layer_norm_forward(ops: BlockOps, norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``nn.LayerNorm`` over the last dimension with the LN-rule."""
    _last_dims(norm, x)
    return ops.layer_norm("", ops.compute(x), norm.weight, norm.bias, norm.eps)


def rms_norm_forward(ops: BlockOps, norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """``nn.RMSNorm`` over the last dimension with the LN-rule."""
    _last_dims(norm, x)
    x = ops.compute(x)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return ops.rms_norm("", x, norm.weight, eps)


def silu_forward(ops: BlockOps, act: nn.SiLU, x: Tensor) -> Tensor:
    """``nn.SiLU`` with the identity rule."""
    return ops.silu("", x)


TORCH_NN = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(nn.LayerNorm, layer_norm_forward, {"": "layer_norm"}),
            ModuleHandler(nn.RMSNorm, rms_norm_forward, {"": "rms_norm"}),
            ModuleHandler(nn.SiLU, silu_forward, {"": "silu"}),
        ),
    )
)
