"""Visualisation: token relevance heatmaps as HTML (Jupyter, standalone files) and figures.

Relevance is shown with a diverging colour map centred on zero: red tokens speak for
the explained output, blue tokens against it, white tokens are neutral. Each view
takes plain data (display strings of the tokens and one relevance per token), so
any attribution method can be shown; :func:`token_texts` turns token ids into
display strings, :func:`merge_word_pieces` joins word pieces into words.

Bad numbers are shown, not hidden: a token whose relevance is NaN or inf is drawn grey
and hatched with a dashed border (never white, which would read as "neutral"), the
view adds a legend note, a :class:`~captum_mamba.metrics.BadNumberWarning` names the
rows and tokens, and the colour scale is set by the finite values only. A row whose
relevances are all NaN is drawn entirely in that style.
"""

from __future__ import annotations

import codecs
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import visualization as captum_visualization
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextToPath
from numpy.typing import ArrayLike

from captum_mamba.metrics.checks import (
    check_bool,
    check_number,
    check_positive,
    describe,
    warn_bad_numbers,
)
from captum_mamba.visualization._colors import (
    DEFAULT_CMAP,
    NONFINITE_EDGE,
    NONFINITE_FACE,
    NONFINITE_HATCH,
    NONFINITE_NOTE,
    as_array,
    format_value,
    get_cmap,
    nonfinite_positions,
    nonfinite_summary,
    readable_text_color,
    relevance_colors,
    symmetric_limit,
    zero_centred_norm,
)
from captum_mamba.visualization._html import HEATMAP_CSS, NONFINITE_CSS, hex_colour, legend_html

_BYTE_LEVEL_SPACE = "Ġ"
_SENTENCEPIECE_SPACE = "▁"


def _byte_level_alphabet() -> dict[str, int]:
    # Byte-level BPE (GPT-2, GPT-NeoX) writes each byte as one printable character:
    # printable Latin-1 bytes stand for themselves, the other bytes are shifted to
    # code points from 256 upwards, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {chr(byte): byte for byte in printable}
    shifted = (byte for byte in range(256) if byte not in set(printable))
    for offset, byte in enumerate(shifted):
        alphabet[chr(256 + offset)] = byte
    return alphabet


_BYTE_OF_CHAR = _byte_level_alphabet()


def _token_ids(ids: Any) -> list[int]:
    # The ids of one sequence as Python ints; floats are refused, not truncated.
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    try:
        array = np.asarray(ids)
    except ValueError:
        raise ValueError("token ids are a ragged sequence; pass the ids of one sequence") from None
    if array.size == 0:
        return []
    if array.dtype.kind not in "iu":
        raise TypeError(f"token ids have dtype {array.dtype}; pass integer token ids")
    if array.ndim == 0 or (array.ndim == 2 and array.shape[0] == 1):
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(
            f"token ids have shape {array.shape}; pass the ids of one sequence "
            "(call token_texts for each row)"
        )
    return [int(i) for i in array]


def _vocab_size(tokenizer: Any) -> int | None:
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size(with_added_tokens=True))
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    return None


def _raw_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    if hasattr(tokenizer, "id_to_token"):
        raw = [tokenizer.id_to_token(i) for i in ids]
    elif hasattr(tokenizer, "convert_ids_to_tokens"):
        raw = list(tokenizer.convert_ids_to_tokens(list(ids)))
    else:
        raise TypeError(
            f"{type(tokenizer).__name__} has neither id_to_token (tokenizers.Tokenizer) nor "
            "convert_ids_to_tokens (transformers tokenizer)"
        )
    unknown = [position for position, token in enumerate(raw) if not isinstance(token, str)]
    if unknown:
        raise ValueError(
            f"token ids {describe([ids[i] for i in unknown])} (positions {describe(unknown)}) "
            "are not in the tokenizer's vocabulary; pass ids from this tokenizer"
        )
    return raw


def _is_byte_level(tokenizer: Any, raw: Sequence[str]) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        return type(decoder).__name__ == "ByteLevel"
    return any(_BYTE_LEVEL_SPACE in token for token in raw)


