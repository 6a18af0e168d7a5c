"""Small Mamba models built in code, for tests, benchmarks and tutorials.

Nothing here downloads weights: every model is randomly initialised with a seed.
For a pretrained model use ``MambaForCausalLM.from_pretrained(...)`` as usual.
"""

from __future__ import annotations

import torch
from transformers import MambaConfig, MambaForCausalLM


def mamba_config(
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    state_size: int = 4,
    vocab_size: int = 64,
    expand: int = 2,
    conv_kernel: int = 4,
    **overrides: object,
) -> MambaConfig:
    """Configuration of a Hugging Face Mamba-1 model.

    Args:
        hidden_size (int, optional): model width. Default: 16.
        num_hidden_layers (int, optional): number of Mamba blocks. Default: 2.
        state_size (int, optional): SSM state size N. Default: 4.
        vocab_size (int, optional): vocabulary size. Default: 64.
        expand (int, optional): inner width = ``expand * hidden_size``. Default: 2.
        conv_kernel (int, optional): causal conv width. Default: 4.
        **overrides: further ``MambaConfig`` fields.

    Returns:
        MambaConfig: the configuration.
    """
    return MambaConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        state_size=state_size,
        vocab_size=vocab_size,
        expand=expand,
        conv_kernel=conv_kernel,
        **overrides,
    )


def mamba_130m_config(vocab_size: int = 50280) -> MambaConfig:
    """Shape of ``state-spaces/mamba-130m-hf`` (hidden 768, 24 layers, state 16)."""
    return mamba_config(hidden_size=768, num_hidden_layers=24, state_size=16, vocab_size=vocab_size)


def random_mamba_lm(
    config: MambaConfig | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    zero_biases: bool = False,
) -> MambaForCausalLM:
    """A randomly initialised ``MambaForCausalLM`` in eval mode.

    Args:
        config (MambaConfig, optional): model configuration. Default:
            :func:`mamba_config` ``()``.
        seed (int, optional): random seed of the initialisation. Default: 0.
        dtype (torch.dtype, optional): parameter dtype. Default: float32.
        zero_biases (bool, optional): set the conv (and linear) biases on the
            relevance path to zero, so that relevance is exactly conserved.
            Default: False.

    Returns:
        MambaForCausalLM: the model.

    Examples::

        >>> model = random_mamba_lm(mamba_config(hidden_size=32), seed=1, dtype=torch.float64)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MambaForCausalLM(config or mamba_config())
    model = model.to(dtype).eval()
    if zero_biases:
        with torch.no_grad():
            for layer in model.backbone.layers:
                for module in (layer.mixer.conv1d, layer.mixer.in_proj, layer.mixer.out_proj):
                    if module.bias is not None:
                        module.bias.zero_()
    return model
