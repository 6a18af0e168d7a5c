"""The supported Captum releases (0.7, 0.8, 0.9): every private name of
``captum_mamba._captum`` resolves and every Captum-facing path works (Captum's
``LLMGradientAttribution`` with ``LayerMambaLRP`` from 0.8 on: 0.7 takes only
``LayerIntegratedGradients``).

The installed release is checked in this process; the others are installed with
``pip install --no-deps --target`` into a temporary folder and checked in a subprocess
(skipped with the reason when PyPI cannot be reached).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import captum
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: One release per supported minor version.
RELEASES = ("0.7.0", "0.8.0", "0.9.0")

CHECK = """
import captum, torch
import matplotlib
matplotlib.use("Agg")
from captum.attr import LRP, LayerLRP
from captum_mamba import _captum
from captum_mamba import LayerMambaLRP, MambaLRP, attribute_generation
from captum_mamba.attr.forward import default_forward
from captum_mamba.lrp import prepare_captum_lrp
from captum_mamba.models import random_mamba_lm

assert captum.__version__ == {version!r}, captum.__version__
for name in _captum.__all__:
    getattr(_captum, name)
model = random_mamba_lm(dtype=torch.float64, zero_biases=True)
ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
embeds = model.get_input_embeddings()(ids).detach()
relevance, delta = MambaLRP(model).attribute(embeds, target=(-1, 3), return_convergence_delta=True)
assert delta.abs().max() < 1e-12, delta
prepared = prepare_captum_lrp(model)
captum_relevance = LRP(prepared).attribute(embeds, target=(-1, 3))
assert (captum_relevance - relevance).abs().max() < 1e-12
layer = prepared.model.backbone.layers[1].residual
layer_relevance = LayerLRP(prepared, layer).attribute(embeds, target=(-1, 3))
forward = default_forward(model, "inputs_embeds")
expected = LayerMambaLRP(model, model.backbone.layers[1], forward_func=forward)
assert (layer_relevance - expected.attribute(embeds, target=(-1, 3))).abs().max() < 1e-12
result = attribute_generation(model, ids[0], max_new_tokens=2)
assert tuple(result.token_attr.shape) == (2, 7) and result.output_probs.shape == (2,)
result.plot_token_attr()
from captum.attr import LLMGradientAttribution, TextTokenInput
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
raw = Tokenizer(models.WordLevel({{f"w{{i}}": i for i in range(64)}}, unk_token="w0"))
raw.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw)
# Captum 0.7's LLMGradientAttribution takes only LayerIntegratedGradients.
if {version!r} != "0.7.0":
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    llm = LLMGradientAttribution(lrp, tokenizer)
    llm_result = llm.attribute(TextTokenInput("w5 w17 w33", tokenizer), target=torch.tensor([3, 9]))
    assert tuple(llm_result.token_attr.shape) == (2, 3), llm_result.token_attr.shape
print("captum", captum.__version__, "ok")
"""


def _run(version: str, site: Path | None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(version=version)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"captum {version} ok" in result.stdout


def test_installed_release_is_supported() -> None:
    assert captum.__version__ in RELEASES
    _run(captum.__version__, None)


@pytest.mark.slow
@pytest.mark.parametrize("version", [v for v in RELEASES if v != captum.__version__])
def test_other_supported_releases(version: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
         "--target", str(site), f"captum=={version}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.skip(f"captum {version} could not be installed from PyPI: {install.stderr[-300:]}")
    _run(version, site)
