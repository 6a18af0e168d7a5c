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
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn

from captum_mamba.apps.data import load_tokenizer
from captum_mamba.attr.forward import default_forward

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: A Hugging Face hub id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
#: Suffixes of model files: an argument ending in one is a path, never a hub id.
_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json", ".pkl", ".gguf")
#: Seconds to wait for the hub before calling it unreachable.
HUB_PROBE_TIMEOUT = 3.0


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded; the message names it and the fix."""


class LongTextError(ValueError):
    """A text is longer than the model reads and the policy is to refuse it."""


#: What happens to a text of more tokens than the model reads (``max_length``): its
#: last tokens are kept (what a causal model reads last), its first ones, or it is
#: refused with a :class:`LongTextError`.
LONG_TEXTS = ("keep_tail", "keep_head", "refuse")


def keep_tokens(ids: Sequence[int], max_length: int | None, policy: str = "keep_tail") -> list[int]:
    """The token ids of one text that are explained, by the long-text ``policy``.

    Args:
        ids (sequence of int): all token ids of the text.
        max_length (int, optional): tokens the model reads; None reads all.
        policy (str, optional): one of :data:`LONG_TEXTS`. Default: ``"keep_tail"``.

    Returns:
        list of int: ``ids``, or its last / first ``max_length`` ids.

    Raises:
        LongTextError: for a longer text under ``"refuse"``.
    """
    if policy not in LONG_TEXTS:
        raise ValueError(f"policy must be one of {', '.join(LONG_TEXTS)}, got {policy!r}")
    if max_length is None or len(ids) <= max_length:
        return list(ids)
    if policy == "refuse":
        raise LongTextError(
            f"a text has {len(ids)} tokens, more than the {max_length} the model reads "
            f"(--max-length); pass --long-texts keep-tail or keep-head to explain a part "
            f"of it, or a larger --max-length"
        )
    return list(ids[:max_length] if policy == "keep_head" else ids[-max_length:])


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


def _encoder(
    tokenizer: Any, max_length: int | None, pad_id: int, truncation: str | None = None
) -> Callable[..., list[list[int]]]:
    """``encode(texts)`` with either kind of tokenizer; a text longer than
    ``max_length`` tokens is handled as :func:`keep_tokens` says.

    Args:
        tokenizer (Any): a ``tokenizers.Tokenizer`` or a transformers tokenizer.
        max_length (int, optional): tokens kept per text; None keeps all.
        pad_id (int): the id of a text without tokens.
        truncation (str, optional): one of :data:`LONG_TEXTS`. Default: None
            (``"keep_tail"``).

    Returns:
        Callable: ``encode(texts) -> list of id lists`` (never empty).
    """

    def encode(texts: Sequence[str]) -> list[list[int]]:
        if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
            rows = [e.ids for e in tokenizer.encode_batch(list(texts))]
        else:
            rows = [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
        rows = [keep_tokens(row, max_length, truncation or "keep_tail") for row in rows]
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
    truncation: str | None = None,
) -> ExplainedModel:
    """An :class:`ExplainedModel` of a loaded model with its tokenizer (an object or a
    path / hub id), encoding with it and padding with its pad id."""
    tokenizer = load_tokenizer_any(tokenizer)
    pad = _pad_id(tokenizer)
    return ExplainedModel(
        model,
        tokenizer,
        _encoder(tokenizer, max_length, pad, truncation),
        forward or default_forward(model, "inputs_embeds"),
        pad,
        labels,
        description,
        source,
    )


def _factory(
    spec: str, tokenizer: Any, max_length: int | None, truncation: str | None = None
) -> ExplainedModel:
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
        truncation,
    )


def _mamba_ssm(
    source: str, tokenizer: Any, max_length: int | None, truncation: str | None = None
) -> ExplainedModel:
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
    description = f"mamba-ssm MambaLMHeadModel from {path}"
    return _explained(
        model, tokenizer, max_length, (), description, str(path), truncation=truncation
    )


def looks_like_hub_id(source: str) -> bool:
    """Whether a model argument that is not a local path reads as a hub id
    (``owner/name`` or ``name``, no file suffix, no folder of it here).

    Args:
        source (str): the model argument.

    Returns:
        bool: True for e.g. ``"state-spaces/mamba-130m-hf"``; False for
        ``"./model"``, ``"/tmp/x"``, ``"run/model.ckpt"`` or ``"outputs/model"`` when
        ``outputs`` is a local folder.
    """
    if not _HUB_ID.match(source) or ".." in source or source.lower().endswith(_FILE_SUFFIXES):
        return False
    return "/" not in source or not Path(source.split("/")[0]).exists()


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub answers (a TCP connection to its endpoint within
    ``timeout`` seconds); False when ``HF_HUB_OFFLINE`` is set.

    Args:
        timeout (float, optional): seconds to wait. Default: :data:`HUB_PROBE_TIMEOUT`.

    Returns:
        bool: whether a download can be tried.
    """
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if constants.HF_HUB_OFFLINE or offline:
        return False
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_config(source: str) -> Any:
    """The config of a hub model: downloaded when the hub answers, else from the local
    cache only (no retries against an unreachable hub)."""
    from transformers import AutoConfig

    if Path(source).exists() or hub_reachable():
        return AutoConfig.from_pretrained(source)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception:  # not in the cache
        raise ModelLoadError(
            f"{source}: no such local file or folder, and the model hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE set) with no copy of it in the local cache; pass a "
            f"local model, or connect and try again"
        ) from None


def _transformers(
    source: str, tokenizer: Any, max_length: int | None, truncation: str | None = None
) -> ExplainedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        config = _hub_config(source)
    except ModelLoadError:
        raise
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
        truncation=truncation,
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
            the arguments of :func:`load_explained`; it is passed ``truncation`` (one
            of :data:`LONG_TEXTS`) as a fourth argument only when one is asked for.
    """

    name: str
    accepts: Callable[[str], bool]
    load: Callable[..., ExplainedModel]


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
    if not path.exists() and not looks_like_hub_id(source):
        raise ModelLoadError(
            f"{source}: no such file or folder (and not a hub id owner/name); pass an "
            f"existing classifier checkpoint or model folder, a hub id or module:function"
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
    model: str | Path,
    tokenizer: Any = None,
    max_length: int | None = None,
    truncation: str | None = None,
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
        truncation (str, optional): what happens to a longer text, one of
            :data:`LONG_TEXTS`. Default: None (the classifier's setting; the last
            tokens kept otherwise).

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
    if truncation is not None and truncation not in LONG_TEXTS:
        raise ValueError(f"truncation must be one of {', '.join(LONG_TEXTS)}, got {truncation!r}")
    loader = next(loader for loader in model_loaders() if loader.accepts(source))
    if truncation is None:
        return loader.load(source, tokenizer, max_length)
    return loader.load(source, tokenizer, max_length, truncation)
