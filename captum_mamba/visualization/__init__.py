"""Visualisation of relevances: token heatmaps and plots for papers and notebooks.

:mod:`captum_mamba.visualization.text` draws token heatmaps (HTML for Jupyter and
standalone files, Matplotlib figures for papers, Captum record interop);
:mod:`captum_mamba.visualization.plots` draws perturbation curves, the conservation
scatter, long-range relevance and image heatmaps;
:mod:`captum_mamba.visualization.styles` gives every method one fixed line style;
:mod:`captum_mamba.visualization.signals` draws relevance over multichannel signals
(lanes and time x channel heatmaps). All take plain tensors or arrays.
"""

from captum_mamba.visualization.plots import (
    area_under_curve,
    image_heatmaps_figure,
    patch_relevance_map,
    plot_conservation,
    plot_image_heatmap,
    plot_morf_lerf,
    plot_perturbation_curves,
    plot_relevance_distance,
    plot_relevance_over_context,
    top_k_distances,
)
from captum_mamba.visualization.signals import (
    SignalView,
    aggregate_grid,
    signal_heatmap_figure,
    signal_relevance_figure,
)
from captum_mamba.visualization.styles import (
    METHOD_STYLES,
    MethodStyle,
    method_style,
    method_styles,
)
from captum_mamba.visualization.text import (
    HeatmapRow,
    ReadableTokenizer,
    TextHeatmap,
    batch_text_heatmap_figure,
    batch_text_heatmap_html,
    heatmap_rows_figure,
    merge_word_pieces,
    row_from_captum_record,
    text_heatmap_figure,
    text_heatmap_html,
    to_captum_record,
    token_texts,
)

__all__ = [
    "METHOD_STYLES",
    "HeatmapRow",
    "MethodStyle",
    "ReadableTokenizer",
    "SignalView",
    "TextHeatmap",
    "aggregate_grid",
    "area_under_curve",
    "batch_text_heatmap_figure",
    "batch_text_heatmap_html",
    "heatmap_rows_figure",
    "image_heatmaps_figure",
    "merge_word_pieces",
    "method_style",
    "method_styles",
    "patch_relevance_map",
    "plot_conservation",
    "plot_image_heatmap",
    "plot_morf_lerf",
    "plot_perturbation_curves",
    "plot_relevance_distance",
    "plot_relevance_over_context",
    "row_from_captum_record",
    "signal_heatmap_figure",
    "signal_relevance_figure",
    "text_heatmap_figure",
    "text_heatmap_html",
    "to_captum_record",
    "token_texts",
    "top_k_distances",
]
