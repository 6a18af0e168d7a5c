r"""Loading a model and its tokenizer for the command line and :mod:`captum_mamba.apps.dataset`.

:func:`load_explained` asks the registered loaders (:func:`register_loader`), then the
built-in ones, which model argument each reads. Registered: whatever a module registers
when imported, e.g. :mod:`captum_mamba.apps.sentiment` the checkpoints of this package's
text classifier (:meth:`TextClassifier.save
<captum_mamba.apps.sentiment.TextClassifier.save>`; its tokenizer is inside). Built in:

- a transformers model folder (``save_pretrained``) or hub id: a
  ``...ForSequenceClassification`` architecture is loaded as a classifier, anything
  else as a causal language model; the tokenizer is the folder's, or ``tokenizer``;
- a mamba-ssm checkpoint folder (``config.json`` with ``d_model`` and ``n_layer``, as
  written by ``MambaLMHeadModel.save_pretrained``; needs mamba-ssm and a ``tokenizer``);
- a Python factory ``"package.module:function"``, called without arguments, returning
  ``(model, tokenizer)`` or a dict with ``model``, ``tokenizer`` and optionally
  ``label_names`` and ``forward_func``.

A tokenizer is a ``tokenizers.Tokenizer``, a transformers tokenizer, or a path to
either (a ``tokenizer.json`` file, a folder, a hub id).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.apps.data import load_tokenizer
from captum_mamba.attr.forward import default_forward

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded; the message names it and the fix."""


@dataclass
class ExplainedModel:
    """A model ready to be explained on texts.

    Args:
        model (nn.Module): the model, in eval mode.
        tokenizer (Any): its tokenizer (for token strings).
        encode (Callable): ``encode(texts) -> list of id lists`` (never empty).
        forward (Callable): ``forward(embeds, attention_mask=None) -> logits``.
        pad_id (int): token id put in padded positions.
        label_names (tuple of str): class names of a classifier (empty for LMs).
        description (str): what was loaded, for captions and logs.
        source (str): the model argument it was loaded from.
    """

    model: nn.Module
    tokenizer: Any
    encode: Callable[[Sequence[str]], list[list[int]]]
    forward: Callable[..., Tensor]
    pad_id: int
    label_names: tuple[str, ...]
    description: str
    source: str

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the model's parameters and buffers, in order."""
        return model_fingerprint(self.model)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's parameters and buffers, in order.

    Args:
        model (nn.Module): the model.

    Returns:
        str: 16 hex digits; any change of a weight changes it.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def load_tokenizer_any(source: Any) -> Any:
    """A tokenizer from a ``tokenizer.json`` path, a folder or hub id, or as given.

    Args:
        source (Any): a tokenizer object or a path / hub id.

    Returns:
        Any: a ``tokenizers.Tokenizer`` (for ``.json`` files) or a transformers
        tokenizer.

    Raises:
        ModelLoadError: naming the path when it cannot be loaded.
    """
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    try:
        if path.is_file():
            return load_tokenizer(path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(source))
    except Exception as error:  # tokenizers and transformers raise many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"{source}: cannot load a tokenizer ({type(error).__name__}: {first}); pass "
            f"--tokenizer with a tokenizer.json file or a transformers tokenizer folder"
        ) from None


