"""Demo: explain real sentiment predictions of a Mamba model with MambaLRP.

``captum-mamba-demo`` trains (once, well under a minute on a CPU, then cached) a small
Mamba sentiment classifier on Rotten Tomatoes reviews, predicts a few SST-2 validation
sentences, explains each prediction with MambaLRP, prints the token relevances and
the conservation check, and writes a heatmap (PNG and standalone HTML).

With internet access, ``--hub-model state-spaces/mamba-130m-hf`` instead explains
the next-token prediction of a pretrained Mamba language model for ``--prompt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from captum_mamba.attr import LayerMambaLRP
from captum_mamba.data import SST2_FILE, load_sst2
from captum_mamba.sentiment import ClassifierSetup, load_or_train_classifier
from captum_mamba.visualization import (
    batch_text_heatmap_figure,
    batch_text_heatmap_html,
    token_texts,
)


def _format_tokens(tokens: list[str], relevance: torch.Tensor) -> str:
    pairs = zip(tokens, relevance.tolist(), strict=True)
    return " ".join(f"{token.strip() or repr(token)}[{score:+.2f}]" for token, score in pairs)


def explain_sentiment(args: argparse.Namespace) -> None:
    """Explain SST-2 predictions of the demo's (cached) sentiment classifier."""
    classifier = load_or_train_classifier(args.data_dir, args.cache_dir, ClassifierSetup.quick())
    model, tokenizer, labels = classifier.model, classifier.tokenizer, classifier.label_names
    examples = load_sst2(Path(args.data_dir) / SST2_FILE)[: args.count]
    ids, mask = classifier.encode([e.text for e in examples])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
    predicted = logits.argmax(-1)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    relevance, delta = lrp.attribute(
        ids,
        target=predicted.tolist(),
        additional_forward_args=(mask,),
        return_convergence_delta=True,
    )
    token_relevance = relevance.sum(-1)
    print(
        f"Mamba sentiment classifier ({classifier.setup.describe()}), accuracy "
        f"{classifier.metrics['test_accuracy']:.3f} on all SST-2 validation sentences\n"
    )
    all_tokens, rows = [], []
    for i, example in enumerate(examples):
        real = mask[i].bool()
        tokens = token_texts(tokenizer, ids[i][real].tolist())
        scores = token_relevance[i][real]
        explained = logits[i, predicted[i]].item()
        print(f"[{i}] {example.text}")
        print(
            f"    label {labels[example.label]}, predicted {labels[predicted[i]]} "
            f"(logit {explained:+.3f}); sum of relevances {scores.sum().item():+.3f}, "
            f"delta {delta[i].item():+.1e} (absorbed by the conv biases)"
        )
        print(f"    {_format_tokens(tokens, scores)}\n")
        all_tokens.append(tokens)
        rows.append(scores)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    row_labels = [f"[{i}] predicted {labels[p]}" for i, p in enumerate(predicted.tolist())]
    figure = batch_text_heatmap_figure(
        all_tokens,
        {"MambaLRP": rows},
        text_labels=row_labels,
        title="MambaLRP relevance for the predicted class",
    )
    figure.savefig(out / "sentiment_heatmap.png", dpi=150, bbox_inches="tight")
    batch_text_heatmap_html(all_tokens, {"MambaLRP": rows}, text_labels=row_labels).save(
        out / "sentiment_heatmap.html"
    )
    print(f"heatmaps written to {out / 'sentiment_heatmap.png'} and .html")


def explain_hub_model(args: argparse.Namespace) -> None:
    """Explain the next-token prediction of a pretrained hub model (needs internet)."""
    from transformers import AutoTokenizer, MambaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(args.hub_model)
    model = MambaForCausalLM.from_pretrained(args.hub_model).eval()
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = model(ids, use_cache=False).logits[0, -1].argmax().item()
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    relevance, delta = lrp.attribute(ids, target=(-1, next_token), return_convergence_delta=True)
    tokens = token_texts(tokenizer, ids[0].tolist())
    print(f"{args.prompt!r} -> {tokenizer.decode([next_token])!r} (delta {delta.item():+.1e})")
    print(_format_tokens(tokens, relevance.sum(-1)[0]))


def main(argv: list[str] | None = None) -> None:
    """``python -m captum_mamba.demo``: ``captum-mamba demo`` (see :mod:`captum_mamba.cli`)."""
    from captum_mamba.cli import main as cli_main

    cli_main(["demo", *(sys.argv[1:] if argv is None else argv)], prog="captum-mamba-demo")


if __name__ == "__main__":
    main()
