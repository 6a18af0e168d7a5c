"""Smoke test of an installed captum-mamba (a wheel or an sdist in a clean environment).

Run it with the environment's interpreter from outside the checkout::

    python tests/package_smoke.py [--expect-under PREFIX]

It checks that the package imports from the installation (not from a checkout), that
its package data and console scripts are installed, that every public name resolves,
and that MambaLRP conserves relevance on a tiny bias-free float64 model (also through
Captum's LRP on a prepared model). It needs no data, network or GPU, and prints one line
per check and ``smoke test passed`` at the end.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = (
    "captum_mamba", "captum_mamba.attr", "captum_mamba.lrp", "captum_mamba.rules",
    "captum_mamba.adapters", "captum_mamba.baselines", "captum_mamba.metrics",
    "captum_mamba.visualization", "captum_mamba.ops", "captum_mamba.vision",
)  # fmt: skip
SCRIPTS = ("captum-mamba",)


def check(condition: bool, message: str) -> None:
    """Print ``message`` with the outcome; exit with status 1 on failure."""
    print(("ok   " if condition else "FAIL ") + message, flush=True)
    if not condition:
        sys.exit(1)


def main() -> None:
    """Run the checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--expect-under", type=Path, help="the package must be imported from below this folder"
    )
    parser.add_argument(
        "--scripts", type=Path, help="folder of the console scripts (default: the interpreter's)"
    )
    args = parser.parse_args()

    import captum_mamba

    location = Path(captum_mamba.__file__).resolve().parent
    check(not (location.parent / "pyproject.toml").exists(), f"imported from {location}")
    if args.expect_under is not None:
        check(location.is_relative_to(args.expect_under.resolve()), f"under {args.expect_under}")
    version = importlib.metadata.version("captum-mamba")
    check(version == captum_mamba.__version__, f"version {version}")
    check((location / "py.typed").is_file(), "package data (py.typed) installed")
    for name in PACKAGES:
        module = importlib.import_module(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        check(not missing, f"{name}: {len(module.__all__)} public names resolve {missing or ''}")
    scripts = args.scripts or Path(sys.executable).parent
    for script in SCRIPTS:
        path = shutil.which(script, path=str(scripts))
        ran = path is not None and subprocess.run(
            [path, "--help"], capture_output=True, timeout=300, check=False
        ).returncode == 0  # fmt: skip
        check(ran, f"{scripts / script} --help")
    module = subprocess.run(
        [sys.executable, "-m", "captum_mamba", "--help"], capture_output=True, timeout=300
    )
    check(module.returncode == 0, "python -m captum_mamba --help")

    import torch
    from captum.attr import LRP

    from captum_mamba import LayerMambaLRP, MambaLRP
    from captum_mamba.lrp import prepare_captum_lrp
    from captum_mamba.models import random_mamba_lm

    model = random_mamba_lm(seed=0, dtype=torch.float64, zero_biases=True)
    ids = torch.tensor([[5, 17, 33, 2, 48]])
    embeds = model.get_input_embeddings()(ids).detach()
    relevance, delta = MambaLRP(model).attribute(
        embeds, target=(-1, 7), return_convergence_delta=True
    )
    check(float(delta.abs().max()) < 1e-12, f"MambaLRP conserves relevance (delta {delta})")
    from_ids = LayerMambaLRP(model, model.get_input_embeddings()).attribute(ids, target=(-1, 7))
    check(torch.allclose(from_ids, relevance, rtol=0, atol=1e-12), "LayerMambaLRP on token ids")
    captum = LRP(prepare_captum_lrp(model)).attribute(embeds, target=(-1, 7))
    check(torch.allclose(captum, relevance, rtol=0, atol=1e-12), "Captum LRP on a prepared model")
    print("smoke test passed")


if __name__ == "__main__":
    main()
