"""Demo: explain real sentiment predictions of a Mamba model with MambaLRP.

``captum-mamba demo`` trains (once, well under a minute on a CPU, then cached) a small
Mamba sentiment classifier on Rotten Tomatoes reviews, predicts a few SST-2 validation
sentences, explains each prediction with MambaLRP, prints the token relevances and
the conservation check, and writes a heatmap (PNG and standalone HTML).

With internet access, ``--hub-model state-spaces/mamba-130m-hf`` instead explains
the next-token prediction of a pretrained Mamba language model for ``--prompt``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from captum_mamba.apps.data import SST2_FILE, LabelledText, load_sst2
from captum_mamba.apps.sentiment import ClassifierSetup, TextClassifier, load_or_train_classifier
from captum_mamba.attr import LayerMambaLRP
from captum_mamba.attr.forward import fast_forward
from captum_mamba.visualization import (
    batch_text_heatmap_figure,
    batch_text_heatmap_html,
    token_texts,
)


def _format_tokens(tokens: list[str], relevance: torch.Tensor) -> str:
    pairs = zip(tokens, relevance.tolist(), strict=True)
    return " ".join(f"{token.strip() or repr(token)}[{score:+.2f}]" for token, score in pairs)


def explain_sentiment(
    data_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    count: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Explain SST-2 predictions of the demo's (cached) sentiment classifier: print the
    token relevances and write ``sentiment_heatmap.png`` and ``.html``.

    Args:
        data_dir (str or PathLike): the shared data folder (SST-2, Rotten Tomatoes, the
            tokenizer).
        output_dir (str or PathLike): folder of the heatmaps (created if missing).
        count (int, optional): SST-2 validation sentences explained. Default: 4.
        cache_dir (str or PathLike, optional): classifier checkpoints. Default: None
            (``$CAPTUM_MAMBA_CACHE`` or ``~/.cache/captum-mamba``).
    """
    classifier = load_or_train_classifier(data_dir, cache_dir, ClassifierSetup.quick())
    examples = load_sst2(Path(data_dir) / SST2_FILE)[:count]
    print(
        f"Mamba sentiment classifier ({classifier.setup.describe()}), accuracy "
        f"{classifier.metrics['test_accuracy']:.3f} on all SST-2 validation sentences\n"
    )
    explain_examples(classifier, examples, output_dir)


def explain_examples(
    classifier: TextClassifier,
    examples: Sequence[LabelledText],
    output_dir: str | os.PathLike[str],
) -> Path:
    """Explain a classifier's predictions of labelled texts with MambaLRP: print, per
    text, the true and predicted class, the explained logit (whose class it is, its
    value and the class probability) and the token relevances; write
    ``sentiment_heatmap.png`` and ``.html`` with the true and predicted class of every
    row, misclassified rows marked.

    Args:
        classifier (TextClassifier): the classifier.
        examples (sequence of LabelledText): the texts and their labels.
        output_dir (str or PathLike): folder of the heatmaps (created if missing).

    Returns:
        Path: the PNG heatmap.
    """
    model, tokenizer, labels = classifier.model, classifier.tokenizer, classifier.label_names
    texts = [e.text for e in examples]
    ids, mask = classifier.encode(texts)
    logits = classifier.logits(texts)  # through the package's scans: no kernel messages
    probabilities = logits.double().softmax(-1)
    predicted = logits.argmax(-1)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    relevance, delta = lrp.attribute(
        ids,
        target=predicted.tolist(),
        additional_forward_args=(mask,),
        return_convergence_delta=True,
    )
    token_relevance = relevance.sum(-1)
    all_tokens, rows, row_labels = [], [], []
    for i, example in enumerate(examples):
        real = mask[i].bool()
        tokens = token_texts(tokenizer, ids[i][real].tolist())
        scores = token_relevance[i][real]
        guess = int(predicted[i])
        wrong = guess != example.label
        mark = "  MISCLASSIFIED" if wrong else ""
        print(f"[{i}] {example.text}")
        print(
            f"    label {labels[example.label]}, predicted {labels[guess]} with probability "
            f"{probabilities[i, guess].item():.2f}{mark}"
        )
        print(
            f"    explained: the logit of class {labels[guess]!r}, "
            f"{logits[i, guess].item():+.3f} (the class with the largest logit is "
            f"predicted); sum of relevances {scores.sum().item():+.3f}, delta "
            f"{delta[i].item():+.1e} (absorbed by the conv biases)"
        )
        print(f"    {_format_tokens(tokens, scores)}\n")
        all_tokens.append(tokens)
        rows.append(scores)
        row_labels.append(
            f"[{i}] label {labels[example.label]}, predicted {labels[guess]} "
            f"(p {probabilities[i, guess].item():.2f})" + (" - misclassified" if wrong else "")
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = batch_text_heatmap_figure(
        all_tokens,
        {"MambaLRP": rows},
        text_labels=row_labels,
        title="MambaLRP relevance for the logit of the predicted class",
    )
    png = out / "sentiment_heatmap.png"
    figure.savefig(png, dpi=150, bbox_inches="tight")
    batch_text_heatmap_html(all_tokens, {"MambaLRP": rows}, text_labels=row_labels).save(
        out / "sentiment_heatmap.html"
    )
    print(f"heatmaps written to {png} and .html")
    return png


def explain_hub_model(model_id: str, prompt: str) -> None:
    """Explain the next-token prediction of a pretrained hub model (needs internet) and
    print the token relevances.

    Args:
        model_id (str): a transformers Mamba language model, e.g.
            ``"state-spaces/mamba-130m-hf"``.
        prompt (str): the text whose next token is explained.
    """
    from transformers import AutoTokenizer, MambaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = MambaForCausalLM.from_pretrained(model_id).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad(), fast_forward(model):
        next_token = model(ids, use_cache=False).logits[0, -1].argmax().item()
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    relevance, delta = lrp.attribute(ids, target=(-1, next_token), return_convergence_delta=True)
    tokens = token_texts(tokenizer, ids[0].tolist())
    print(f"{prompt!r} -> {tokenizer.decode([next_token])!r} (delta {delta.item():+.1e})")
    print(_format_tokens(tokens, relevance.sum(-1)[0]))
