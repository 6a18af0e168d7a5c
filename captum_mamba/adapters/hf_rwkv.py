"""Architecture adapter for Hugging Face transformers' RWKV (RWKV-4): ``RwkvModel``,
``RwkvForCausalLM``. A block is ``h = x + time_mixing(ln1(x)); out = h +
channel_mixing(ln2(h))`` (the first block normalises its input with ``pre_ln`` first):

- token shift: each mixing mixes its input ``x[t]`` with the previous position's,
  ``x[t] m + x[t-1] (1 - m)`` with learned per-channel weights ``m``: linear (a
  constant scale and a sum, sites ``*_mix`` and ``*_shift``);
- ``RwkvSelfAttention`` (time mixing): ``output(sigmoid(r) * wkv(k, v))`` with ``k``,
  ``v``, ``r`` linear maps of the shifted inputs. WKV (kind ``wkv``) is per-channel
  softmax attention over the keys with a decaying position bias: AttnLRP's uniform rule
  or CP-LRP's constant weights, as for softmax attention (the decays are parameters);
  the sigmoid gets the identity rule and its product with WKV the half rule;
- ``RwkvFeedForward`` (channel mixing): ``sigmoid(r) * value(relu(k)^2)``: the identity
  rule on the squared ReLU and on the sigmoid, the half rule on the product;
- the ``nn.LayerNorm`` norms: LN-rule; the residual sums as sums.

At inference (eval mode) transformers divides the block outputs' weights by
``2 ** (i // rescale_every)`` in place on the first forward and halves the residual
stream after every ``rescale_every`` blocks. The explained forward computes that function
without changing the model: the halvings are operations (a constant scale, the block's
site ``rescale``), and a block whose output weights are not yet (or, in training mode, still)
rescaled has its branches scaled by the missing factor (sites ``attention_scale``,
``ff_scale``). With CP-LRP and bias-free layer norms relevance is conserved exactly (the
argument is in ``docs/architectures.md``); RWKV's layer norms have biases, whose share
is absorbed. The recurrence starts at the first position: a ``state`` from an earlier
call is refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.families import declare_family, resolve

FAMILY = declare_family(
    __name__,
    "transformers RWKV",
    ("RwkvModel", "RwkvForCausalLM"),
    ("transformers.models.rwkv.modeling_rwkv",),
    # the conformance suite passes with 4.46.3 (the oldest release pyproject allows) and 5.25
    needs="transformers >= 4.46",
)
RwkvSelfAttention, RwkvFeedForward, RwkvBlock, RwkvModel, RwkvForCausalLM = FAMILY.load(
    "RwkvSelfAttention", "RwkvFeedForward", "RwkvBlock", "RwkvModel", "RwkvForCausalLM"
)


def token_shift(ops: BlockOps, site: str, x: Tensor, mix: Tensor) -> Tensor:
    """``x[t] m + x[t-1] (1 - m)`` (``x[-1] = 0``) as a constant scale of ``[x, x_prev]``
    (site ``{site}_mix``) and the sum of its halves (site ``{site}_shift``)."""
    shifted = F.pad(x, (0, 0, 1, 0))[:, :-1]
    mix = mix.to(x.dtype)
    both = ops.scale(f"{site}_mix", torch.cat([x, shifted], -1), torch.cat([mix, 1 - mix], -1))
    width = x.shape[-1]
    return ops.add(f"{site}_shift", both[..., :width], both[..., width:])


def _check_no_state(module: nn.Module, state: Any) -> None:
    if state is not None:
        raise NotImplementedError(
            f"{type(module).__name__}: MambaLRP explains whole sequences; call the model "
            "without a state from an earlier call and pass the full prefix instead"
        )


def time_mixing_forward(
    ops: BlockOps, module: nn.Module, hidden: Tensor, state: Any = None, use_cache: bool = False
) -> tuple[Tensor, None]:
    """``output(sigmoid(r) * wkv(k, v))`` over the shifted inputs (sites ``key_*``,
    ``value_*``, ``receptance_*``, ``receptance_act``, ``wkv``, ``gate``)."""
    _check_no_state(module, state)
    x = ops.compute(hidden)
    k = module.key(token_shift(ops, "key", x, module.time_mix_key))
    v = module.value(token_shift(ops, "value", x, module.time_mix_value))
    r = module.receptance(token_shift(ops, "receptance", x, module.time_mix_receptance))
    mixed = ops.wkv("wkv", k, v, module.time_decay, module.time_first)
    gated = ops.gate("gate", mixed, ops.activation("receptance_act", r, "sigmoid"))
    return module.output(gated), None


def channel_mixing_forward(
    ops: BlockOps, module: nn.Module, hidden: Tensor, state: Any = None
) -> tuple[Tensor, None]:
    """``sigmoid(r) * value(relu(k)^2)`` over the shifted inputs (sites ``key_*``,
    ``receptance_*``, ``key_act``, ``receptance_act``, ``gate``)."""
    _check_no_state(module, state)
    x = ops.compute(hidden)
    k = module.key(token_shift(ops, "key", x, module.time_mix_key))
    r = module.receptance(token_shift(ops, "receptance", x, module.time_mix_receptance))
    value = module.value(ops.activation("key_act", k, "relu2"))
    return ops.gate("gate", value, ops.activation("receptance_act", r, "sigmoid")), None


def block_forward(
    ops: BlockOps,
    block: nn.Module,
    hidden: Tensor,
    state: Any = None,
    use_cache: bool = False,
    output_attentions: bool = False,
    branch_scale: float = 1.0,
    halve: bool = False,
) -> tuple[Tensor, None, None]:
    """The time mixing's residual sum, then the channel mixing's; ``branch_scale``
    multiplies both branches (sites ``attention_scale``, ``ff_scale``) and ``halve``
    halves the output (site ``rescale``), see :func:`rescaling`."""
    x = ops.compute(hidden)
    if block.layer_id == 0:
        x = block.pre_ln(x)
    mixed, _ = block.attention(block.ln1(x), state=state)
    if branch_scale != 1.0:
        mixed = ops.scale("attention_scale", mixed, branch_scale)
    h = ops.add("residual", x, mixed)
    fed, _ = block.feed_forward(block.ln2(h), state=state)
    if branch_scale != 1.0:
        fed = ops.scale("ff_scale", fed, branch_scale)
    out = ops.add("ff_residual", h, fed)
    return (ops.scale("rescale", out, 0.5) if halve else out), None, None


def rescaling(model: nn.Module, index: int) -> tuple[float, bool]:
    """How the forward of ``model`` treats block ``index``: the factor of its branches
    (the rescaled output weights, as the model's forward would set them, over the
    stored ones) and whether the residual stream is halved after it.

    transformers' forward first rescales the weights in place so that they are divided
    by ``2 ** (index // rescale_every)`` exactly in eval mode, then halves the stream
    after every ``rescale_every`` blocks in eval mode.
    """
    every = model.config.rescale_every
    if every <= 0:
        return 1.0, False
    power = 2.0 ** (index // every)
    stored = power if model.layers_are_rescaled else 1.0
    wanted = 1.0 if model.training else power
    return stored / wanted, not model.training and (index + 1) % every == 0


def model_forward(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    state: Any = None,
    use_cache: bool | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    **kwargs: Any,
) -> Any:
    """The model's forward for whole sequences without a state; the model's weights are
    left as they are (:func:`rescaling`)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    _check_no_state(model, state)
    if output_attentions:
        raise NotImplementedError(
            f"{type(model).__name__}: explanations return no block outputs as attentions; "
            "call it with output_attentions=False"
        )
    embeds = model.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
    x = ops.compute(embeds)
    hidden_states = []
    for index, block in enumerate(model.blocks):
        scale, halve = rescaling(model, index)
        x, _, _ = block(x, branch_scale=scale, halve=halve)
        hidden_states.append(x)
    x = model.ln_out(x)
    output = resolve("transformers.models.rwkv.modeling_rwkv", "RwkvOutput")
    return output(
        last_hidden_state=x,
        hidden_states=(*hidden_states, x) if output_hidden_states else None,
    )


#: Sites of the time mixing.
TIME_MIXING_SITES = {
    **{f"{name}_{part}": kind for name in ("key", "value", "receptance")
       for part, kind in (("mix", "scale"), ("shift", "add"))},
    "receptance_act": "activation",
    "wkv": "wkv",
    "gate": "gate",
}  # fmt: skip
#: Sites of the channel mixing.
CHANNEL_MIXING_SITES = {
    **{f"{name}_{part}": kind for name in ("key", "receptance")
       for part, kind in (("mix", "scale"), ("shift", "add"))},
    "key_act": "activation",
    "receptance_act": "activation",
    "gate": "gate",
}  # fmt: skip

HF_RWKV = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(
                RwkvSelfAttention,
                time_mixing_forward,
                TIME_MIXING_SITES,
                ("key", "value", "receptance", "output"),
            ),
            ModuleHandler(
                RwkvFeedForward,
                channel_mixing_forward,
                CHANNEL_MIXING_SITES,
                ("key", "receptance", "value"),
            ),
            ModuleHandler(
                RwkvBlock,
                block_forward,
                {
                    "attention_scale": "scale",
                    "residual": "add",
                    "ff_scale": "scale",
                    "ff_residual": "add",
                    "rescale": "scale",
                },
                ("ln1", "attention", "ln2", "feed_forward", "pre_ln"),
                role="block",
            ),
            ModuleHandler(RwkvModel, model_forward, {}, ("embeddings", "blocks", "ln_out")),
        ),
        containers=(RwkvForCausalLM,),
        blocks=(RwkvSelfAttention,),
    )
)
