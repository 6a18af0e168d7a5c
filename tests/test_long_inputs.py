"""Long inputs: 16k tokens finish with finite, conserving relevances, and the memory of
an explanation grows linearly with the sequence length."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from captum_mamba import LayerMambaLRP
from captum_mamba.models import mamba_config, random_mamba_lm

VOCAB = 64
LONG = 16_384


def test_16k_tokens_are_finite_conserving_and_causal():
    """A target early in a 16k sequence gets exactly the relevances of its prefix
    alone, and none from later tokens; the last-token target conserves relevance."""
    model = random_mamba_lm(mamba_config(vocab_size=VOCAB), seed=2, zero_biases=True)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    ids = torch.randint(0, VOCAB, (1, LONG), generator=torch.Generator().manual_seed(0))
    early = 300
    relevance, delta = lrp.attribute(
        ids.expand(2, -1), target=[(LONG - 1, 5), (early, 5)], return_convergence_delta=True
    )
    assert torch.isfinite(relevance).all()
    assert (delta.abs() <= 1e-5 * relevance.abs().sum((1, 2))).all()
    assert (relevance[1, early + 1 :] == 0).all()
    prefix = lrp.attribute(ids[:, : early + 1], target=(early, 5))
    torch.testing.assert_close(relevance[1, : early + 1], prefix[0], rtol=1e-4, atol=1e-7)


#: Run in a fresh interpreter: attribute ``length`` tokens and print the peak resident
#: set size above the resident size before the call, in KiB. The peak is reset first
#: (``/proc/self/clear_refs``): the high-water mark of the imports would hide it.
_CHILD = """
import json, re, sys, torch
from captum_mamba import LayerMambaLRP
from captum_mamba.models import mamba_config, random_mamba_lm

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

torch.set_num_threads(1)
length = int(sys.argv[1])
model = random_mamba_lm(mamba_config(vocab_size=64), zero_biases=True)
lrp = LayerMambaLRP(model, model.get_input_embeddings())
lrp.attribute(torch.randint(0, 64, (1, 64)), target=(-1, 1))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
relevance = lrp.attribute(torch.randint(0, 64, (1, length)), target=(-1, 1))
growth = status("VmHWM") - base
print(json.dumps({"growth_kib": growth, "finite": bool(torch.isfinite(relevance).all())}))
"""


def _peak_growth_kib(length: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(length)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["finite"]
    return result["growth_kib"]


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs")
def test_memory_is_linear_in_length():
    """Quadrupling the length at most quadruples the peak memory of an explanation
    (plus allocator noise); quadratic memory would multiply it by 16."""
    short, long = _peak_growth_kib(LONG // 4), _peak_growth_kib(LONG)
    assert short > 1024, short
    assert long / short < 5.0, (short, long)
