"""Tests of captum_mamba.visualization: token heatmaps (HTML, figures) and plots.

Relevances come from a tiny seeded Mamba model explained with MambaLRP; every
figure is rendered to PNG and checked for its axes, labels and drawn data, which
are compared with simple loop-based reimplementations written here.
"""

from __future__ import annotations

import html.parser
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from captum_mamba import MambaLRP
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.visualization import (
    HeatmapRow,
    TextHeatmap,
    area_under_curve,
    batch_text_heatmap_figure,
    batch_text_heatmap_html,
    image_heatmaps_figure,
    merge_word_pieces,
    patch_relevance_map,
    plot_conservation,
    plot_image_heatmap,
    plot_morf_lerf,
    plot_relevance_distance,
    plot_relevance_over_context,
    row_from_captum_record,
    text_heatmap_figure,
    text_heatmap_html,
    to_captum_record,
    token_texts,
    top_k_distances,
)

matplotlib.use("Agg")

CORPUS = [
    "The film's ending isn't great, but its naïve charm wins.",
    "A remarkably touching story about grief — and about hope.",
    "Dull, overlong and utterly predictable.\n  Skip it.",
    "Émouvant et drôle: un film à voir 😀 absolument.",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A tiny byte-level BPE tokenizer (the GPT-NeoX scheme) trained in code."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS * 3, trainer)
    return bpe


@pytest.fixture(scope="module")
def explained(tokenizer: Tokenizer) -> dict[str, object]:
    """MambaLRP token relevances of a tiny random LM for each corpus sentence."""
    vocab = tokenizer.get_vocab_size()
    model = random_mamba_lm(
        mamba_config(vocab_size=vocab), seed=3, dtype=torch.float64, zero_biases=True
    )
    lrp = MambaLRP(model)
    tokens, relevances, sums, logits = [], [], [], []
    for text in CORPUS:
        ids = torch.tensor([tokenizer.encode(text).ids])
        embeds = model.get_input_embeddings()(ids).detach()
        target = (-1, int(ids[0, -1]))
        relevance = lrp.attribute(embeds, target=target).sum(-1)[0]
        with torch.no_grad():
            logit = model(inputs_embeds=embeds).logits[0, -1, target[1]]
        tokens.append(token_texts(tokenizer, ids[0]))
        relevances.append(relevance.numpy())
        sums.append(float(relevance.sum()))
        logits.append(float(logit))
    return {"tokens": tokens, "relevances": relevances, "sums": sums, "logits": logits}


def _save_png(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=60)
    assert path.read_bytes()[:8] == PNG_MAGIC


def _figure_texts(figure: Figure) -> list[str]:
    return [text.get_text() for text in figure.findobj(matplotlib.text.Text)]


# --- token display strings ------------------------------------------------------


def test_token_texts_join_to_the_decoded_text(tokenizer: Tokenizer) -> None:
    for text in CORPUS:
        ids = tokenizer.encode(text).ids
        texts = token_texts(tokenizer, ids)
        assert len(texts) == len(ids)
        assert "".join(texts) == tokenizer.decode(ids) == text
        assert all("\ufffd" not in piece for piece in texts)


def test_token_texts_match_per_token_decoding_where_it_is_whole(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(CORPUS[0]).ids
    for token_id, shown in zip(ids, token_texts(tokenizer, ids), strict=True):
        alone = tokenizer.decode([token_id])
        if "\ufffd" not in alone:
            assert shown == alone


def test_token_texts_of_a_sentencepiece_style_tokenizer() -> None:
    class Pieces:
        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            return [["▁The", "▁fil", "m", "'s", "▁end"][i] for i in ids]

    assert token_texts(Pieces(), [0, 1, 2, 3, 4]) == [" The", " fil", "m", "'s", " end"]


@pytest.mark.parametrize("kind", ["WordLevel", "WordPiece"])
def test_word_vocabularies_give_one_word_per_token_or_piece(kind: str) -> None:
    # WordLevel/WordPiece tokens carry no spaces; without them merge_word_pieces joined a
    # whole text into one "word".
    vocab = {"[UNK]": 0, "the": 1, "film": 2, "end": 3, "##s": 4}
    model = (
        models.WordLevel(vocab, unk_token="[UNK]")
        if kind == "WordLevel"
        else models.WordPiece(vocab, unk_token="[UNK]")
    )
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    ids = tokenizer.encode("the films end").ids
    texts = token_texts(tokenizer, ids)
    words, sums = merge_word_pieces(texts, np.arange(1.0, len(ids) + 1))
    if kind == "WordLevel":  # "films" is not in the vocabulary: one unknown word
        assert texts == ["the", " [UNK]", " end"]
        assert words == texts
        np.testing.assert_allclose(sums, [1.0, 2.0, 3.0])
    else:
        assert texts == ["the", " film", "s", " end"]
        assert words == ["the", " films", " end"]
        np.testing.assert_allclose(sums, [1.0, 5.0, 4.0])


def test_merge_word_pieces_joins_pieces_and_adds_relevance() -> None:
    tokens = ["The", " fil", "m", "'s", " end", "\n", "  ", "but", ","]
    relevance = np.array([1.0, 2.0, 0.5, 0.25, -1.0, 0.125, 0.0625, 3.0, -0.5])
    words, sums = merge_word_pieces(tokens, relevance)
    assert words == ["The", " film's", " end", "\n  but,"]
    np.testing.assert_allclose(sums, [1.0, 2.75, -1.0, 2.6875])
    assert sums.sum() == pytest.approx(relevance.sum())


def test_mismatched_relevance_is_rejected() -> None:
    with pytest.raises(ValueError, match="one relevance per token"):
        text_heatmap_html(["a", " b"], np.zeros(3))


# --- HTML ------------------------------------------------------------------------


class _StrictParser(html.parser.HTMLParser):
    """Checks that tags nest and collects the text of every token span."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.doctype = ""
        self.spans: list[dict[str, str]] = []
        self.span_texts: list[str] = []
        self.external: list[str] = []
        self.in_token = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if any(key in ("src", "href") for key in attributes):
            self.external.append(tag)
        if tag == "span" and "cm-tok" in attributes.get("class", ""):
            self.spans.append(attributes)
            self.span_texts.append("")
            self.in_token = True
        if tag not in ("meta", "br", "link", "img", "hr", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        self.in_token = False

    def handle_data(self, data: str) -> None:
        if self.in_token:
            self.span_texts[-1] += data


def _visible(token: str) -> str:
    core = token.strip()
    # Whitespace tokens are shown with visible symbols, empty ones (the first bytes
    # of a character completed by the next token) as "∅".
    return core or token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣") or "∅"


def _background(span: dict[str, str]) -> tuple[int, int, int]:
    match = re.search(r"background:#([0-9a-f]{6})", span["style"])
    assert match, span["style"]
    return tuple(int(match.group(1)[i : i + 2], 16) for i in (0, 2, 4))


def test_standalone_html_is_valid_and_contains_every_token(
    explained: dict[str, object], tmp_path: Path
) -> None:
    tokens, relevance = explained["tokens"][2], explained["relevances"][2]
    path = text_heatmap_html(tokens, relevance, label="MambaLRP", title="t").save(
        tmp_path / "heatmap.html"
    )
    document = path.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    parser = _StrictParser()
    parser.feed(document)
    parser.close()
    assert parser.stack == []
    assert parser.doctype.lower() == "doctype html"
    assert parser.external == []
    assert '<meta charset="utf-8">' in document
    assert parser.span_texts == [_visible(token) for token in tokens]
    assert [span["title"].rsplit(": ", 1)[0] for span in parser.spans] == [
        repr(token) for token in tokens
    ]


def test_html_colours_are_centred_on_zero() -> None:
    tokens = ["good", " bad", " neutral", " fine"]
    heatmap = text_heatmap_html(tokens, np.array([2.0, -4.0, 0.0, 1.0]))
    parser = _StrictParser()
    parser.feed(heatmap._repr_html_())
    red, blue, white, light_red = (_background(span) for span in parser.spans)
    assert red[0] > 200 and red[1] < 160 and red[2] < 160  # +2 of limit 4: half red
    assert blue == (0, 0, 255)  # the largest |R| is negative: full blue
    assert min(white) >= 248
    assert light_red[0] == 255 and light_red[1] > red[1]  # weaker than +2


def test_batch_html_groups_texts_and_methods(explained: dict[str, object]) -> None:
    tokens = explained["tokens"][:2]
    relevances = {
        "MambaLRP": explained["relevances"][:2],
        "negated": [-r for r in explained["relevances"][:2]],
    }
    heatmap = batch_text_heatmap_html(tokens, relevances, text_labels=["first", "second"])
    document = heatmap.to_standalone_html()
    parser = _StrictParser()
    parser.feed(document)
    expected = [_visible(t) for text in tokens for _ in range(2) for t in text]
    assert parser.span_texts == expected
    assert document.count("cm-group") >= 2 and "first" in document and "second" in document
    assert len(heatmap.rows) == 4
    with pytest.raises(ValueError, match="relevance vectors for 2 texts"):
        batch_text_heatmap_html(tokens, {"bad": explained["relevances"][:1]})


def test_captum_record_round_trip(explained: dict[str, object]) -> None:
    tokens, relevance = explained["tokens"][0], explained["relevances"][0]
    record = to_captum_record(tokens, relevance, 0.9, 1, 1, 1, convergence_score=0.0)
    assert record.raw_input_ids == tokens
    assert record.attr_score == pytest.approx(float(np.sum(relevance)))
    row = row_from_captum_record(record)
    assert row.tokens == tokens
    np.testing.assert_allclose(row.relevance, relevance)
    heatmap = TextHeatmap.from_captum_records([record, record])
    assert heatmap._repr_html_().count("cm-tok") >= 2 * len(tokens)
    pytest.importorskip("IPython", reason="Captum's visualize_text needs IPython")
    from captum.attr import visualization

    assert "<table" in visualization.visualize_text([record]).data


# --- Matplotlib heatmaps --------------------------------------------------------------


def test_text_heatmap_figure_draws_every_token(
    explained: dict[str, object], tmp_path: Path
) -> None:
    tokens, relevance = explained["tokens"][1], explained["relevances"][1]
    figure = text_heatmap_figure(tokens, relevance, label="MambaLRP", title="explanation")
    _save_png(figure, tmp_path / "text.png")
    texts = _figure_texts(figure)
    for token in tokens:
        assert _visible(token) in texts
    assert "MambaLRP" in texts and "explanation" in texts
    colorbar = [ax for ax in figure.axes if ax.get_label() == "colorbar"]
    assert len(colorbar) == 1 and "relevance" in colorbar[0].get_xlabel()
    boxes = [p for p in figure.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(boxes) == len(tokens)
    strongest = int(np.argmax(np.abs(relevance)))
    expected = (1.0, 0.0, 0.0) if relevance[strongest] > 0 else (0.0, 0.0, 1.0)
    np.testing.assert_allclose(boxes[strongest].get_facecolor()[:3], expected)


def test_batch_heatmap_figure_has_a_block_per_text(
    explained: dict[str, object], tmp_path: Path
) -> None:
    tokens = explained["tokens"][:3]
    first = explained["relevances"][:3]
    relevances = {"MambaLRP": first, "abs": [abs(r) for r in first]}
    figure = batch_text_heatmap_figure(tokens, relevances, text_labels=["a", "b", "c"])
    _save_png(figure, tmp_path / "batch.png")
    texts = _figure_texts(figure)
    assert {"a", "b", "c"} <= set(texts)
    assert texts.count("MambaLRP") == 3 and texts.count("abs") == 3
    boxes = [p for p in figure.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(boxes) == 2 * sum(len(t) for t in tokens)


def test_long_text_wraps_within_the_figure(tmp_path: Path) -> None:
    tokens = [" word"] * 200
    figure = text_heatmap_figure(tokens, np.linspace(-1, 1, 200), width=5.0, colorbar=False)
    _save_png(figure, tmp_path / "long.png")
    boxes = [p for p in figure.axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert max(b.get_x() + b.get_width() for b in boxes) <= 5.0
    assert len({round(b.get_y(), 6) for b in boxes}) > 10  # many lines
    assert figure.get_size_inches()[1] > 2.0


# --- plots -------------------------------------------------------------------------


def _perturbation_curve(
    model: torch.nn.Module, embeds: torch.Tensor, target: tuple[int, int], order: np.ndarray
) -> np.ndarray:
    """Logit after zeroing the embeddings of the first k tokens of ``order``, k = 0..n."""
    values = []
    for removed in range(len(order) + 1):
        perturbed = embeds.clone()
        perturbed[0, order[:removed].copy()] = 0.0
        with torch.no_grad():
            values.append(float(model(inputs_embeds=perturbed).logits[0, target[0], target[1]]))
    return np.array(values)


def test_perturbation_curves_from_a_tiny_model(tokenizer: Tokenizer, tmp_path: Path) -> None:
    vocab = tokenizer.get_vocab_size()
    model = random_mamba_lm(mamba_config(vocab_size=vocab), seed=5, dtype=torch.float64)
    lrp = MambaLRP(model)
    morf, lerf = {"MambaLRP": [], "random": []}, {"MambaLRP": [], "random": []}
    rng = np.random.default_rng(0)
    for text in CORPUS[:3]:
        ids = torch.tensor([tokenizer.encode(text).ids[:12]])
        embeds = model.get_input_embeddings()(ids).detach()
        target = (-1, int(ids[0, -1]))
        relevance = lrp.attribute(embeds, target=target).sum(-1)[0].numpy()
        for name, score in (("MambaLRP", relevance), ("random", rng.normal(size=relevance.size))):
            order = np.argsort(-score)
            morf[name].append(_perturbation_curve(model, embeds, target, order))
            lerf[name].append(_perturbation_curve(model, embeds, target, order[::-1]))
    fractions = np.linspace(0.0, 1.0, 13)
    figure = plot_morf_lerf(morf, lerf, fractions, title="tiny model")
    _save_png(figure, tmp_path / "curves.png")
    left, right = figure.axes
    assert left.get_xlabel() == right.get_xlabel() == "fraction of tokens perturbed"
    assert left.get_ylabel() == "model output (logit)"
    assert left.get_title().startswith("MoRF") and right.get_title().startswith("LeRF")
    for ax, curves in ((left, morf), (right, lerf)):
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        for (name, rows), label, line in zip(curves.items(), labels, ax.get_lines(), strict=True):
            mean = np.mean(rows, axis=0)
            np.testing.assert_allclose(line.get_ydata(), mean)
            trapezoids = sum(
                (fractions[i + 1] - fractions[i]) * (mean[i] + mean[i + 1]) / 2 for i in range(12)
            )
            assert label == f"{name} (AUC {trapezoids:.3g})"


def test_area_under_curve_matches_trapezoids() -> None:
    x = np.array([0.0, 0.1, 0.5, 1.0])
    y = np.array([4.0, 2.0, 1.0, 0.0])
    expected = (0.1 * 3.0 + 0.4 * 1.5 + 0.5 * 0.5) / 1.0
    assert area_under_curve(y, x) == pytest.approx(expected)
    assert area_under_curve([1.0, 3.0]) == pytest.approx(2.0)


def test_conservation_scatter(explained: dict[str, object], tmp_path: Path) -> None:
    sums, logits = np.array(explained["sums"]), np.array(explained["logits"])
    np.testing.assert_allclose(sums, logits, atol=1e-9)  # zero biases: exact conservation
    ax = plot_conservation({"MambaLRP": sums, "half": sums / 2}, logits)
    _save_png(ax.figure, tmp_path / "conservation.png")
    assert ax.get_xlabel() == "explained output f(x)"
    assert ax.get_ylabel() == "sum of relevances Σ R_i"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["MambaLRP", "half", "Σ R = f(x)"]
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points, np.stack([logits, sums], 1))


def test_top_k_distances_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    relevance = rng.normal(size=40)
    for position in (39, 25, 3):
        ranked = sorted(range(position + 1), key=lambda i: -relevance[i])[:5]
        expected = [position + 1 - i for i in ranked]
        assert top_k_distances(relevance, k=5, predicted_position=position).tolist() == expected
    with pytest.raises(ValueError, match="outside"):
        top_k_distances(relevance, predicted_position=40)


def test_relevance_distance_and_context_plots(tokenizer: Tokenizer, tmp_path: Path) -> None:
    text = " ".join(CORPUS)
    ids = torch.tensor([tokenizer.encode(text).ids])
    model = random_mamba_lm(
        mamba_config(vocab_size=tokenizer.get_vocab_size()), seed=2, dtype=torch.float64
    )
    lrp = MambaLRP(model)
    embeds = model.get_input_embeddings()(ids).detach()
    distances = []
    last_relevance = None
    for position in range(10, ids.shape[1] - 1, 7):
        target = (position, int(ids[0, position + 1]))
        relevance = lrp.attribute(embeds[:, : position + 1], target=target).sum(-1)[0]
        distances.append(top_k_distances(relevance, k=3))
        last_relevance = relevance
    ax = plot_relevance_distance({"random model": np.concatenate(distances)}, bins=10)
    _save_png(ax.figure, tmp_path / "distance.png")
    assert ax.get_xlabel() == "distance to the predicted token (tokens)"
    assert ax.get_ylabel() == "fraction of top-k relevant tokens"
    all_distances = np.concatenate(distances)
    heights = np.array([patch.get_height() for patch in ax.patches])
    assert heights.sum() == pytest.approx(1.0)
    first = ax.patches[0]
    in_first = np.mean(all_distances < first.get_x() + first.get_width())
    assert heights[0] == pytest.approx(in_first)

    ax = plot_relevance_distance({"a": all_distances, "b": all_distances[:5]}, log_x=True)
    edges = [patch.get_x() for patch in ax.patches]
    assert all(edge % 1 == 0.5 for edge in edges)  # integer distances never sit on an edge
    assert ax.get_xscale() == "log"

    context_tokens = token_texts(tokenizer, ids[0, : last_relevance.numel()])
    ax = plot_relevance_over_context(last_relevance, context_tokens, annotate=3)
    _save_png(ax.figure, tmp_path / "context.png")
    assert ax.get_xlabel() == "position in the context" and ax.get_ylabel() == "relevance"
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], last_relevance.numpy())
    assert len(ax.texts) == 3


def test_patch_relevance_map_against_a_loop() -> None:
    relevance = np.arange(6.0)
    grid = patch_relevance_map(relevance, (4, 6), grid=(2, 3))
    for row in range(4):
        for col in range(6):
            assert grid[row, col] == relevance[(row // 2) * 3 + col // 2]
    with pytest.raises(ValueError, match="square"):
        patch_relevance_map(np.ones(6), (4, 6))
    with pytest.raises(ValueError, match="tile"):
        patch_relevance_map(np.ones(4), (5, 5))


def test_image_heatmap_from_a_tiny_patch_model(tmp_path: Path) -> None:
    # A tiny "vision Mamba": 4x4 patches of an 8x8 RGB image, linearly embedded and
    # read by a random Mamba model; MambaLRP gives one relevance per patch.
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=generator, dtype=torch.float64)
    patches = image.unfold(1, 2, 2).unfold(2, 2, 2).permute(1, 2, 0, 3, 4).reshape(1, 16, 12)
    projection = torch.randn(12, 16, generator=generator, dtype=torch.float64)
    model = random_mamba_lm(mamba_config(), seed=4, dtype=torch.float64)
    relevance = MambaLRP(model).attribute(patches @ projection, target=(-1, 3)).sum(-1)[0]

    ax = plot_image_heatmap(image, relevance, title="MambaLRP")
    _save_png(ax.figure, tmp_path / "image.png")
    assert ax.get_title() == "MambaLRP"
    background, heat = ax.get_images()
    assert background.get_array().shape == (8, 8)
    shown = np.asarray(heat.get_array())
    for row in range(8):
        for col in range(8):
            assert shown[row, col] == pytest.approx(float(relevance[(row // 2) * 4 + col // 2]))
    limit = float(relevance.abs().max())
    assert heat.norm.vmin == pytest.approx(-limit) and heat.norm.vmax == pytest.approx(limit)
    assert ax.figure.axes[-1].get_ylabel() == "relevance"  # the colour bar

    figure = image_heatmaps_figure(image, {"MambaLRP": relevance, "negated": -relevance})
    _save_png(figure, tmp_path / "images.png")
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:3] == ["input", "MambaLRP", "negated"]


def test_heatmap_rows_reject_an_empty_view() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        TextHeatmap([])
    row = HeatmapRow.create(["a"], [1.0])
    assert row.relevance.shape == (1,)