def _word_model_texts(tokenizer: Any, raw: Sequence[str]) -> list[str] | None:
    # WordLevel and WordPiece vocabularies carry no spaces (their decoders insert them):
    # every word after the first gets a leading space, a WordPiece continuation
    # ("##ing") loses its prefix and joins the word before it.
    model = getattr(getattr(tokenizer, "backend_tokenizer", tokenizer), "model", None)
    kind = type(model).__name__
    if kind not in ("WordLevel", "WordPiece") or any(_SENTENCEPIECE_SPACE in t for t in raw):
        return None  # other models, or word tokens that carry their own "▁" marker
    prefix = getattr(model, "continuing_subword_prefix", None) if kind == "WordPiece" else None
    texts = []
    for position, token in enumerate(raw):
        if prefix and token.startswith(prefix) and len(token) > len(prefix):
            texts.append(token[len(prefix) :])
        else:
            texts.append(token if position == 0 else " " + token)
    return texts


def token_texts(
    tokenizer: Any, ids: ArrayLike | Sequence[int], byte_level: bool | None = None
) -> list[str]:
    r"""Display text of every token, so that joining them gives back the input text.

    Byte-level BPE tokens (GPT-NeoX, the Mamba tokenizer) are read as UTF-8 bytes:
    ``"Ġgreat"`` becomes ``" great"``, ``"Ċ"`` a newline. A character split over
    several tokens (e.g. an emoji) is shown on the token that completes it, so no
    token shows a broken character (the tokens before it are empty strings, drawn
    as ``"∅"`` by the heatmaps). SentencePiece's ``"▁"`` becomes a space. Words of a
    WordLevel or WordPiece vocabulary are separated by a space, and a WordPiece
    continuation (``"##ing"``) is shown without its prefix, so that
    :func:`merge_word_pieces` joins pieces into words for every tokenizer.

    Args:
        tokenizer (tokenizers.Tokenizer or transformers tokenizer): the tokenizer
            that produced ``ids``.
        ids (ArrayLike or sequence of int): integer token ids of one sequence
            (``(seq,)``, or ``(1, seq)``), each in ``[0, vocabulary size)``.
        byte_level (bool, optional): force (or disable) byte-level decoding.
            Default: None (detected from the tokenizer's decoder).

    Returns:
        list of str: one display string per id, with leading spaces kept.

    Raises:
        ValueError: for negative ids, ids outside the vocabulary (naming them and
            their positions) or a batch of several sequences.
        TypeError: for float or boolean ids.

    Examples::

        >>> tokenizer = Tokenizer.from_file("gpt-neox-20b-tokenizer.json")
        >>> token_texts(tokenizer, tokenizer.encode("a great film").ids)
        ['a', ' great', ' film']
    """
    id_list = _token_ids(ids)
    vocab = _vocab_size(tokenizer)
    outside = [
        position
        for position, i in enumerate(id_list)
        if i < 0 or (vocab is not None and i >= vocab)
    ]
    if outside:
        bounds = f"[0, {vocab})" if vocab is not None else "non-negative"
        raise ValueError(
            f"token ids {describe([id_list[i] for i in outside])} (positions "
            f"{describe(outside)}) are outside the vocabulary {bounds}; pass ids from this "
            "tokenizer"
        )
    raw = _raw_tokens(tokenizer, id_list)
    if byte_level is None:
        byte_level = _is_byte_level(tokenizer, raw)
    else:
        byte_level = check_bool(byte_level, "byte_level")
    if not byte_level:
        words = _word_model_texts(tokenizer, raw)
        return words if words is not None else [t.replace(_SENTENCEPIECE_SPACE, " ") for t in raw]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = []
    for token in raw:
        if all(char in _BYTE_OF_CHAR for char in token):
            texts.append(decoder.decode(bytes(_BYTE_OF_CHAR[char] for char in token)))
        else:  # special tokens such as "<|endoftext|>" are kept as written
            texts.append(decoder.decode(b"", final=True) + token)
    return texts


