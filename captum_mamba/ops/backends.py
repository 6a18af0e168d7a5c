"""Scan ops: which implementation each op runs, and the fused kernels it may call.

Four ops have several implementations with one autograd contract (every input that
requires grad gets its exact gradient; inputs passed detached get none, which is how
the MambaLRP rules are applied by the callers):

=================  ================================================================
op                 implementations
=================  ================================================================
``selective_scan`` ``"sequential"``: chunked loop over time steps with a hand-written
                   adjoint (:mod:`captum_mamba.ops.selective_scan`; fast on a CPU);
                   ``"parallel"``: chunked parallel scan in log space
                   (:mod:`captum_mamba.ops.parallel_scan`; for GPUs without
                   mamba-ssm); ``"fused"``: mamba-ssm's CUDA kernel
                   ``selective_scan_fn``.
``ssd_scan``       ``"chunked"``: this package's chunked SSD scan; ``"fused"``:
                   mamba-ssm's Triton kernel ``mamba_chunk_scan_combined``.
``causal_conv1d``  ``"torch"``: ``torch.nn.functional.conv1d``; ``"fused"``:
                   causal-conv1d's CUDA kernel ``causal_conv1d_fn``.
``attention``      ``"eager"``: the weight matrices in full; ``"chunked"``: query
                   blocks in linear memory (:mod:`captum_mamba.ops.attention`);
                   ``"sdpa"``: PyTorch's ``scaled_dot_product_attention``
                   kernels; ``"auto"`` picks by size and mask there, on any
                   device.
=================  ================================================================

``"auto"`` (the default) picks, per call, from the device and dtype of the inputs:
on a CPU (or the meta device) the first implementation above, without ever importing
mamba-ssm or causal-conv1d; on CUDA the fused kernel when it imports and supports the
inputs (float32, bfloat16 or float16, and the kernel's shape limits), else
``"parallel"`` / ``"chunked"`` / ``"torch"``. The fused kernels are only ever called
without their fused activations (no ``z``, no ``delta_softplus``, no SiLU), so the
SiLU and half rules stay with the callers.

``ssd_scan``'s kernel is written in Triton; with ``TRITON_INTERPRET=1`` in the
environment, Triton's interpreter runs it on CPU tensors, so ``impl="fused"`` is then
accepted on a CPU for that op (``"auto"`` still never picks it there). mamba-ssm's
kernels also assume a CUDA device in a few host-side calls; the test suite's
``tests/triton_interpreter.py`` replaces those for its own process, which is how the
fused path is tested without a GPU. The CUDA C++ kernels (``selective_scan``,
``causal_conv1d``) need a GPU.

Choose an implementation per call with ``impl=``, for a block of code with
:func:`implementation`, or for the process with :func:`set_implementation`::

    >>> with implementation(selective_scan="parallel"):
    ...     relevance = MambaLRP(model.cuda()).attribute(embeds.cuda(), target=(-1, 7))
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from types import MappingProxyType

import torch

#: Implementations of each op; the first after ``"auto"`` is the CPU default and
#: the last before ``"fused"`` the CUDA fallback when the fused kernel is unusable.
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "selective_scan": ("auto", "sequential", "parallel", "fused"),
    "ssd_scan": ("auto", "chunked", "fused"),
    "causal_conv1d": ("auto", "torch", "fused"),
    "attention": ("auto", "eager", "chunked", "sdpa"),
}

#: Fused kernel of each op, as ``(module, function)``.
KERNELS: dict[str, tuple[str, str]] = {
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "ssd_scan": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d_fn"),
}

#: Ops whose fused kernel is written in Triton (run on CPU by Triton's interpreter).
TRITON_OPS = frozenset({"ssd_scan"})

#: Input dtypes the fused kernels accept.
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_defaults: dict[str, str] = dict.fromkeys(IMPLEMENTATIONS, "auto")
# Per thread (and asyncio task): choices of `implementation` blocks, stand-in kernels.
_choices: ContextVar[Mapping[str, str]] = ContextVar("scan_impls", default=MappingProxyType({}))
_replacements: ContextVar[Mapping[str, Callable]] = ContextVar(
    "scan_kernels", default=MappingProxyType({})
)


# Per thread: the ops whose fused kernel ran inside `unbatched_backwards` (None outside).
_unbatched: ContextVar[list[str] | None] = ContextVar("unbatched_backwards", default=None)


@contextmanager
def unbatched_backwards() -> Iterator[list[str]]:
    """Context manager: collects the ops that ran a fused kernel inside it.

    The fused kernels' backward passes (mamba-ssm, causal-conv1d) take one cotangent at a
    time: a graph that contains one cannot be differentiated for many targets in one
    vmapped backward pass, and the attributions then run one backward pass per target.
    Every other implementation takes a batch of cotangents.

    Yields:
        list of str: the names of those ops, filled while the block runs.

    Examples::

        >>> with unbatched_backwards() as unbatched:
        ...     y = selective_scan(x, dt, A, B, C)
        >>> unbatched  # [] on a CPU; ["selective_scan"] where mamba-ssm's kernel ran
    """
    found: list[str] = []
    token = _unbatched.set(found)
    try:
        yield found
    finally:
        _unbatched.reset(token)


def _fused(op: str) -> str:
    """``"fused"``, noting ``op`` for :func:`unbatched_backwards`."""
    found = _unbatched.get()
    if found is not None and op not in found:
        found.append(op)
    return "fused"


def _check_choice(op: str, impl: str) -> None:
    if op not in IMPLEMENTATIONS:
        raise ValueError(f"unknown scan op {op!r}; choose one of {sorted(IMPLEMENTATIONS)}")
    if impl not in IMPLEMENTATIONS[op]:
        choices = ", ".join(IMPLEMENTATIONS[op])
        raise ValueError(f"{op} has no implementation {impl!r}; choose one of {choices}")


def set_implementation(**choices: str) -> None:
    r"""Set the implementation ops use when called without ``impl=``, for the process
    (:func:`implementation` blocks take precedence in their thread).

    Args:
        **choices (str): op name (``selective_scan``, ``ssd_scan``, ``causal_conv1d``)
            to implementation (see :data:`IMPLEMENTATIONS`; ``"auto"`` restores the
            default).

    Examples::

        >>> set_implementation(selective_scan="parallel", ssd_scan="auto")
    """
    for op, impl in choices.items():
        _check_choice(op, impl)
    _defaults.update(choices)


def get_implementation(op: str) -> str:
    """The implementation ``op`` uses when called without ``impl=`` (often ``"auto"``)."""
    _check_choice(op, "auto")
    return _choices.get().get(op, _defaults[op])


@contextmanager
def implementation(**choices: str) -> Iterator[None]:
    r"""Context manager: the implementations ops use without ``impl=`` inside the block,
    in this thread (and asyncio task) only; blocks nest.

    Args:
        **choices (str): op name to implementation, as for :func:`set_implementation`.

    Examples::

        >>> with implementation(selective_scan="fused", causal_conv1d="fused"):
        ...     y = selective_scan(x, dt, A, B, C)
    """
    for op, impl in choices.items():
        _check_choice(op, impl)
    token = _choices.set(MappingProxyType({**_choices.get(), **choices}))
    try:
        yield
    finally:
        _choices.reset(token)


@contextmanager
def replaced_kernels(**kernels: Callable) -> Iterator[None]:
    r"""Context manager: run ``impl="fused"`` with stand-ins for the compiled kernels.

    For testing the wiring on a CPU with the kernels' pure-PyTorch references
    (mamba-ssm's ``selective_scan_ref`` and ``ssd_chunk_scan_combined_ref``,
    causal-conv1d's ``causal_conv1d_ref``), which take the same arguments. While a
    kernel is replaced, ``impl="fused"`` also runs on CPU tensors; ``"auto"`` still
    picks a fused kernel only on CUDA. Like :func:`implementation`, per thread.

    Args:
        **kernels (Callable): op name (``selective_scan``, ``ssd_scan``,
            ``causal_conv1d``) to the function called in place of its kernel.

    Examples::

        >>> from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        >>> with replaced_kernels(selective_scan=selective_scan_ref):
        ...     y = selective_scan(x, dt, A, B, C, impl="fused")
    """
    for op in kernels:
        _check_choice(op, "fused")
    token = _replacements.set(MappingProxyType({**_replacements.get(), **kernels}))
    try:
        yield
    finally:
        _replacements.reset(token)


@cache
def _import_kernel(op: str) -> tuple[Callable | None, str]:
    module, name = KERNELS[op]
    try:
        return getattr(importlib.import_module(module), name), ""
    except (ImportError, OSError, RuntimeError, AttributeError) as error:
        return None, f"{type(error).__name__}: {error}"


def fused_kernel_error(op: str) -> str | None:
    """Why the fused kernel of ``op`` does not import, or None if it does.

    Imports mamba-ssm or causal-conv1d (once per process); call it only where CUDA
    kernels may be used.
    """
    _check_choice(op, "fused")
    return _import_kernel(op)[1] or None


def fused_kernel(op: str) -> Callable:
    """The fused kernel of ``op`` (or its stand-in from :func:`replaced_kernels`).

    Raises:
        RuntimeError: if the kernel does not import.
    """
    replacements = _replacements.get()
    if op in replacements:
        return replacements[op]
    kernel, error = _import_kernel(op)
    if kernel is None:
        module, name = KERNELS[op]
        raise RuntimeError(
            f"{op}(impl='fused') needs {module}.{name}, which does not import ({error}); "
            "install mamba-ssm / causal-conv1d with their CUDA kernels or use impl='auto'"
        )
    return kernel


def _interpreted(op: str) -> bool:
    """Whether the fused kernel of ``op`` runs on CPU tensors here (Triton's interpreter)."""
    return op in TRITON_OPS and os.environ.get("TRITON_INTERPRET") == "1"


def choose(op: str, impl: str | None, like: torch.Tensor, unsuitable: str | None = None) -> str:
    """The implementation of ``op`` to run on inputs like ``like``.

    Args:
        op (str): the op, a key of :data:`IMPLEMENTATIONS`.
        impl (str or None): the caller's choice; None for the current setting.
        like (Tensor): an input, for its device and dtype.
        unsuitable (str, optional): why the fused kernel cannot take these inputs
            (a shape limit), or None if it can. Default: None.

    Returns:
        str: a concrete implementation (never ``"auto"``).

    Raises:
        ValueError: if ``impl="fused"`` was asked for inputs the kernel cannot take.
        RuntimeError: if ``impl="fused"`` was asked and the kernel does not import.
    """
    impl = impl or get_implementation(op)
    _check_choice(op, impl)
    unfused = IMPLEMENTATIONS[op][1:-1]  # between "auto" and "fused"
    cpu_default, cuda_fallback = unfused[0], unfused[-1]
    if like.dtype not in FUSED_DTYPES:
        unsuitable = unsuitable or (
            f"the fused kernel takes float32, bfloat16 or float16, got {like.dtype}"
        )
    if impl == "auto":
        if like.device.type != "cuda":
            return cpu_default
        if unsuitable is None and _import_kernel(op)[0] is not None:
            return _fused(op)
        return cuda_fallback
    if impl == "fused":
        interpreted = _interpreted(op) and like.device.type == "cpu"
        if like.device.type != "cuda" and not (interpreted or op in _replacements.get()):
            hint = " (or TRITON_INTERPRET=1: Triton's interpreter)" if op in TRITON_OPS else ""
            unsuitable = unsuitable or (
                f"the fused kernel needs CUDA tensors{hint}, got {like.device}"
            )
        if unsuitable is not None:
            raise ValueError(f"{op}(impl='fused'): {unsuitable}; use impl='auto'")
        fused_kernel(op)
        return _fused(op)
    return impl
