"""Render the README pictures (token heatmap, perturbation curves, conservation).

The pictures explain the sentiment classifier of :mod:`captum_mamba.apps.sentiment`
(trained once and cached) on SST-2 validation sentences. Command line::

    captum-mamba render-readme --data-dir ../shared/data --output docs/images
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from captum_mamba.apps.data import SST2_FILE, load_sst2
from captum_mamba.apps.sentiment import load_or_train_classifier
from captum_mamba.attr import MambaLRP
from captum_mamba.baselines.captum_methods import MethodSettings, build_methods
from captum_mamba.metrics import perturbation_curves, replacement_embedding, resample_curve
from captum_mamba.rules import MambaRules
from captum_mamba.visualization.plots import plot_conservation, plot_morf_lerf
from captum_mamba.visualization.text import batch_text_heatmap_figure, token_texts

HEATMAP_METHODS = ("MambaLRP", "Integrated Gradients", "Saliency")
CURVE_METHODS = (
    "MambaLRP",
    "Integrated Gradients",
    "Saliency",
    "SmoothGrad",
    "Attention Rollout",
    "Random",
)
HEATMAP_SENTENCES = (
    "A gorgeous and witty film, full of charm.",
    "A dull, lifeless and predictable mess.",
    "The plot is thin, but the performances are wonderful.",
)


def render(data_dir: Path, output: Path, num_sentences: int = 24) -> list[Path]:
    """Write ``token_heatmap.png``, ``perturbation_curves.png`` and ``conservation.png``.

    Args:
        data_dir (Path): folder with the SST-2, Rotten Tomatoes and tokenizer files.
        output (Path): folder for the pictures (created if missing).
        num_sentences (int, optional): SST-2 sentences behind the curves and the
            conservation plot. Default: 24.

    Returns:
        list of Path: the written files.
    """
    torch.set_num_threads(1)
    output.mkdir(parents=True, exist_ok=True)
    trained = load_or_train_classifier(data_dir)
    classifier, tokenizer = trained.model, trained.tokenizer
    embedding = classifier.get_input_embeddings()

    def classify(embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return classifier(inputs_embeds=embeds, attention_mask=attention_mask)

    methods = build_methods(CURVE_METHODS, classifier, classify, MethodSettings(ig_steps=16))

    def explain(sentence: str) -> tuple[Tensor, Tensor, Tensor, int, dict[str, Tensor]]:
        ids, mask = trained.encode([sentence])
        embeds = embedding(ids).detach()
        with torch.no_grad():
            target = int(classify(embeds, mask).argmax(-1))
        scores = {method.name: method(embeds, target, (mask,))[0] for method in methods}
        return ids[0], mask, embeds, target, scores

    shown = [explain(sentence) for sentence in HEATMAP_SENTENCES]
    figure = batch_text_heatmap_figure(
        [token_texts(tokenizer, ids) for ids, *_ in shown],
        {name: [scores[name] for *_, scores in shown] for name in HEATMAP_METHODS},
        text_labels=[
            f"explaining the predicted class: {'positive' if target else 'negative'}"
            for _, _, _, target, _ in shown
        ],
        width=9.0,
    )
    paths = [output / "token_heatmap.png"]
    figure.savefig(paths[-1], dpi=130, bbox_inches="tight")

    sentences = [example.text for example in load_sst2(data_dir / SST2_FILE)[:num_sentences]]
    fractions = torch.linspace(0, 1, 11)
    zeros = replacement_embedding(embedding, "zero")
    curves: dict[str, dict[str, list[Tensor]]] = {"morf": {}, "lerf": {}}
    for sentence in sentences:
        _, mask, embeds, target, scores = explain(sentence)
        for name, score in scores.items():
            found = perturbation_curves(classify, embeds, score[None], target, zeros, (mask,))
            for kind, per_method in curves.items():
                per_method.setdefault(name, []).append(resample_curve(found[kind][0], fractions))
    figure = plot_morf_lerf(
        {name: torch.stack(rows) for name, rows in curves["morf"].items()},
        {name: torch.stack(rows) for name, rows in curves["lerf"].items()},
        fractions,
        title=f"Mamba sentiment classifier, {len(sentences)} SST-2 sentences "
        "(tokens replaced by zeros)",
    )
    paths.append(output / "perturbation_curves.png")
    figure.savefig(paths[-1], dpi=110)

    ids, mask = trained.encode(sentences)
    embeds = embedding(ids).detach()
    with torch.no_grad():
        logits = classify(embeds, mask)
    target = logits.argmax(-1)
    sums = {
        name: MambaLRP(classifier, classify, rules)
        .attribute(embeds, target=target, additional_forward_args=(mask,))
        .sum((1, 2))
        for name, rules in (
            ("MambaLRP", MambaRules()),
            ("Gradient x Input", MambaRules.gradient_x_input()),
        )
    }
    ax = plot_conservation(sums, logits.gather(1, target[:, None])[:, 0])
    paths.append(output / "conservation.png")
    ax.figure.savefig(paths[-1], dpi=110)
    return paths
