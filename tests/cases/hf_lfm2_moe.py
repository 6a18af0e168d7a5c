"""Conformance case: transformers LFM2-MoE, the configurations of :mod:`cases.hf_lfm2`
with mixtures of experts (sigmoid router, with and without expert bias and
normalisation), whose reference runs the experts token by token. A case of its own because
the router rule is needed for conservation here and not in LFM2 without experts.
"""

from __future__ import annotations

from dataclasses import replace

from cases import hf_lfm2

ADAPTER = hf_lfm2.ADAPTER
CASE = replace(
    hf_lfm2.CASE,
    name="hf_lfm2_moe",
    configs=tuple(c for c in hf_lfm2.CONFIGS if c.startswith("moe")),
    rule_kinds=(*hf_lfm2.CASE.rule_kinds, "router"),
    eager_attention=("moe-expert-bias-eager",),
)
