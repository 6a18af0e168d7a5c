"""Attribution classes: running a model for an explanation.

Default forward functions for Hugging Face and mamba-ssm language models, the dtype
an explanation computes in, device and argument checks, and the autograd mode of an
attribution call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters.base import is_computed
from captum_mamba.attr._targets import AttributionInputError
from captum_mamba.rules import MambaRules


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype an explanation of ``model`` computes in: its widest parameter dtype,
    and at least float32 (half-precision models are explained in float32).

    Args:
        model (nn.Module): the model to explain.

    Returns:
        torch.dtype: float32 or float64.

    Raises:
        AttributionInputError: if ``model`` has no floating-point parameter.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes:
        raise AttributionInputError(
            f"{type(model).__name__} has no floating-point parameters (quantized?); "
            "MambaLRP needs float16, bfloat16, float32 or float64 weights"
        )
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def check_devices(model: nn.Module, named: Sequence[tuple[str, Any]]) -> None:
    """Check that every tensor in ``named`` is on a device that holds ``model``.

    Args:
        model (nn.Module): the model to explain.
        named (sequence of (str, Any)): argument names and values; non-tensors are
            ignored.

    Raises:
        AttributionInputError: naming the first tensor on another device.
    """
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    for name, value in named:
        if isinstance(value, Tensor) and devices and value.device not in devices:
            target = sorted(str(d) for d in devices)[0]
            raise AttributionInputError(
                f"{name} is on {value.device} but the model is on {target}; "
                f"move it with .to({target!r})"
            )


def argument_names(
    inputs: tuple[Any, ...], additional_forward_args: tuple[Any, ...]
) -> list[tuple[str, Any]]:
    """Name every input and additional forward argument for error messages."""
    names = ["inputs"] if len(inputs) == 1 else [f"inputs[{i}]" for i in range(len(inputs))]
    extra = [f"additional_forward_args[{i}]" for i in range(len(additional_forward_args))]
    return list(zip(names + extra, (*inputs, *additional_forward_args), strict=True))


def as_leaf(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh copy of ``x`` in ``dtype`` that requires grad (also for inference tensors).

    Args:
        x (Tensor): an input or layer activation.
        dtype (torch.dtype): the compute dtype.

    Returns:
        Tensor: the leaf of the explanation's backward pass.
    """
    return x.detach().to(dtype, copy=True).requires_grad_()


def plain_arguments(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with inference tensors (made under ``torch.inference_mode``) copied,
    so that autograd may save them."""
    return tuple(a.clone() if isinstance(a, Tensor) and a.is_inference() else a for a in args)


@contextmanager
def explanation_mode() -> Iterator[None]:
    """Autograd on, also inside ``torch.no_grad()`` or ``torch.inference_mode()``.

    The rules and capture hooks of an explanation are installed under the per-module
    locks of :func:`captum_mamba.adapters.rules_applied`, so explanations of models that
    share modules run one after the other and others in parallel.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def check_model(model: Any, rules: Any) -> MambaRules:
    """Check the model and rules given to an attribution class.

    Args:
        model (Any): should be an ``nn.Module``.
        rules (Any): None or a :class:`~captum_mamba.MambaRules` instance.

    Returns:
        MambaRules: ``rules``, or MambaLRP's rules for None.

    Raises:
        TypeError: naming what was given instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if rules is None:
        return MambaRules()
    if not isinstance(rules, MambaRules):
        hint = "MambaRules() (call the class)" if rules is MambaRules else "e.g. MambaRules()"
        raise TypeError(f"rules must be a MambaRules instance, {hint}; got {rules!r}")
    return rules


def _first(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    return output[0]


def _check_mask(attention_mask: Any, inputs: Tensor) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor):
        raise AttributionInputError(
            f"attention_mask must be a tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != inputs.shape[:2]:
        raise AttributionInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have "
            f"(batch, seq) = {tuple(inputs.shape[:2])}; pass one 0/1 entry per token"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise AttributionInputError("attention_mask must contain only 0 (padding) and 1")


def _check_embeds(model: nn.Module, inputs: Tensor) -> None:
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if inputs.dim() != 3 or (width is not None and inputs.shape[-1] != width):
        raise AttributionInputError(
            f"inputs_embeds has shape {tuple(inputs.shape)}; expected (batch, seq, {width}) "
            "embeddings; for token ids use LayerMambaLRP(model, model.get_input_embeddings())"
        )


def backbone_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The backbone and output head of a language model, if it has both and its own
    forward only routes between them.

    The backbone is the attribute named by transformers' ``base_model_prefix`` (e.g.
    ``backbone`` for Mamba, ``model`` for Jamba) or ``backbone`` (mamba-ssm); the head is
    ``get_output_embeddings()`` or ``lm_head``. A model whose forward an adapter computes
    (e.g. Granite's, which divides the logits by ``logits_scaling``) has neither: it is
    run as a whole.

    Args:
        model (nn.Module): the model.

    Returns:
        tuple: ``(backbone, head)``, each None when missing.
    """
    if is_computed(model):
        return None, None
    backbone = getattr(model, getattr(model, "base_model_prefix", "") or "backbone", None)
    if not isinstance(backbone, nn.Module) or backbone is model:
        backbone = getattr(model, "backbone", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else getattr(model, "lm_head", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        return None, None
    return backbone, head


def default_forward(model: nn.Module, keyword: str) -> Callable[..., Tensor]:
    """Forward function of a Hugging Face (or mamba-ssm) model that returns its logits.

    Language models are run as ``head(backbone(...))`` (see :func:`backbone_and_head`) so
    that the logits keep the dtype of the computation (transformers casts them to
    float32).

    Args:
        model (nn.Module): a Hugging Face model.
        keyword (str): ``"inputs_embeds"`` or ``"input_ids"``.

    Returns:
        Callable: ``forward(inputs, attention_mask=None) -> Tensor``; it raises
        :class:`AttributionInputError` for embeddings of the wrong shape and for an
        attention mask that is not a 0/1 tensor of shape ``(batch, seq)``.
    """
    backbone, head = backbone_and_head(model)

    def forward(inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if keyword == "inputs_embeds":
            _check_embeds(model, inputs)
        _check_mask(attention_mask, inputs)
        kwargs = {keyword: inputs, "attention_mask": attention_mask, "use_cache": False}
        if backbone is not None:
            return head(_first(backbone(**kwargs)))
        return _first(model(**kwargs))

    return forward