class ReadableTokenizer:
    """A transformers tokenizer whose token strings are readable: Captum's text inputs
    (``TextTokenInput``, ``LLMGradientAttribution``) label tokens with
    ``convert_ids_to_tokens``, which for byte-level BPE gives ``"Ġquick"``; through
    this wrapper they are :func:`token_texts` (``" quick"``). Everything else is the
    wrapped tokenizer's.

    Args:
        tokenizer (Any): a transformers tokenizer.

    Examples::

        >>> readable = ReadableTokenizer(tokenizer)
        >>> llm = LLMGradientAttribution(LayerMambaLRP(model, embeddings), readable)
        >>> inp = TextTokenInput("The quick brown fox", readable)   # tokens ' quick', ...
    """

    def __init__(self, tokenizer: Any) -> None:
        if not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a transformers tokenizer (no "
                "convert_ids_to_tokens); wrap a tokenizers.Tokenizer in "
                "PreTrainedTokenizerFast(tokenizer_object=...) first"
            )
        self.tokenizer = tokenizer

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Display text of one id or of several (see :func:`token_texts`).

        Args:
            ids (int or sequence of int): token ids.

        Returns:
            str or list of str: the text of each (a list for a sequence).
        """
        if isinstance(ids, int):
            return token_texts(self.tokenizer, [ids])[0]
        return token_texts(self.tokenizer, list(ids))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "tokenizer":  # not set yet (e.g. while copying)
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


def merge_word_pieces(tokens: Sequence[str], relevance: ArrayLike) -> tuple[list[str], np.ndarray]:
    """Join word pieces into words and add up their relevances.

    A token starts a new word when it begins with whitespace or follows a token that
    ends with whitespace; every other token (``"'s"``, ``"ing"``, ``","``) is
    appended to the word before it, and whitespace-only tokens (line breaks,
    indentation) are joined to the word after them. Sums are kept, so conservation
    still holds. A word with a NaN or infinite piece gets a NaN or infinite sum,
    which the heatmaps mark (nothing is dropped or replaced here).

    Args:
        tokens (sequence of str): display strings (see :func:`token_texts`).
        relevance (ArrayLike): one relevance per token.

    Returns:
        tuple: the words (with their leading whitespace) and their relevances.

    Examples::

        >>> merge_word_pieces(["The", " film", "'s", " end"], [1.0, 2.0, 0.5, -1.0])
        (['The', " film's", ' end'], array([ 1. ,  2.5, -1. ]))
    """
    values = _check_pair(tokens, relevance)
    words: list[str] = []
    sums: list[float] = []
    for token, value in zip(tokens, values, strict=True):
        starts_word = not words or (
            not words[-1].isspace() and (token[:1].isspace() or words[-1][-1:].isspace())
        )
        if starts_word:
            words.append(token)
            sums.append(float(value))
        else:
            words[-1] += token
            sums[-1] += float(value)
    return words, np.asarray(sums)


def _check_pair(tokens: Sequence[str], relevance: ArrayLike) -> np.ndarray:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence | np.ndarray):
        raise TypeError(
            f"tokens must be a list of strings (see token_texts), got {type(tokens).__name__}"
        )
    wrong = [position for position, token in enumerate(tokens) if not isinstance(token, str)]
    if wrong:
        raise TypeError(
            f"tokens must be strings (see token_texts); positions {describe(wrong)} hold "
            f"{type(tokens[wrong[0]]).__name__}"
        )
    values = as_array(relevance, "relevance")
    if values.ndim != 1:  # e.g. a batch of one; a single value stays a vector
        values = values.reshape(-1) if values.size == 1 else values.squeeze()
    if values.ndim != 1 or values.shape[0] != len(tokens):
        raise ValueError(
            f"expected one relevance per token: {len(tokens)} tokens, relevance of shape "
            f"{as_array(relevance).shape} (sum over the hidden dimension first)"
        )
    return values


@dataclass(frozen=True)
class HeatmapRow:
    """One line of a heatmap: the tokens of a text and one relevance per token.

    Args:
        tokens (list of str): display strings of the tokens.
        relevance (np.ndarray): ``(len(tokens),)`` relevances; NaN and inf are
            allowed and drawn as marked (grey, hatched) tokens.
        label (str, optional): what the row shows, e.g. the method. Default: "".
        group (str, optional): rows with the same group (e.g. the same sentence)
            are shown together under this title. Default: "".
    """

    tokens: list[str]
    relevance: np.ndarray
    label: str = ""
    group: str = ""

    @classmethod
    def create(
        cls, tokens: Sequence[str], relevance: ArrayLike, label: str = "", group: str = ""
    ) -> HeatmapRow:
        """Row from any tensor or array of relevances, checked against the tokens."""
        for name, value in (("label", label), ("group", group)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        return cls(list(tokens), _check_pair(tokens, relevance), label, group)


@dataclass(frozen=True)
class _Piece:
    # How one token is drawn: line breaks and spaces before it, its visible text,
    # line breaks after it.
    breaks_before: int
    spaces_before: int
    text: str
    breaks_after: int


def _piece(token: str) -> _Piece:
    core = token.strip()
    if not core:  # a whitespace token: make it visible, keep its line breaks
        visible = token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣") or "∅"
        return _Piece(0, 0, visible, token.count("\n"))
    lead = token[: len(token) - len(token.lstrip())]
    trail = token[len(token.rstrip()) :]
    spaces = len(lead.rsplit("\n", 1)[-1].expandtabs(4))
    return _Piece(lead.count("\n"), spaces, core, trail.count("\n"))


def _rows_from(
    tokens: Sequence[Sequence[str]],
    relevances: Mapping[str, Sequence[ArrayLike]],
    text_labels: Sequence[str] | None,
) -> list[HeatmapRow]:
    if not isinstance(relevances, Mapping) or not relevances:
        raise ValueError(
            "relevances must be a non-empty mapping {method name: [relevance per text]}"
        )
    single = [i for i, text in enumerate(tokens) if isinstance(text, str)]
    if single:
        raise ValueError(
            f"tokens must hold one list of tokens per text, but texts {describe(single)} are "
            "single strings; for one text use text_heatmap_html or text_heatmap_figure"
        )
    texts = [list(text) for text in tokens]
    groups = list(text_labels or [f"text {i + 1}" for i in range(len(texts))])
    if len(groups) != len(texts):
        raise ValueError(f"{len(groups)} labels for {len(texts)} texts")
    for method, per_text in relevances.items():
        if len(per_text) != len(texts):
            raise ValueError(
                f"method {method!r} has {len(per_text)} relevance vectors for {len(texts)} texts"
            )
    return [
        HeatmapRow.create(text, per_text[index], str(method), str(group))
        for index, (text, group) in enumerate(zip(texts, groups, strict=True))
        for method, per_text in relevances.items()
    ]


def _limits(rows: Sequence[HeatmapRow], shared_scale: bool, max_abs: float | None) -> list[float]:
    # Colour limits from the finite relevances only (see symmetric_limit).
    if shared_scale or max_abs is not None:
        everything = np.concatenate([row.relevance for row in rows])
        return [symmetric_limit(everything, max_abs)] * len(rows)
    return [symmetric_limit(row.relevance) for row in rows]


def _check_rows(rows: Sequence[HeatmapRow]) -> list[HeatmapRow]:
    rows = list(rows)
    if not rows:
        raise ValueError("a heatmap needs at least one row")
    wrong = [index for index, row in enumerate(rows) if not isinstance(row, HeatmapRow)]
    if wrong:
        raise TypeError(
            f"rows {describe(wrong)} are not HeatmapRow objects; build them with "
            "HeatmapRow.create(tokens, relevance)"
        )
    return rows


def _warn_nonfinite(rows: Sequence[HeatmapRow]) -> bool:
    # Warns (once per view) about the rows with NaN or inf; True if there are any.
    labelled = []
    for index, row in enumerate(rows):
        bad = nonfinite_positions(row.relevance)
        if bad.size:
            name = f"row {index + 1}" + (f" {row.label!r}" if row.label else "")
            name += f" of {row.group!r}" if row.group else ""
            labelled.append((name, bad))
    if labelled:
        warn_bad_numbers(
            f"heatmap: NaN or inf relevance in {nonfinite_summary(labelled)}; drawn grey and "
            "hatched, left out of the colour scale"
        )
    return bool(labelled)


def _row_html(row: HeatmapRow, limit: float, cmap: Colormap) -> str:
    colours = relevance_colors(row.relevance, limit, cmap)
    parts = []
    for token, value, rgba in zip(row.tokens, row.relevance, colours, strict=True):
        piece = _piece(token)
        if np.isfinite(value):
            colour = f"background:{hex_colour(rgba)};color:{readable_text_color(rgba)}"
            kind, style = "cm-tok", colour
            tip = html.escape(f"{token!r}: {format_value(value)}", quote=True)
        else:
            kind, style = "cm-tok cm-bad", NONFINITE_CSS
            tip = html.escape(f"{token!r}: {format_value(value)} (not a finite number)", quote=True)
        parts.append(
            "\n" * piece.breaks_before
            + " " * piece.spaces_before
            + f'<span class="{kind}" title="{tip}" style="{style}">{html.escape(piece.text)}'
            + "</span>"
            + "\n" * piece.breaks_after
        )
    return "".join(parts)


class TextHeatmap:
    r"""Token heatmap as HTML: shown by Jupyter, saved as a standalone file.

    Build it with :func:`text_heatmap_html` (one text),
    :func:`batch_text_heatmap_html` (several texts and methods) or
    :meth:`from_captum_records`.

    NaN and infinite relevances are marked, not refused: such tokens are drawn grey
    and hatched with a dashed outline, the legend gets a note, a
    :class:`~captum_mamba.metrics.BadNumberWarning` names the rows and tokens when
    the heatmap is built, and the colour scale uses the finite values only.

    Args:
        rows (sequence of HeatmapRow): the lines to show.
        shared_scale (bool, optional): one colour scale for all rows instead of one
            per row (scaled by its largest finite ``|relevance|``). Default: False.
        max_abs (float, optional): fixed positive, finite colour limit (implies a
            shared scale). Default: None.
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        title (str, optional): heading of the view. Default: "".

    Raises:
        ValueError: for no rows, a bad ``max_abs`` or an unknown colour map.

    Examples::

        >>> heatmap = text_heatmap_html(tokens, relevance, label="MambaLRP")
        >>> heatmap            # rendered in a notebook cell
        >>> heatmap.save("explanation.html")
    """

    def __init__(
        self,
        rows: Sequence[HeatmapRow],
        shared_scale: bool = False,
        max_abs: float | None = None,
        cmap: str | Colormap = DEFAULT_CMAP,
        title: str = "",
    ) -> None:
        self.rows = _check_rows(rows)
        if not isinstance(title, str):
            raise TypeError(f"title must be a str, got {type(title).__name__}")
        shared_scale = check_bool(shared_scale, "shared_scale")
        self.limits = _limits(self.rows, shared_scale, max_abs)
        self.shared_scale = shared_scale or max_abs is not None
        self.cmap = get_cmap(cmap)
        self.title = title
        self.nonfinite = _warn_nonfinite(self.rows)

    @classmethod
    def from_captum_records(cls, records: Sequence[Any], **kwargs: Any) -> TextHeatmap:
        """Heatmap of Captum ``VisualizationDataRecord`` objects (one row each).

        Args:
            records (sequence of VisualizationDataRecord): e.g. the records given to
                ``captum.attr.visualization.visualize_text``.
            **kwargs: further arguments of :class:`TextHeatmap`.

        Returns:
            TextHeatmap: one row per record, labelled with its classes and score.
        """
        return cls([row_from_captum_record(record) for record in records], **kwargs)

    def to_html(self) -> str:
        """HTML fragment (a ``<div>`` with its own ``<style>``), e.g. for a notebook."""
        lines = []
        current_group = None
        for row, limit in zip(self.rows, self.limits, strict=True):
            if row.group and row.group != current_group:
                lines.append(
                    f'<tr><td class="cm-group" colspan="2">{html.escape(row.group)}</td></tr>'
                )
            current_group = row.group
            lines.append(
                f'<tr><td class="cm-label">{html.escape(row.label)}</td>'
                f'<td class="cm-text">{_row_html(row, limit, self.cmap)}</td></tr>'
            )
        low, high = (
            (f"{-self.limits[0]:.3g}", f"{self.limits[0]:.3g}")
            if self.shared_scale
            else ("-max |R| of the row", "+max |R| of the row")
        )
        heading = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        legend = legend_html(self.cmap, low, high, self.nonfinite)
        return (
            f'<div class="cm-heatmap"><style>{HEATMAP_CSS}</style>{heading}'
            f"<table>{''.join(lines)}</table>{legend}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_standalone_html(self) -> str:
        """A complete HTML document (no external resources)."""
        title = html.escape(self.title or "Token relevance")
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n</head>\n<body>\n{self.to_html()}\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_standalone_html` to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.to_standalone_html(), encoding="utf-8")
        return path


def text_heatmap_html(
    tokens: Sequence[str],
    relevance: ArrayLike,
    label: str = "",
    max_abs: float | None = None,
    cmap: str | Colormap = DEFAULT_CMAP,
    title: str = "",
) -> TextHeatmap:
    """HTML heatmap of one text.

    Args:
        tokens (sequence of str): display strings (see :func:`token_texts`).
        relevance (ArrayLike): one relevance per token, e.g. ``attr.sum(-1)[0]``;
            NaN or inf tokens are marked with a warning (see :class:`TextHeatmap`).
        label (str, optional): shown left of the text, e.g. the method. Default: "".
        max_abs (float, optional): colour limit. Default: None (largest finite ``|R|``).
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        title (str, optional): heading. Default: "".

    Returns:
        TextHeatmap: displayed by Jupyter; ``.save(path)`` writes an HTML file.

    Examples::

        >>> text_heatmap_html(token_texts(tokenizer, ids[0]), relevance.sum(-1)[0])
    """
    return TextHeatmap(
        [HeatmapRow.create(tokens, relevance, label)], max_abs=max_abs, cmap=cmap, title=title
    )


def batch_text_heatmap_html(
    tokens: Sequence[Sequence[str]],
    relevances: Mapping[str, Sequence[ArrayLike]],
    text_labels: Sequence[str] | None = None,
    shared_scale: bool = False,
    cmap: str | Colormap = DEFAULT_CMAP,
    title: str = "",
) -> TextHeatmap:
    """HTML heatmaps of several texts, each explained by several methods.

    Args:
        tokens (sequence of sequence of str): display strings of each text.
        relevances (Mapping[str, sequence of ArrayLike]): for each method, one
            relevance vector per text; NaN or inf tokens are marked with a warning
            (see :class:`TextHeatmap`).
        text_labels (sequence of str, optional): title of each text, e.g. the
            prediction. Default: None (``"text 1"``, ...).
        shared_scale (bool, optional): one colour scale for all rows. Default: False
            (each row scaled by its largest ``|relevance|``; methods differ in scale).
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        title (str, optional): heading. Default: "".

    Returns:
        TextHeatmap: one group per text, one row per method.

    Examples::

        >>> batch_text_heatmap_html([tokens_a, tokens_b],
        ...     {"MambaLRP": [lrp_a, lrp_b], "Saliency": [sal_a, sal_b]})
    """
    return TextHeatmap(
        _rows_from(tokens, relevances, text_labels),
        shared_scale=shared_scale,
        cmap=cmap,
        title=title,
    )


def to_captum_record(
    tokens: Sequence[str],
    relevance: ArrayLike,
    pred_prob: float,
    pred_class: int | str,
    true_class: int | str,
    attr_class: int | str,
    convergence_score: float = 0.0,
) -> Any:
    """Captum ``VisualizationDataRecord`` for ``captum.attr.visualization.visualize_text``.

    Args:
        tokens (sequence of str): display strings of the tokens.
        relevance (ArrayLike): one relevance per token.
        pred_prob (float): probability of the predicted class.
        pred_class (int or str): predicted class.
        true_class (int or str): true class.
        attr_class (int or str): explained class.
        convergence_score (float, optional): e.g. the convergence delta. Default: 0.

    Returns:
        VisualizationDataRecord: ``attr_score`` is the sum of the relevances.

    Raises:
        ValueError: for NaN or inf relevances (Captum's ``visualize_text`` cannot
            mark them; :func:`text_heatmap_html` can), a ``pred_prob`` outside
            ``[0, 1]`` or a non-finite ``convergence_score``.
    """
    values = _check_pair(tokens, relevance)
    bad = nonfinite_positions(values)
    if bad.size:
        raise ValueError(
            f"relevance is NaN or inf at tokens {describe(bad)}; Captum's visualize_text "
            "cannot mark them, use text_heatmap_html (which does) or fix the relevances"
        )
    pred_prob = check_number(pred_prob, "pred_prob", 0.0, 1.0)
    convergence_score = check_number(convergence_score, "convergence_score")
    return captum_visualization.VisualizationDataRecord(
        torch.from_numpy(values),
        pred_prob,
        pred_class,
        true_class,
        attr_class,
        float(values.sum()),
        list(tokens),
        convergence_score,
    )


def row_from_captum_record(record: Any) -> HeatmapRow:
    """:class:`HeatmapRow` of a Captum ``VisualizationDataRecord``.

    NaN or inf relevances are kept; the heatmaps mark them (and warn).

    Args:
        record (VisualizationDataRecord): tokens in ``raw_input_ids``, relevances in
            ``word_attributions``.

    Returns:
        HeatmapRow: labelled with the predicted, true and explained class.
    """
    label = (
        f"pred {record.pred_class} ({float(record.pred_prob):.2f}), true {record.true_class}, "
        f"explained {record.attr_class}"
    )
    return HeatmapRow.create(
        [str(token) for token in record.raw_input_ids], record.word_attributions, label
    )


@dataclass
class _Layout:
    # Positions in inches from the top-left corner of the figure.
    width: float
    fontsize: float
    measure: TextToPath = field(default_factory=TextToPath)

    def text_width(self, text: str, bold: bool = False) -> float:
        prop = FontProperties(size=self.fontsize, weight="bold" if bold else "normal")
        width, _, _ = self.measure.get_text_width_height_descent(text, prop, ismath=False)
        return width / 72.0

    @property
    def line_height(self) -> float:
        return 1.7 * self.fontsize / 72.0


def _place_tokens(
    layout: _Layout, tokens: Sequence[str], left: float
) -> tuple[list[tuple[float, int, float, str]], int]:
    # Returns (x, line, width, text) of each token and the number of lines used.
    space = layout.text_width(" ")
    pad = 0.02
    x, line, placed = left, 0, []
    for token in tokens:
        piece = _piece(token)
        if piece.breaks_before:
            line, x = line + piece.breaks_before, left
        width = layout.text_width(piece.text) + 2 * pad
        x += piece.spaces_before * space
        if x + width > layout.width and x > left:
            line, x = line + 1, left
        placed.append((x, line, width, piece.text))
        x += width
        if piece.breaks_after:
            line, x = line + piece.breaks_after, left
    return placed, line + 1


def _nonfinite_box(xy: tuple[float, float], width: float, height: float, gid: str) -> Rectangle:
    return Rectangle(
        xy,
        width,
        height,
        facecolor=NONFINITE_FACE,
        edgecolor=NONFINITE_EDGE,
        hatch=NONFINITE_HATCH,
        linestyle="--",
        linewidth=0.8,
        gid=gid,
    )


def heatmap_rows_figure(
    rows: Sequence[HeatmapRow],
    shared_scale: bool = False,
    max_abs: float | None = None,
    cmap: str | Colormap = DEFAULT_CMAP,
    width: float = 8.0,
    fontsize: float = 11.0,
    title: str = "",
    colorbar: bool = True,
) -> Figure:
    """Matplotlib figure of heatmap rows (the engine of the figure functions).

    NaN and infinite relevances are marked, not refused: such tokens are drawn on a
    grey, hatched box with a dashed border, a note below the text explains the
    style, a :class:`~captum_mamba.metrics.BadNumberWarning` names the rows and
    tokens, and the colour scale uses the finite values only.

    Args:
        rows (sequence of HeatmapRow): the lines to draw.
        shared_scale (bool, optional): one colour scale for all rows. Default: False.
        max_abs (float, optional): fixed positive, finite colour limit (implies a
            shared scale). Default: None.
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        width (float, optional): figure width in inches, positive. Default: 8.
        fontsize (float, optional): token font size in points, positive. Default: 11.
        title (str, optional): figure title. Default: "".
        colorbar (bool, optional): draw a colour bar below the text. Default: True.

    Returns:
        matplotlib.figure.Figure: the figure; its height follows from the text.
        Token boxes have the gid ``"token"``, the key of the NaN note
        ``"nonfinite-key"``.

    Raises:
        ValueError: for no rows, non-positive sizes, a bad ``max_abs`` or labels
            wider than 60% of the figure.
    """
    rows = _check_rows(rows)
    width = check_positive(width, "width")
    fontsize = check_positive(fontsize, "fontsize")
    shared_scale = check_bool(shared_scale, "shared_scale")
    colorbar = check_bool(colorbar, "colorbar")
    cmap = get_cmap(cmap)
    limits = _limits(rows, shared_scale, max_abs)
    nonfinite = _warn_nonfinite(rows)
    layout = _Layout(width=width - 0.15, fontsize=fontsize)
    labels = [row.label for row in rows]
    label_width = max((layout.text_width(label) for label in labels), default=0.0)
    left = 0.15 + (label_width + 0.2 if label_width else 0.0)
    if left > 0.6 * width:
        raise ValueError("labels take more than 60% of the figure width; shorten them")

    items: list[tuple[str, float, Any]] = []  # (kind, top, payload), top in inches
    top = 0.1
    if title:
        items.append(("title", top, title))
        top += layout.line_height * 1.2
    current_group = None
    for row, limit in zip(rows, limits, strict=True):
        if row.group and row.group != current_group:
            items.append(("group", top, row.group))
            top += layout.line_height
        current_group = row.group
        placed, lines = _place_tokens(layout, row.tokens, left)
        items.append(("row", top, (row, limit, placed)))
        top += lines * layout.line_height + 0.08
    note_top = top
    if nonfinite:
        top += layout.line_height
    bar_height = 0.8 if colorbar else 0.0
    height = top + bar_height + 0.1

    figure = Figure(figsize=(width, height))
    canvas = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    canvas.set_xlim(0.0, width)
    canvas.set_ylim(height, 0.0)  # inches from the top
    canvas.set_axis_off()
    line_height = layout.line_height
    for kind, y, payload in items:
        if kind in ("title", "group"):
            weight = "bold"
            size = fontsize * (1.15 if kind == "title" else 1.0)
            canvas.text(0.15, y + 0.75 * line_height, payload, fontsize=size, weight=weight)
            continue
        row, limit, placed = payload
        if row.label:
            canvas.text(0.15, y + 0.7 * line_height, row.label, fontsize=fontsize, color="#444")
        colours = relevance_colors(row.relevance, limit, cmap)
        finite = np.isfinite(row.relevance)
        for (x, line, token_width, text), rgba, ok in zip(placed, colours, finite, strict=True):
            line_top = y + line * line_height
            box = (x, line_top + 0.12 * line_height), token_width, 0.8 * line_height
            canvas.add_patch(
                Rectangle(*box, facecolor=rgba, edgecolor="none", gid="token")
                if ok
                else _nonfinite_box(*box, gid="token")
            )
            canvas.text(
                x + 0.02,
                line_top + 0.7 * line_height,
                text,
                fontsize=fontsize,
                color=readable_text_color(rgba) if ok else "black",
            )
    if nonfinite:
        key = (0.15, note_top + 0.2 * line_height), 0.35, 0.6 * line_height
        canvas.add_patch(_nonfinite_box(*key, gid="nonfinite-key"))
        canvas.text(0.6, note_top + 0.7 * line_height, NONFINITE_NOTE, fontsize=fontsize * 0.8)
    if colorbar:
        bar = figure.add_axes((0.3, 0.45 / height, 0.4, 0.12 / height), label="colorbar")
        limit = limits[0] if shared_scale or max_abs is not None else 1.0
        ColorbarBase(bar, cmap=cmap, norm=zero_centred_norm(limit), orientation="horizontal")
        bar.set_xlabel(
            "relevance"
            if shared_scale or max_abs is not None
            else "relevance / max |relevance| of the row",
            fontsize=fontsize * 0.8,
        )
        bar.tick_params(labelsize=fontsize * 0.75)
    return figure


def text_heatmap_figure(
    tokens: Sequence[str],
    relevance: ArrayLike,
    label: str = "",
    max_abs: float | None = None,
    cmap: str | Colormap = DEFAULT_CMAP,
    width: float = 8.0,
    fontsize: float = 11.0,
    title: str = "",
    colorbar: bool = True,
) -> Figure:
    """Matplotlib figure of one text's heatmap, for papers (``fig.savefig("x.pdf")``).

    Args:
        tokens (sequence of str): display strings (see :func:`token_texts`).
        relevance (ArrayLike): one relevance per token; NaN or inf tokens are
            marked with a warning (see :func:`heatmap_rows_figure`).
        label (str, optional): shown left of the text. Default: "".
        max_abs (float, optional): colour limit. Default: None (largest finite ``|R|``).
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        width (float, optional): figure width in inches. Default: 8.
        fontsize (float, optional): font size in points. Default: 11.
        title (str, optional): figure title. Default: "".
        colorbar (bool, optional): draw a colour bar. Default: True.

    Returns:
        matplotlib.figure.Figure: tokens wrapped to the width, on coloured boxes.

    Examples::

        >>> fig = text_heatmap_figure(tokens, relevance, title="MambaLRP")
        >>> fig.savefig("heatmap.pdf", bbox_inches="tight")
    """
    return heatmap_rows_figure(
        [HeatmapRow.create(tokens, relevance, label)],
        max_abs=max_abs,
        cmap=cmap,
        width=width,
        fontsize=fontsize,
        title=title,
        colorbar=colorbar,
    )


def batch_text_heatmap_figure(
    tokens: Sequence[Sequence[str]],
    relevances: Mapping[str, Sequence[ArrayLike]],
    text_labels: Sequence[str] | None = None,
    shared_scale: bool = False,
    cmap: str | Colormap = DEFAULT_CMAP,
    width: float = 10.0,
    fontsize: float = 11.0,
    title: str = "",
) -> Figure:
    """Matplotlib figure of several texts, each explained by several methods.

    Args:
        tokens (sequence of sequence of str): display strings of each text.
        relevances (Mapping[str, sequence of ArrayLike]): for each method, one
            relevance vector per text; NaN or inf tokens are marked with a warning
            (see :func:`heatmap_rows_figure`).
        text_labels (sequence of str, optional): title of each text. Default: None.
        shared_scale (bool, optional): one colour scale for all rows. Default: False.
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        width (float, optional): figure width in inches. Default: 10.
        fontsize (float, optional): font size in points. Default: 11.
        title (str, optional): figure title. Default: "".

    Returns:
        matplotlib.figure.Figure: one block per text, one row per method.

    Examples::

        >>> fig = batch_text_heatmap_figure([tokens_a, tokens_b],
        ...     {"MambaLRP": [lrp_a, lrp_b], "IG": [ig_a, ig_b]})
    """
    return heatmap_rows_figure(
        _rows_from(tokens, relevances, text_labels),
        shared_scale=shared_scale,
        cmap=cmap,
        width=width,
        fontsize=fontsize,
        title=title,
    )
