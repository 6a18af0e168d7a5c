"""Relevance of a tiny Llama computed by LXT's efficient AttnLRP, in a process of its own.

LXT patches transformers' Llama classes and attention functions globally and for good,
so it runs here, never in the test process. Usage::

    python tests/lxt_subprocess.py LXT_ROOT SPEC_JSON OUTPUT

``LXT_ROOT`` holds the unpacked ``lxt`` package (``pip install --no-deps --target``).
Its ``__init__`` modules import the patches of every model LXT supports, among them
BERT's, written for a transformers API that 5.x removed, and a torchvision ViT; they are
replaced by empty package modules, and only the efficient mode's ``rules``, ``patches``
and Llama patch map are imported. ``SPEC_JSON`` gives the Llama configuration, the
attention implementation, the LXT variant (``"attn_lrp"``: LXT's AttnLRP patch map;
``"cp_lrp"``: LXT's CP-LRP attention patch with its AttnLRP MLP and norm patches), whether
the norms compute in float64, the seed, the inputs' shape and the targets. ``OUTPUT``
receives the model's parameters, the input embeddings and LXT's relevance
(Gradient x Input of the patched model, the efficient mode's recipe).
"""

from __future__ import annotations

import json
import sys
import types
from functools import partial
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama


def import_lxt(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """LXT's efficient ``patches``, ``rules`` and Llama patch maps, without the package
    ``__init__`` modules."""
    for name in ("lxt", "lxt.efficient", "lxt.efficient.models"):
        package = types.ModuleType(name)
        package.__path__ = [str(root.joinpath(*name.split(".")))]
        sys.modules[name] = package
    from lxt.efficient import patches, rules
    from lxt.efficient.models import llama

    return patches, rules, llama


class AttentionFunctions(dict):
    """LXT 2.1 replaces transformers' attention-function registry by a plain dict (as in
    transformers 4.x); transformers 5 looks functions up with ``get_interface``."""

    def get_interface(self, name: str | None, default):
        return self.get(name, default) if name != "eager" else default


def float64_rms_norm_forward(stop_gradient):
    """LXT's ``rms_norm_forward`` (LN-rule by ``stop_gradient`` on ``1 / rms``) computed in
    the input dtype: LXT's own casts to float32, as transformers' RMSNorm does."""

    def forward(norm, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        factor = stop_gradient(torch.rsqrt(variance + norm.variance_epsilon))
        return norm.weight * (hidden_states * factor)

    return forward


def main(root: Path, spec: dict, output: Path) -> None:
    patches, rules, llama = import_lxt(root)
    torch.manual_seed(spec["seed"])
    config = LlamaConfig(**spec["config"])
    config._attn_implementation = spec["implementation"]
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.3 if name.endswith("norm.weight") else 8.0
            if name.endswith("norm.weight"):
                parameter.add_(scale * torch.randn_like(parameter))
            else:
                parameter.mul_(scale)
    patch_map = dict(llama.attnLRP)
    if spec["variant"] == "cp_lrp":
        patch_map[modeling_llama] = patches.patch_cp_attention
    if spec["float64_norm"]:
        forward = float64_rms_norm_forward(rules.stop_gradient)
        patch_map[modeling_llama.LlamaRMSNorm] = partial(patches.patch_method, forward)
    for target, patch in patch_map.items():
        if not patch(target):
            raise RuntimeError(f"LXT failed to patch {target}")
    if not hasattr(modeling_llama.ALL_ATTENTION_FUNCTIONS, "get_interface"):
        modeling_llama.ALL_ATTENTION_FUNCTIONS = AttentionFunctions(
            modeling_llama.ALL_ATTENTION_FUNCTIONS
        )
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    embeds = torch.randn(*spec["shape"], config.hidden_size, generator=generator).double()
    leaf = embeds.clone().requires_grad_()
    logits = model(inputs_embeds=leaf, use_cache=False).logits
    explained = torch.stack([logits[i, p, t] for i, (p, t) in enumerate(spec["targets"])])
    explained.sum().backward()
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    torch.save({"state": state, "embeds": embeds, "relevance": leaf.grad * embeds}, output)


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]))