def _encoder(tokenizer: Any, max_length: int | None, pad_id: int) -> Callable[..., list[list[int]]]:
    """``encode(texts)`` with either kind of tokenizer; the last ``max_length`` tokens
    of a longer text are kept (the end is what a causal model reads last).

    Args:
        tokenizer (Any): a ``tokenizers.Tokenizer`` or a transformers tokenizer.
        max_length (int, optional): tokens kept per text; None keeps all.
        pad_id (int): the id of a text without tokens.

    Returns:
        Callable: ``encode(texts) -> list of id lists`` (never empty).
    """

    def encode(texts: Sequence[str]) -> list[list[int]]:
        if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
            rows = [e.ids for e in tokenizer.encode_batch(list(texts))]
        else:
            rows = [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
        if max_length is not None:
            rows = [row[-max_length:] for row in rows]
        return [row or [pad_id] for row in rows]

    return encode


def _pad_id(tokenizer: Any) -> int:
    """The id a tokenizer pads with: its pad or end-of-text id, else 0.

    Args:
        tokenizer (Any): a ``tokenizers.Tokenizer`` or a transformers tokenizer.

    Returns:
        int: the id.
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    if hasattr(tokenizer, "token_to_id"):
        for token in ("<|padding|>", "<pad>", "<|endoftext|>"):
            value = tokenizer.token_to_id(token)
            if value is not None:
                return value
    return 0


def _explained(
    model: nn.Module,
    tokenizer: Any,
    max_length: int | None,
    labels: tuple[str, ...],
    description: str,
    source: str,
    forward: Callable[..., Tensor] | None = None,
) -> ExplainedModel:
    """An :class:`ExplainedModel` of a loaded model with its tokenizer (an object or a
    path / hub id), encoding with it and padding with its pad id."""
    tokenizer = load_tokenizer_any(tokenizer)
    pad = _pad_id(tokenizer)
    return ExplainedModel(
        model,
        tokenizer,
        _encoder(tokenizer, max_length, pad),
        forward or default_forward(model, "inputs_embeds"),
        pad,
        labels,
        description,
        source,
    )


def _factory(spec: str, tokenizer: Any, max_length: int | None) -> ExplainedModel:
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(
            f"{spec}: cannot import {module_name} ({error}); put it on PYTHONPATH or pass "
            f"another module:function"
        ) from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelLoadError(f"{spec}: {module_name} has no function {function_name!r}")
    made = factory()
    if isinstance(made, dict):
        if "model" not in made or "tokenizer" not in made:
            raise ModelLoadError(
                f"{spec} returned a dict without 'model' and 'tokenizer'; return "
                f"(model, tokenizer) or a dict with those keys"
            )
        model, tokenizer = made["model"], made["tokenizer"]
        labels, forward = made.get("label_names", ()), made.get("forward_func")
    elif isinstance(made, (tuple, list)) and len(made) == 2:
        (model, tokenizer), labels, forward = made, (), None
    else:
        raise ModelLoadError(
            f"{spec} returned {type(made).__name__}; return (model, tokenizer) or a dict "
            f"with 'model', 'tokenizer' and optionally 'label_names', 'forward_func'"
        )
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned a {type(model).__name__} as model, not a Module")
    return _explained(
        model.eval(),
        tokenizer,
        max_length,
        tuple(str(name) for name in labels),
        f"{type(model).__name__} from {spec}",
        spec,
        forward,
    )


def _mamba_ssm(source: str, tokenizer: Any, max_length: int | None) -> ExplainedModel:
    path = Path(source)
    if tokenizer is None:
        raise ModelLoadError(
            f"{path} is a mamba-ssm checkpoint without a tokenizer; pass --tokenizer "
            f"(e.g. the GPT-NeoX-20B tokenizer.json)"
        )
    try:
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except Exception as error:  # ImportError, or its CUDA extension failing to load
        raise ModelLoadError(
            f"{path} is a mamba-ssm checkpoint; loading it needs mamba-ssm with its CUDA "
            f"extension ({type(error).__name__}: {error}); pip install captum-mamba[mamba-ssm] "
            f"on a CUDA machine"
        ) from None
    model = MambaLMHeadModel.from_pretrained(str(path)).eval()
    return _explained(
        model, tokenizer, max_length, (), f"mamba-ssm MambaLMHeadModel from {path}", str(path)
    )


def _transformers(source: str, tokenizer: Any, max_length: int | None) -> ExplainedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:  # OSError, ValueError, connection errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"{source}: not a model checkpoint, transformers folder, hub id or module:function "
            f"({type(error).__name__}: {first}); pass one of those as --model"
        ) from None
    architectures = getattr(config, "architectures", None) or []
    classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(source).eval()
    labels: tuple[str, ...] = ()
    if classifier:
        id2label = getattr(config, "id2label", None) or {}
        labels = tuple(str(id2label.get(k, k)) for k in range(config.num_labels))
    kind = "classifier" if classifier else "language model"
    return _explained(
        model,
        source if tokenizer is None else tokenizer,
        max_length,
        labels,
        f"transformers {type(model).__name__} ({kind}) from {source}",
        source,
    )


@dataclass(frozen=True)
class ModelLoader:
    """One kind of model argument that :func:`load_explained` reads.

    Args:
        name (str): what it loads, for messages (e.g. ``"mamba-ssm checkpoint folder"``).
        accepts (Callable): ``accepts(source) -> bool``: whether the model argument (a
            path, hub id or other text) is of this kind; it may raise
            :class:`ModelLoadError` for one that is but is broken.
        load (Callable): ``load(source, tokenizer, max_length) -> ExplainedModel``, with
            the arguments of :func:`load_explained`.
    """

    name: str
    accepts: Callable[[str], bool]
    load: Callable[[str, Any, int | None], ExplainedModel]


_REGISTERED: dict[str, ModelLoader] = {}


def register_loader(loader: ModelLoader) -> None:
    """Let :func:`load_explained` read another kind of model argument, asked before the
    built-in loaders (registering a name again replaces that loader).

    Args:
        loader (ModelLoader): the loader.
    """
    _REGISTERED[loader.name] = loader


def _mamba_ssm_folder(source: str) -> bool:
    path = Path(source)
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as error:
        raise ModelLoadError(f"{path / 'config.json'} is not valid JSON ({error})") from None
    return isinstance(config, dict) and "d_model" in config and "n_layer" in config


def _is_factory(source: str) -> bool:
    return not Path(source).exists() and _FACTORY.match(source) is not None


def _transformers_source(source: str) -> bool:
    path = Path(source)
    if path.is_file():
        raise ModelLoadError(
            f"{path} is a file but not a captum-mamba classifier checkpoint; pass that, "
            f"a transformers or mamba-ssm model folder, a hub id or module:function"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is a folder without config.json; pass a transformers or mamba-ssm model "
            f"folder (save_pretrained), a classifier checkpoint, a hub id or module:function"
        )
    return True


#: The loaders asked after the registered ones, in order; the last reads anything else.
BUILT_IN_LOADERS: tuple[ModelLoader, ...] = (
    ModelLoader("mamba-ssm checkpoint folder", _mamba_ssm_folder, _mamba_ssm),
    ModelLoader("Python factory module:function", _is_factory, _factory),
    ModelLoader("transformers model folder or hub id", _transformers_source, _transformers),
)


def model_loaders() -> tuple[ModelLoader, ...]:
    """The loaders :func:`load_explained` asks, in order: the registered ones, then
    :data:`BUILT_IN_LOADERS`.

    Returns:
        tuple of ModelLoader: the loaders.
    """
    return (*_REGISTERED.values(), *BUILT_IN_LOADERS)


def load_explained(
    model: str | Path, tokenizer: Any = None, max_length: int | None = None
) -> ExplainedModel:
    """Load a model (and its tokenizer) to explain with the first loader of
    :func:`model_loaders` that accepts it, see the module docstring.

    Args:
        model (str or Path): a classifier checkpoint (once
            :mod:`captum_mamba.apps.sentiment` is imported), a transformers folder or hub
            id, a mamba-ssm checkpoint folder, ``"module:function"``, or what another
            registered loader reads.
        tokenizer (Any, optional): tokenizer or its path / hub id. Default: None (the
            model's own).
        max_length (int, optional): tokens kept per text (the last ones). Default:
            None (the classifier's setting; all tokens otherwise).

    Returns:
        ExplainedModel: model, encoder, forward function, class names.

    Raises:
        ModelLoadError: naming the model and the fix, for anything that cannot be
            loaded.

    Examples::

        >>> explained = load_explained("sentiment.ckpt")
        >>> explained = load_explained("state-spaces/mamba-130m-hf")
        >>> explained = load_explained("my_project.models:build")
    """
    source = str(model)
    loader = next(loader for loader in model_loaders() if loader.accepts(source))
    return loader.load(source, tokenizer, max_length)
