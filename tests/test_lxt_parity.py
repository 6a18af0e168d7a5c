"""Parity with the reference implementation of AttnLRP: LXT 2.1's efficient mode.

LXT (``pip install lxt``, Achtibat et al.) explains transformers models by patching their
classes so that Gradient x Input applies the AttnLRP rules: the uniform rule on the
attention products (gradients of queries and keys divided by 4, of values by 2), the
identity rule on activations, the uniform rule on the gated MLP's product, the LN-rule
on norms; for CP-LRP it stops the gradient at queries and keys. Its patches are global,
so LXT runs in a subprocess (``tests/lxt_subprocess.py``) on a tiny float64 Llama with
grouped key/value heads; this package's ``MambaLRP`` then explains the same model and
inputs here.

LXT is a test-only dependency: its ``install_requires`` pull heavy packages, so it is
installed without dependencies into a temporary folder (its efficient mode needs only
torch and transformers). The test is skipped, with the reason, when PyPI cannot be
reached.

Precision: LXT's RMSNorm patch and transformers' eager softmax compute in float32. The
float64 comparisons (<= 1e-8; measured 5e-10, the rounding of LXT's identity rule,
which divides by ``x + 1e-10``) therefore use SDPA attention and LXT's norm rule computed
in float64; LXT exactly as shipped is compared with eager attention at float32 precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import relative_error
from transformers import LlamaConfig, LlamaForCausalLM

from captum_mamba import MambaLRP, MambaRules

ROOT = Path(__file__).resolve().parents[1]
LXT = "lxt==2.1"
CONFIG = dict(
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=32,
    rope_theta=100.0,
)
SPEC = dict(config=CONFIG, seed=3, shape=[2, 9], targets=[[8, 5], [3, 11]])
RULES = {"attn_lrp": MambaRules(), "cp_lrp": MambaRules.cp_lrp()}


@pytest.fixture(scope="module")
def lxt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LXT unpacked (without its dependencies) into a temporary folder."""
    root = tmp_path_factory.mktemp("lxt")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet"]
    try:
        result = subprocess.run(
            [*command, "--target", str(root), LXT],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {LXT} timed out: PyPI unreachable? (LXT parity needs it)")
    if result.returncode != 0 or not (root / "lxt" / "efficient" / "patches.py").exists():
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        pytest.skip(f"could not install {LXT} from PyPI for the LXT parity test: {lines[-1]}")
    return root


def lxt_relevance(root: Path, output: Path, **spec: object) -> dict:
    """Run LXT in its subprocess and load its model parameters, inputs and relevance."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    script = str(ROOT / "tests" / "lxt_subprocess.py")
    result = subprocess.run(
        [sys.executable, script, str(root), json.dumps({**SPEC, **spec}), str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output)


def explain(saved: dict, implementation: str, rules: MambaRules) -> torch.Tensor:
    """This package's relevance for the model and inputs LXT explained."""
    config = LlamaConfig(**CONFIG)
    config._attn_implementation = implementation
    model = LlamaForCausalLM(config).double().eval()
    model.load_state_dict(saved["state"])
    targets = [tuple(target) for target in SPEC["targets"]]
    return MambaLRP(model, rules=rules).attribute(saved["embeds"], target=targets)


@pytest.mark.parametrize("variant", ["attn_lrp", "cp_lrp"])
def test_float64_relevance_equals_lxt(lxt_root: Path, tmp_path: Path, variant: str) -> None:
    saved = lxt_relevance(
        lxt_root, tmp_path / "lxt.pt", implementation="sdpa", variant=variant, float64_norm=True
    )
    relevance = explain(saved, "sdpa", RULES[variant])
    assert saved["relevance"].abs().max() > 1e-3
    assert relative_error(relevance, saved["relevance"]) <= 1e-8


def test_relevance_equals_lxt_as_shipped_to_float32_precision(
    lxt_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "lxt.pt"
    saved = lxt_relevance(
        lxt_root, output, implementation="eager", variant="attn_lrp", float64_norm=False
    )
    relevance = explain(saved, "eager", RULES["attn_lrp"])
    assert relative_error(relevance, saved["relevance"]) <= 1e-6
