"""Architecture adapter for Hugging Face transformers' xLSTM (the mLSTM blocks of xLSTM-7B):
``xLSTMModel``, ``xLSTMForCausalLM``.

A block is ``h = x + mlstm_layer(norm(x)); out = h + ffn(norm(h))`` with

- ``xLSTMLayer``: queries, keys, values, the output-gate, input-gate and forget-gate
  pre-activations are linear maps of the input (one fused layer each for
  ``weight_mode="fused"``); the mLSTM cell (:meth:`~captum_mamba.adapters.backend.BlockOps.mlstm`:
  gates, stabiliser and normaliser constant, the uniform rule on queries, keys and values
  or, with ``attention="cp_lrp"``, constant queries and keys); the per-head LayerNorm
  (``xLSTMMultiHeadLayerNorm``, LN-rule); the output gate ``sigmoid(o) * norm(h)``
  (identity rule on the sigmoid, half rule on the product); the output projection;
- ``xLSTMFeedForward``: ``down(silu(up_gate(x)) * up(x))``: identity and half rules;
- ``xLSTMRMSNorm``: LN-rule (its optional bias added as a sum with a constant).

The soft cap ``c tanh(x / c)`` of the gate pre-activations is part of the gates, which
the rule keeps constant; that of the logits is an operation (a constant scale, the
identity rule on ``tanh``, a constant scale), so the explained logits are the model's.
With bias-free layers relevance is conserved exactly under both rules of the cell (the
argument is in ``docs/architectures.md``). transformers computes the logits and, with
``norm_reduction_force_float32``, the norms in float32 and the cell's last partial chunk
with float32 states; this adapter computes everything in the input dtype (at least
float32). Explanations run over whole sequences: a cache with earlier tokens and
attention masks are refused.

transformers defines these classes only without the external ``xlstm`` package (with it
installed, its blocks come from that package and this family reports itself unavailable).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    GLU_SITES,
    SOFT_CAP_SITES,
    activation_name,
    glu,
    keep_logits,
    soft_capped,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers xLSTM",
    ("xLSTMModel", "xLSTMForCausalLM"),
    ("transformers.models.xlstm.modeling_xlstm",),
    # checked with 5.25 only (the ``cache`` argument name of 5.24+)
    needs="transformers >= 5.25",
)
(
    xLSTMRMSNorm,
    xLSTMMultiHeadLayerNorm,
    xLSTMFeedForward,
    xLSTMLayer,
    xLSTMBlock,
    xLSTMModel,
    xLSTMForCausalLM,
    xLSTMOutput,
    xLSTMCausalLMOutput,
) = FAMILY.load(
    "xLSTMRMSNorm",
    "xLSTMMultiHeadLayerNorm",
    "xLSTMFeedForward",
    "xLSTMLayer",
    "xLSTMBlock",
    "xLSTMModel",
    "xLSTMForCausalLM",
    "xLSTMOutput",
    "xLSTMCausalLMOutput",
)


def rms_norm_forward(ops: BlockOps, norm: nn.Module, x: Tensor) -> Tensor:
    """``weight * x / rms(x) + bias`` (site ``norm``; site ``shift`` adds the bias where
    the norm has one)."""
    x = ops.compute(x)
    out = ops.rms_norm("norm", x, norm.weight, norm.eps)
    return out if norm.bias is None else ops.add("shift", out, norm.bias.to(x.dtype))


def multihead_norm_forward(ops: BlockOps, norm: nn.Module, x: Tensor) -> Tensor:
    """LayerNorm of each head of ``(batch, length, heads, head_dim)``, then the flattened
    weight and bias: ``(batch, length, heads * head_dim)``."""
    x = ops.compute(x)
    shape = (norm.num_heads, norm.head_dim)
    weight = None if norm.weight is None else norm.weight.reshape(shape)
    bias = None if norm.bias is None else norm.bias.reshape(shape)
    return ops.layer_norm("", x, weight, bias, norm.eps).flatten(-2)


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(batch, length, heads * d)`` as ``(batch, heads, length, d)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def layer_forward(
    ops: BlockOps, layer: nn.Module, x: Tensor, state: Any = None
) -> tuple[Tensor, None]:
    """The mLSTM layer (sites ``mlstm``, ``ogate_act``, ``ogate``) of a whole sequence."""
    if state is not None:
        raise NotImplementedError(
            f"{type(layer).__name__} explains whole sequences; call it without a state"
        )
    config = layer.config
    x = ops.compute(x)
    if config.weight_mode == "single":
        q, k, v = layer.q(x), layer.k(x), layer.v(x)
        o, i, f = layer.ogate_preact(x), layer.igate_preact(x), layer.fgate_preact(x)
    else:
        q, k, v, o = layer.qkv_opreact(x).split(
            (layer.qk_dim, layer.qk_dim, layer.v_dim, layer.v_dim), dim=-1
        )
        i, f = layer.ifgate_preact(x).chunk(2, dim=-1)
    heads = config.num_heads
    h = ops.mlstm(
        "mlstm",
        _heads(q, heads),
        _heads(k, heads),
        _heads(v, heads),
        i.transpose(1, 2),
        f.transpose(1, 2),
        config.gate_soft_cap,
        config.eps,
        config.chunk_size,
    )
    normed = layer.multihead_norm(h.transpose(1, 2))
    gated = ops.gate("ogate", ops.activation("ogate_act", o, "sigmoid"), normed)
    return layer.out_proj(gated), None


LAYER_SITES = {"mlstm": "mlstm", "ogate_act": "activation", "ogate": "gate"}
LAYER_CALLS = (
    "q",
    "k",
    "v",
    "ogate_preact",
    "igate_preact",
    "fgate_preact",
    "qkv_opreact",
    "ifgate_preact",
    "multihead_norm",
    "out_proj",
)


def feed_forward(ops: BlockOps, ffn: nn.Module, x: Tensor) -> Tensor:
    """``proj_down(silu(up_gate(x)) * up(x))`` (sites ``act``, ``gate``)."""
    function = activation_name(ffn, ffn.act_fn)
    if ffn.config.weight_mode == "single":
        gate, up = ffn.proj_up_gate(x), ffn.proj_up(x)
    else:
        gate, up = ffn.proj_up_gate_z(x).split(ffn.up_proj_dim, dim=-1)
    return ffn.proj_down(glu(ops, gate, up, function))


def block_forward(
    ops: BlockOps, block: nn.Module, x: Tensor, state: Any = None
) -> tuple[Tensor, None]:
    """The two residual sums of a block (sites ``residual``, ``ff_residual``)."""
    x = ops.compute(x)
    mixed, _ = block.mlstm_layer(block.norm_mlstm(x), state)
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, block.ffn(block.norm_ffn(h))), None


def _check_whole_sequence(cache: Any, attention_mask: Tensor | None) -> None:
    if cache is not None and int(cache.seqlen_offset.max()) > 0:
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without a filled cache "
            "(use_cache=False) and pass the full prefix instead"
        )
    if attention_mask is not None:
        raise NotImplementedError(
            "xLSTM takes no attention mask (transformers ignores it); explain unpadded "
            "sequences one length at a time"
        )


def model_forward(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """The model's forward for whole sequences without a cache."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    _check_whole_sequence(cache, attention_mask)
    embeds = model.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
    x = ops.compute(embeds)
    for block in model.blocks:
        x, _ = block(x)
    return xLSTMOutput(last_hidden_state=model.out_norm(x))


