"""The page of a data-set explanation report (:mod:`captum_mamba.apps.report`).

:func:`render_html` turns the content of ``report.json`` into one self-contained HTML
page: no scripts at all, inline styles and inline SVG only, and a Content Security
Policy that forbids scripts and every request, so that nothing a user supplied (texts,
labels, group terms, file names) can run or load anything in a reader's browser; every
such string is escaped as well. The page prints to PDF from the browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from captum_mamba.visualization import text_heatmap_html

#: Forbids scripts, frames, fonts and every request; inline styles and data: images only.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'"
)

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;
margin:0 auto;padding:1rem 1.5rem;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ccc;margin-top:2rem}
table.r{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
table.r td,table.r th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
table.r td.t,table.r th.t{text-align:left}
.caveat{background:#fff6d6;border-left:4px solid #e0b000;padding:.5rem 1rem}
.alert{background:#fde8e8;border-left:4px solid #c62828;padding:.5rem 1rem;margin:.7rem 0}
.muted{color:#555;font-size:.85rem}code{word-break:break-all}
@media print{h2{page-break-after:avoid}.alert,table.r{page-break-inside:avoid}}
"""


def _e(value: Any) -> str:
    """Escaped text of any value."""
    return html.escape(str(value), quote=True)


def _n(value: Any, digits: int = 3) -> str:
    """A number as shown (``-`` for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1) -> str:
    head = "".join(
        f'<th class="{"t" if i < text_columns else ""}">{_e(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"t" if i < text_columns else ""}">{_e(cell)}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="r"><tr>{head}</tr>{body}</table>'


def _heatmap(tokens: Sequence[str], relevance: Sequence[float | None], label: str) -> str:
    values = [math.nan if v is None else v for v in relevance]
    return text_heatmap_html(list(tokens), values, label=label).to_html()


def _bars_svg(labels: Sequence[str], values: Sequence[float], caption: str) -> str:
    """A horizontal bar chart as inline SVG (values in [0, 1])."""
    width, row = 520, 18
    height = row * len(values) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(caption)}">'
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = i * row + 4
        length = max(0.0, min(1.0, value)) * 300
        parts.append(
            f'<text x="150" y="{y + 12}" font-size="11" text-anchor="end">{_e(label)}</text>'
            f'<rect x="156" y="{y}" width="{length:.1f}" height="{row - 4}" fill="#3a6ea5"/>'
            f'<text x="{160 + length:.1f}" y="{y + 12}" font-size="11">{_pct(value)}</text>'
        )
    parts.append(
        f'<text x="156" y="{height - 4}" font-size="11" fill="#555">{_e(caption)}</text></svg>'
    )
    return "".join(parts)


def _summary(data: dict[str, Any]) -> str:
    lines = data["summary"]
    body = "".join(f"<li>{_e(line)}</li>" for line in lines[:-1])
    return f'<h2 id="summary">1. Summary</h2><ul>{body}</ul><p class="caveat">{_e(lines[-1])}</p>'


def _provenance(data: dict[str, Any]) -> str:
    p = data["provenance"]
    rows = [
        ("date (UTC)", p["date"]),
        ("command line", " ".join(p["command_line"])),
        ("model", p["model"]),
        ("model source", p["model_source"]),
        ("model fingerprint (SHA-256 of the weights)", p["model_fingerprint"]),
        ("data file", p["data_file"] or "-"),
        ("data SHA-256", p["data_sha256"] or "-"),
        ("rows", p["rows"]),
        ("classes", ", ".join(p["label_names"])),
        ("methods", ", ".join(p["methods"])),
        ("method settings", p["settings"]),
        ("rules", p["rules"]),
        ("report options", p["options"]),
        ("per-example relevances", p["attributions"]),
    ]
    environment = "".join(f"<li><code>{_e(line)}</code></li>" for line in p["environment"])
    return (
        '<h2 id="provenance">2. Provenance</h2>'
        + _table(["item", "value"], rows, 2)
        + f"<details><summary>environment</summary><ul>{environment}</ul></details>"
    )


def _performance(data: dict[str, Any]) -> str:
    perf = data["performance"]
    head = '<h2 id="performance">3. Model performance</h2>'
    if not perf["labelled"]:
        return head + "<p>No labels were given, so performance is not measured.</p>"
    names = data["provenance"]["label_names"]
    per_class = _table(
        ["class", "precision", "recall", "support", "predicted"],
        [
            (r["class"], _n(r["precision"]), _n(r["recall"]), r["support"], r["predicted"])
            for r in perf["per_class"]
        ],
    )
    confusion = _table(
        ["true \\ predicted", *names],
        [(name, *row) for name, row in zip(names, perf["confusion"], strict=True)],
    )
    return (
        head
        + f"<p>Accuracy: <b>{_n(perf['accuracy'])}</b></p>"
        + per_class
        + "<p>Confusion matrix (rows: true class, columns: predicted class):</p>"
        + confusion
    )


def _global(data: dict[str, Any]) -> str:
    options = data["provenance"]["options"]
    parts = [
        '<h2 id="global">4. What each class relies on</h2>',
        f'<p class="muted">Words (merged from word pieces, lower case) of the texts explained '
        f"as each class, ranked by the lower end of the 95% bootstrap interval of their mean "
        f"relevance per occurrence; words with fewer than {_e(options['min_count'])} "
        f"occurrences are not ranked. Share: the word's relevance over the class's total "
        f"absolute relevance.</p>",
    ]
    for section in data["global"]:
        parts.append(f"<h3>Class {_e(section['class'])} ({_e(section['examples'])} texts)</h3>")
        if not section["top"]:
            parts.append("<p>No ranked words.</p>")
            continue
        parts.append(
            _table(
                ["rank", "word", "mean relevance", "95% CI", "share", "count", "doc. freq."],
                [
                    (
                        f["rank"],
                        f["word"],
                        _n(f["mean_relevance"]),
                        f"{_n(f['ci_low'])} .. {_n(f['ci_high'])}",
                        _pct(f["share_of_class_relevance"]),
                        f["count"],
                        _pct(f["document_frequency"]),
                    )
                    for f in section["top"]
                ],
                0,
            )
        )
        frequent = ", ".join(
            f"{f['word']} ({f['count']}, mean {_n(f['mean_relevance'])})"
            for f in section["most_frequent"]
        )
        parts.append(f'<p class="muted">Most frequent words: {_e(frequent)}</p>')
        for feature in section["top"][:3]:
            for snippet in feature["snippets"]:
                label = f"'{feature['word']}' in text {snippet['example_id']}"
                parts.append(_heatmap(snippet["tokens"], snippet["relevance"], label))
    return "".join(parts)


def _shortcuts(data: dict[str, Any]) -> str:
    section = data["shortcuts"]
    t = section["thresholds"]
    parts = [
        '<h2 id="shortcuts">5. Shortcut alerts</h2>',
        f'<p class="muted">A ranked word is flagged when, in the texts of a class that '
        f"contain it, it carries at least {_pct(t['shortcut_share'])} of the text's positive "
        f"relevance (median), and does so in at least {_e(t['shortcut_min_examples'])} texts. "
        f"Each alert is checked by removing the word from every text that contains it.</p>",
    ]
    if not section["alerts"]:
        parts.append("<p>No shortcut alerts at these thresholds.</p>")
    for alert in section["alerts"]:
        train = ""
        if alert["train_frequencies"]:
            train = _table(
                ["training class", "texts", "containing", "share"],
                [
                    (r["class"], r["texts"], r["containing"], _pct(r["share"]))
                    for r in alert["train_frequencies"]
                ],
            )
        parts.append(
            f'<div class="alert"><b>\u26a0 \u2018{_e(alert["word"])}\u2019 for class '
            f"\u2018{_e(alert['class'])}\u2019</b> (rank {_e(alert['rank'])}): median share "
            f"{_pct(alert['median_example_share'])}, at least the threshold in "
            f"{_e(alert['examples_over_share'])} texts, in {_pct(alert['document_frequency'])} "
            f"of the class's texts.<br>Counterfactual: removing it from the "
            f"{_e(alert['examples_containing'])} texts that contain it changes "
            f"<b>{_e(alert['predictions_changed'])}</b> predictions "
            f"({_pct(alert['share_changed'])}); the class's logit drops by "
            f"{_n(alert['mean_logit_drop'])} on average (over "
            f"{_e(alert['examples_containing_of_class'])} texts explained as the class)."
            f"{train}<p>What to do next: {_e(alert['next_steps'])}</p></div>"
        )
    return "".join(parts)


def _groups(data: dict[str, Any]) -> str:
    head = '<h2 id="groups">6. Group bias probe</h2>'
    probe = data["groups"]
    if probe is None:
        return (
            head
            + "<p>No groups were given (e.g. <code>--groups "
            + '"female=she,her;male=he,him"</code>).</p>'
        )
    terms = "; ".join(f"{name}: {', '.join(t)}" for name, t in probe["groups"].items())
    shares = _table(
        ["class", "group", "occurrences", "texts", "share of class relevance", "mean relevance"],
        [
            (
                r["class"],
                r["group"],
                r["occurrences"],
                r["documents"],
                _pct(r["share_of_class_relevance"]),
                _n(r["mean_relevance"]),
            )
            for r in probe["shares"]
        ],
        2,
    )
    swap = probe["swap"]
    if swap["examples"]:
        text = (
            f"Swapping each group's terms for the other group's in the {swap['examples']} texts "
            f"that contain any changes {swap['predictions_changed']} predictions "
            f"({_pct(swap['share_changed'])}); the predicted class's logit changes by "
            f"{_n(swap['mean_logit_change'])} on average (mean absolute change "
            f"{_n(swap['mean_abs_logit_change'])})."
        )
    else:
        text = "No text contains a group term, so nothing was swapped."
    return head + f"<p>Groups: {_e(terms)}</p>" + shares + f"<p>{_e(text)}</p>"


def _long_range(data: dict[str, Any]) -> str:
    head = '<h2 id="long-range">7. Long-range profile</h2>'
    profile = data["long_range"]
    if not profile.get("examples"):
        return head + "<p>No example with finite, non-zero relevance.</p>"
    q = profile["distance_quantiles"]
    labels = [
        f"{b['from']}" if b["from"] == b["to"] else f"{b['from']}-{b['to']}"
        for b in profile["bins"]
    ]
    chart = _bars_svg(
        labels,
        [b["mean_share"] for b in profile["bins"]],
        "mean share of |relevance| by distance (tokens) from the explained position",
    )
    return (
        head + f"<p>Relevance-weighted distance from the explained position (median over texts): "
        f"25% within {_n(q['q25'])}, half within {_n(q['median'])}, 75% within "
        f"{_n(q['q75'])} tokens. Share of relevance more than {_e(profile['beyond'])} tokens "
        f"back: {_pct(profile['share_beyond'])} ({_e(profile['examples_with_tokens_beyond'])} "
        f"texts are that long; the longest has {_e(profile['longest'])} tokens).</p>" + chart
    )


def _trust(data: dict[str, Any]) -> str:
    trust = data["trust"]
    parts = ['<h2 id="trust">8. How far to trust these explanations on this data</h2>']
    study = trust["study"]
    if study:
        parts.append(
            f"<p>Faithfulness on a seeded sample of {_e(study['examples'])} texts "
            f"({_e(study['protocol'])}); larger is better, and a method must beat the sanity "
            f"baselines (Random, Recency) for its explanations to mean anything.</p>"
        )
        parts.append(
            _table(
                ["method", "Delta A^F", "s.e.", "ms per text", "sanity baseline"],
                [
                    (
                        r["method"],
                        _n(r["delta_af"]),
                        _n(r["delta_af_sem"]),
                        _n(r["ms_per_example"]),
                        "yes" if r["sanity_baseline"] else "",
                    )
                    for r in study["rows"]
                ],
            )
        )
    if trust["conservation"]:
        parts.append(
            "<p>Conservation: the relevances of a text should add up to the explained logit.</p>"
        )
        parts.append(
            _table(
                ["method", "texts", "max |sum - logit|", "mean relative error", "correlation"],
                [
                    (
                        r["method"],
                        r["examples"],
                        _n(r["max_abs_error"]),
                        _n(r["mean_relative_error"]),
                        _n(r["correlation"]),
                    )
                    for r in trust["conservation"]
                ],
            )
        )
    return "".join(parts)


_GALLERY_TITLES = {
    "confident_correct": "Most confident correct predictions",
    "confident_wrong": "Most confident wrong predictions",
    "uncertain": "Most uncertain predictions",
}


def _gallery(data: dict[str, Any]) -> str:
    parts = ['<h2 id="gallery">9. Example gallery</h2>']
    for key, title in _GALLERY_TITLES.items():
        entries = data["gallery"][key]
        parts.append(f"<h3>{_e(title)}</h3>")
        if not entries:
            parts.append("<p>None.</p>")
        for entry in entries:
            label = (
                f"text {entry['example_id']}: predicted {entry['predicted']} "
                f"(p={_n(entry['probability'])}), label "
                f"{'-' if entry['label'] is None else entry['label']}"
            )
            parts.append(_heatmap(entry["tokens"], entry["relevance"], label))
    return "".join(parts)


def render_html(data: dict[str, Any]) -> str:
    """The report page of ``report.json`` content.

    Args:
        data (dict): the report (:attr:`DatasetExplanation.data`, NaN as None).

    Returns:
        str: a complete HTML document.
    """
    title = f"What does the model rely on? {data['provenance']['model_source']}"
    sections = (
        _summary(data)
        + _provenance(data)
        + _performance(data)
        + _global(data)
        + _shortcuts(data)
        + _groups(data)
        + _long_range(data)
        + _trust(data)
        + _gallery(data)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="muted">{_e(data["format"])}; every number is also in report.json</p>'
        f"{sections}</body></html>\n"
    )
