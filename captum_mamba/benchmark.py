"""Benchmark: MambaLRP time against a no-grad forward and Captum's Saliency.

Run ``captum-mamba-benchmark`` (or ``python -m captum_mamba.benchmark``). For a
randomly initialised Mamba with the shape of ``mamba-130m`` it prints, per sequence
length, the median wall time of

- ``MambaLRP.attribute`` (one target logit, batch 1),
- a no-grad forward of the transformers model (its own CPU path),
- a no-grad forward under the MambaLRP rules (this package's scan),
- Captum ``Saliency`` on the unmodified transformers model, run once in a
  subprocess and stopped at ``--saliency-cap`` seconds (longer lengths are then
  skipped),

and the ratios between them. Timings are medians of ``--repeats`` runs measured in
one process; compare ratios, not absolute numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from captum_mamba.adapters import rules_applied
from captum_mamba.attr import MambaLRP
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.rules import MambaRules

TARGET_TOKEN = 42


@dataclass
class Row:
    """Timings of one sequence length, in seconds (None: not run or over the cap)."""

    length: int
    lrp: float
    forward_hf: float
    forward_rules: float
    saliency: float | None
    saliency_note: str

    def cells(self) -> list[str]:
        """Markdown cells of this row."""
        saliency = f"{self.saliency:.2f}" if self.saliency is not None else self.saliency_note
        if self.saliency is not None:
            speedup = f"{self.saliency / self.lrp:.1f}x"
        elif self.saliency_note.startswith(">"):
            speedup = f"> {float(self.saliency_note[1:].split()[0]) / self.lrp:.1f}x"
        else:
            speedup = "-"
        return [
            str(self.length),
            f"{self.lrp:.2f}",
            f"{1000 * self.lrp / self.length:.2f}",
            f"{self.forward_hf:.2f}",
            f"{self.forward_rules:.2f}",
            f"{self.lrp / self.forward_hf:.2f}",
            f"{self.lrp / self.forward_rules:.2f}",
            saliency,
            speedup,
        ]


HEADER = [
    "tokens",
    "MambaLRP s",
    "MambaLRP ms/token",
    "no-grad fwd (transformers) s",
    "no-grad fwd (rules) s",
    "LRP / fwd (transformers)",
    "LRP / fwd (rules)",
    "Saliency s",
    "Saliency / LRP",
]


def _median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    config = mamba_config(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        state_size=args.state,
        vocab_size=args.vocab,
    )
    return random_mamba_lm(config, seed=0)


def _embeddings(model: torch.nn.Module, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
    return model.get_input_embeddings()(ids).detach()


def _saliency_worker(args: argparse.Namespace) -> None:
    from captum.attr import Saliency

    model = _model(args)
    embeds = _embeddings(model, args.saliency_worker)
    saliency = Saliency(lambda e: model(inputs_embeds=e, use_cache=False).logits[:, -1])
    start = time.perf_counter()
    saliency.attribute(embeds, target=TARGET_TOKEN, abs=False)
    print(f"{time.perf_counter() - start:.6f}")


def _saliency(args: argparse.Namespace, length: int) -> tuple[float | None, str]:
    command = [sys.executable, "-m", "captum_mamba.benchmark", "--saliency-worker", str(length)]
    command += ["--hidden", str(args.hidden), "--layers", str(args.layers)]
    command += ["--state", str(args.state), "--vocab", str(args.vocab)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.saliency_cap, check=True
        )
    except subprocess.TimeoutExpired:
        return None, f">{args.saliency_cap:.0f} (cap)"
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"the Saliency worker failed:\n{error.stderr}") from error
    return float(done.stdout.strip().splitlines()[-1]), ""


def measure(args: argparse.Namespace, progress: Callable[[str], None] = print) -> list[Row]:
    """Time every method at every length of ``args.lengths``.

    Args:
        args (argparse.Namespace): parsed command-line options.
        progress (Callable, optional): receives one line per finished length.

    Returns:
        list of Row: one row per sequence length.
    """
    model = _model(args)
    lrp = MambaLRP(model)
    rows: list[Row] = []
    saliency_open = args.saliency_cap > 0
    for length in args.lengths:
        embeds = _embeddings(model, length)
        lrp.attribute(embeds[:, : min(length, 8)], target=(-1, TARGET_TOKEN))  # warm-up

        def forward_hf(embeds: torch.Tensor = embeds) -> None:
            with torch.no_grad():
                model(inputs_embeds=embeds, use_cache=False)

        def forward_rules(embeds: torch.Tensor = embeds) -> None:
            with torch.no_grad(), rules_applied(model, MambaRules()):
                model(inputs_embeds=embeds, use_cache=False)

        lrp_time = _median_time(
            lambda embeds=embeds: lrp.attribute(embeds, target=(-1, TARGET_TOKEN)), args.repeats
        )
        hf_time = _median_time(forward_hf, args.repeats)
        rules_time = _median_time(forward_rules, args.repeats)
        saliency, note = (None, "skipped")
        if saliency_open:
            saliency, note = _saliency(args, length)
            saliency_open = saliency is not None
        rows.append(Row(length, lrp_time, hf_time, rules_time, saliency, note))
        progress(f"measured {length} tokens")
    return rows


def markdown_table(rows: list[Row]) -> str:
    """Rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--saliency-cap", type=float, default=600.0, help="seconds; 0 skips Saliency"
    )
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=50280)
    parser.add_argument("--saliency-worker", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the benchmark table."""
    args = _parser().parse_args(argv)
    if args.saliency_worker is not None:
        _saliency_worker(args)
        return
    print(
        f"random Mamba: hidden {args.hidden}, {args.layers} layers, state {args.state}, "
        f"vocab {args.vocab}; batch 1; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {args.repeats} runs"
    )
    print(markdown_table(measure(args, progress=lambda line: print(line, file=sys.stderr))))


if __name__ == "__main__":
    main()