def lm_forward(
    ops: BlockOps,
    lm: nn.Module,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    cache: Any = None,
    labels: Tensor | None = None,
    use_cache: bool | None = None,
    attention_mask: Tensor | None = None,
    logits_to_keep: int | Tensor = 0,
    **kwargs: Any,
) -> Any:
    """The language model's forward with the soft-capped logits ``c tanh(logits / c)``
    (:func:`~captum_mamba.adapters.blocks.soft_capped`)."""
    if labels is not None:
        raise NotImplementedError(
            f"explanations compute no loss; call {type(lm).__name__} without labels"
        )
    outputs = lm.backbone(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        cache=cache,
        attention_mask=attention_mask,
    )
    logits = lm.lm_head(keep_logits(outputs.last_hidden_state, logits_to_keep))
    cap = lm.config.output_logit_soft_cap
    if cap is not None:
        logits = soft_capped(ops, logits, cap)
    return xLSTMCausalLMOutput(logits=logits)


HF_XLSTM = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(xLSTMRMSNorm, rms_norm_forward, {"norm": "rms_norm", "shift": "add"}),
            ModuleHandler(xLSTMMultiHeadLayerNorm, multihead_norm_forward, {"": "layer_norm"}),
            ModuleHandler(xLSTMLayer, layer_forward, LAYER_SITES, LAYER_CALLS),
            ModuleHandler(
                xLSTMFeedForward,
                feed_forward,
                GLU_SITES,
                ("proj_up_gate", "proj_up", "proj_up_gate_z", "proj_down"),
            ),
            ModuleHandler(
                xLSTMBlock,
                block_forward,
                {"residual": "add", "ff_residual": "add"},
                ("norm_mlstm", "mlstm_layer", "norm_ffn", "ffn"),
                role="block",
            ),
            ModuleHandler(xLSTMModel, model_forward, {}, ("embeddings", "blocks", "out_norm")),
            ModuleHandler(
                xLSTMForCausalLM,
                lm_forward,
                SOFT_CAP_SITES,
                ("backbone", "lm_head"),
            ),
        ),
        blocks=(xLSTMLayer,),
    )
)
