"""Benchmark: time and peak memory of MambaLRP against forward passes and Captum's
Saliency, long inputs, generation and batched throughput.

Run ``captum-mamba-benchmark`` (or ``python -m captum_mamba.benchmark``). For a randomly
initialised Mamba with the shape of ``mamba-130m`` (float32, batch 1) it prints:

- per sequence length (``--lengths``, and ``--long-lengths`` such as 8k to 64k tokens),
  each method measured in a fresh subprocess (:func:`captum_mamba.study.measure_peak_memory`:
  warm-up on 8 tokens, peak resident set reset, median of ``--repeats`` runs):
  ``MambaLRP.attribute`` (one target logit; the fast or the memory-lean path as chosen
  automatically), a no-grad forward to the last position's logits under the MambaLRP
  rules (this package's scans) and with transformers' own CPU path (up to
  ``--hf-max-length``), with the peak memory of each, and Captum's ``Saliency`` on the
  unmodified transformers model, stopped at ``--saliency-cap`` seconds (longer lengths
  are then skipped);
- ``--compare-length``: MambaLRP on the fast path, on the lean path and as before the
  lean path existed (a forward returning every position's logits, no recomputation);
- ``--generation``: greedy generation of ``--gen-tokens`` tokens after a
  ``--gen-prompt``-token prompt and their explanation, against the previous method
  (a forward pass of the whole prefix per new token, one attribution row per token),
  whose cost is extrapolated from sampled steps; with ``--gen-explain-steps K`` the
  new explanation's cost is extrapolated too (one forward pass plus one backward pass
  per token: timed explaining the last 1 and the last K tokens of the same sequence);
- ``--throughput``: tokens per second of :func:`captum_mamba.attribute_batches` on
  texts of random lengths against batch size and threads;
- ``--out DIR``: ``results.json``, ``tables.md`` and ``scaling.png`` (time and peak
  memory against length, log-log).

``--quick`` runs everything on a tiny model at small sizes (a smoke test). Compare
ratios, not absolute numbers, on a shared machine; the machine load (``os.getloadavg``)
is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from captum_mamba.adapters import rules_applied
from captum_mamba.attr import LayerMambaLRP, attribute_batches, attribute_generation
from captum_mamba.attr._forward import default_forward
from captum_mamba.attr.generation import greedy_generate
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.rules import MambaRules
from captum_mamba.study import measure_peak_memory

TARGET_TOKEN = 42
QUICK = {
    "hidden": 16,
    "layers": 2,
    "state": 4,
    "vocab": 64,
    "lengths": [32, 128],
    "long_lengths": [512],
    "compare_length": 128,
    "saliency_cap": 20.0,
    "gen_prompt": 16,
    "gen_tokens": 4,
    "texts": 8,
    "text_lengths": [4, 32],
    "batch_sizes": [1, 4],
}


@dataclass
class LengthRow:
    """Measurements at one sequence length (seconds, MiB; None: not run)."""

    length: int
    lean: bool
    lrp: float
    lrp_mib: float
    forward_rules: float
    forward_rules_mib: float
    forward_hf: float | None
    saliency: float | None
    saliency_note: str


@dataclass
class GenerationResult:
    """Generation and its explanation, new method against the previous one (seconds)."""

    prompt: int
    tokens: int
    forward_rules: float
    forward_hf: float
    generate: float
    explain: float
    explain_mib: float
    before_generate: float
    before_explain: float
    before_samples: dict[str, Any] = field(default_factory=dict)


def _median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _shape(args: argparse.Namespace) -> str:
    return f"{args.hidden},{args.layers},{args.state},{args.vocab}"


def _model(args: argparse.Namespace) -> torch.nn.Module:
    config = mamba_config(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        state_size=args.state,
        vocab_size=args.vocab,
    )
    return random_mamba_lm(config, seed=0)


def _ids(vocab: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def _saliency_worker(args: argparse.Namespace) -> None:
    from captum.attr import Saliency

    model = _model(args)
    embeds = model.get_input_embeddings()(_ids(args.vocab, args.saliency_worker, 0)).detach()
    saliency = Saliency(
        lambda e: model(inputs_embeds=e, use_cache=False, logits_to_keep=1).logits[:, -1]
    )
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


def _measure(args: argparse.Namespace, method: str, length: int) -> dict[str, Any]:
    repeats = args.repeats if length <= 4096 else 1
    return measure_peak_memory(
        method, length, threads=args.threads, shape=_shape(args), repeats=repeats
    )


def measure_lengths(
    args: argparse.Namespace, progress: Callable[[str], None] = print
) -> list[LengthRow]:
    """Time and peak memory of every method at every length.

    Args:
        args (argparse.Namespace): parsed command-line options.
        progress (Callable, optional): receives one line per finished length.

    Returns:
        list of LengthRow: one row per sequence length.
    """
    rows: list[LengthRow] = []
    saliency_open = args.saliency_cap > 0
    for length in [*args.lengths, *args.long_lengths]:
        lrp = _measure(args, "mambalrp", length)
        rules = _measure(args, "forward-rules", length)
        hf = (
            _measure(args, "forward-hf", length)["seconds"]
            if length <= args.hf_max_length
            else None
        )
        saliency, note = (None, "skipped")
        if saliency_open:
            saliency, note = _saliency(args, length)
            saliency_open = saliency is not None
        rows.append(
            LengthRow(
                length,
                lrp["lean"],
                lrp["seconds"],
                lrp["increase_mib"],
                rules["seconds"],
                rules["increase_mib"],
                hf,
                saliency,
                note,
            )
        )
        progress(f"measured {length} tokens")
    return rows


def compare_paths(args: argparse.Namespace) -> list[dict[str, Any]]:
    """MambaLRP at ``--compare-length`` on the fast and lean paths and as before the
    lean path existed (every position's logits, no recomputation)."""
    methods = ("mambalrp-full-logits", "mambalrp-fast", "mambalrp-lean")
    return [_measure(args, method, args.compare_length) for method in methods]


def _before_generation_costs(
    model: torch.nn.Module, prompt: torch.Tensor, generated: torch.Tensor
) -> tuple[float, float, dict[str, Any]]:
    """Seconds of the previous generation method, extrapolated from sampled steps.

    It generated token ``i`` with a no-grad forward of the whole prefix (``prompt + i``
    tokens, transformers' forward, every position's logits), so its cost is linear in
    ``i``: the first and last steps are timed and averaged. It explained each token by
    one attribution row over the whole context with every position's logits (a
    ``LayerMambaLRP`` call per row, no recomputation): one row is timed and multiplied.
    """
    forward = default_forward(model, "input_ids")
    steps = len(generated)
    sequence = torch.cat([prompt, generated])

    def step(i: int) -> float:
        with torch.no_grad():
            return _median_time(lambda: forward(sequence[None, : len(prompt) + i]), 1)

    first, last = step(0), step(steps - 1)
    context = sequence[:-1]

    def all_logits(ids: torch.Tensor) -> torch.Tensor:
        return forward(ids)  # a plain function: the head runs at every position

    lrp = LayerMambaLRP(model, model.get_input_embeddings(), all_logits, lean=False)
    target = [(len(prompt) - 1, int(generated[0]))]
    row = _median_time(lambda: lrp.attribute(context[None], target=target), 1)
    samples = {"first_step_s": first, "last_step_s": last, "row_s": row}
    return steps * (first + last) / 2, steps * row, samples


def measure_generation(args: argparse.Namespace) -> GenerationResult:
    """Greedy generation and its explanation, new against the previous method."""
    model = _model(args)
    prompt = _ids(args.vocab, args.gen_prompt, 1)[0]
    greedy_generate(model, prompt[:4], 2)  # warm-up
    start = time.perf_counter()
    generated = greedy_generate(model, prompt, args.gen_tokens)
    generate = time.perf_counter() - start
    full = torch.cat([prompt, generated])[None]
    forward = default_forward(model, "input_ids")

    def forward_rules() -> None:
        with torch.no_grad(), rules_applied(model, MambaRules()):
            forward.last_logits(full)

    def forward_hf() -> None:
        with torch.no_grad():
            model(full, use_cache=False, logits_to_keep=1)

    rules_s, hf_s = _median_time(forward_rules, 1), _median_time(forward_hf, 1)
    explain, explain_samples = _explain_cost(model, prompt, generated, args.gen_explain_steps)
    explain_mib = _explain_peak_mib(args)
    before_generate, before_explain, samples = _before_generation_costs(model, prompt, generated)
    samples.update(explain_samples)
    return GenerationResult(
        args.gen_prompt,
        len(generated),
        rules_s,
        hf_s,
        generate,
        explain,
        explain_mib,
        before_generate,
        before_explain,
        samples,
    )


def _explain_cost(
    model: torch.nn.Module, prompt: torch.Tensor, generated: torch.Tensor, steps: int
) -> tuple[float, dict[str, Any]]:
    """Seconds to explain every generated token, measured or extrapolated.

    With ``steps`` 0 (or at least the number of tokens) ``attribute_generation`` explains
    them all. Otherwise its cost, one forward pass of the sequence and one backward pass
    per explained token, is extrapolated linearly from two calls on the same sequence
    that explain only its last token and its last ``steps`` tokens (the earlier generated
    tokens moved into the prompt, so the forward pass is the same).
    """
    tokens = len(generated)
    if steps <= 0 or steps >= tokens:
        start = time.perf_counter()
        attribute_generation(model, prompt, target_ids=generated)
        return time.perf_counter() - start, {}

    def explain_last(count: int) -> float:
        context = torch.cat([prompt, generated[: tokens - count]])
        start = time.perf_counter()
        attribute_generation(model, context, target_ids=generated[tokens - count :])
        return time.perf_counter() - start

    one, many = explain_last(1), explain_last(steps)
    per_token = max(many - one, 0.0) / (steps - 1)
    samples = {"explain_last_1_s": one, f"explain_last_{steps}_s": many}
    return one + (tokens - 1) * per_token, samples


def _explain_peak_mib(args: argparse.Namespace) -> float:
    """Peak memory growth of the generation explanation, in a fresh subprocess."""
    command = [sys.executable, "-m", "captum_mamba.benchmark", "--generation-worker"]
    command += ["--hidden", str(args.hidden), "--layers", str(args.layers)]
    command += ["--state", str(args.state), "--vocab", str(args.vocab)]
    command += ["--gen-prompt", str(args.gen_prompt), "--gen-tokens", str(args.gen_tokens)]
    command += ["--gen-explain-steps", str(args.gen_explain_steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the generation worker failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _generation_worker(args: argparse.Namespace) -> None:
    from captum_mamba.study import _proc_status, _reset_peak

    model = _model(args)
    prompt = _ids(args.vocab, args.gen_prompt, 1)[0]
    targets = _ids(args.vocab, args.gen_tokens, 2)[0]
    attribute_generation(model, prompt[:4], target_ids=targets[:2])  # warm-up
    if not _reset_peak():
        print("nan")
        return
    before = _proc_status("VmRSS")
    steps = args.gen_explain_steps
    if 0 < steps < len(targets):  # the same sequence, its last ``steps`` tokens explained
        prompt, targets = torch.cat([prompt, targets[:-steps]]), targets[-steps:]
    attribute_generation(model, prompt, target_ids=targets)
    print(f"{(_proc_status('VmHWM') - before) / 1024:.1f}")


def measure_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tokens per second of :func:`attribute_batches` (LayerMambaLRP on token ids, last
    token's logit) over texts of random lengths, per batch size and thread count."""
    model = _model(args)
    generator = torch.Generator().manual_seed(3)
    low, high = args.text_lengths
    lengths = torch.randint(low, high + 1, (args.texts,), generator=generator).tolist()
    texts = [torch.randint(0, args.vocab, (n,), generator=generator) for n in lengths]
    targets = [(-1, TARGET_TOKEN)] * len(texts)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    tokens = sum(lengths)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in args.thread_counts:
            torch.set_num_threads(threads)
            attribute_batches(lrp, texts[:2], targets[:2], batch_size=2)  # warm-up
            for batch_size in args.batch_sizes:
                start = time.perf_counter()
                attribute_batches(lrp, texts, targets, batch_size=batch_size)
                seconds = time.perf_counter() - start
                results.append(
                    {
                        "threads": threads,
                        "batch_size": batch_size,
                        "texts": len(texts),
                        "tokens": tokens,
                        "seconds": round(seconds, 2),
                        "tokens_per_s": round(tokens / seconds, 1),
                    }
                )
    finally:
        torch.set_num_threads(previous)
    return results


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


LENGTH_HEADER = [
    "tokens",
    "path",
    "MambaLRP s",
    "ms/token",
    "MambaLRP peak MiB",
    "MiB/token",
    "no-grad fwd (rules) s",
    "fwd (rules) peak MiB",
    "no-grad fwd (transformers) s",
    "LRP / fwd (rules)",
    "Saliency s",
    "Saliency / LRP",
]


def _length_cells(row: LengthRow) -> list[str]:
    if row.saliency is not None:
        saliency, speedup = f"{row.saliency:.2f}", f"{row.saliency / row.lrp:.1f}x"
    elif row.saliency_note.startswith(">"):
        cap = float(row.saliency_note[1:].split()[0])
        saliency, speedup = row.saliency_note, f"> {cap / row.lrp:.1f}x"
    else:
        saliency, speedup = row.saliency_note, "-"
    return [
        str(row.length),
        "lean" if row.lean else "fast",
        _cell(row.lrp),
        _cell(1000 * row.lrp / row.length),
        _cell(row.lrp_mib, 0),
        _cell(row.lrp_mib / row.length, 3),
        _cell(row.forward_rules),
        _cell(row.forward_rules_mib, 0),
        _cell(row.forward_hf),
        _cell(row.lrp / row.forward_rules),
        saliency,
        speedup,
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(results: dict[str, Any]) -> str:
    """The benchmark results (as in ``results.json``) as Markdown tables."""
    parts = []
    if results.get("lengths"):
        rows = [LengthRow(**row) for row in results["lengths"]]
        parts.append(_table(LENGTH_HEADER, [_length_cells(row) for row in rows]))
    if results.get("compare"):
        header = ["MambaLRP at " + str(results["compare"][0]["length"]) + " tokens", "s"]
        header += ["peak MiB", "MiB/token"]
        names = {
            "mambalrp-full-logits": "before: every position's logits, no recomputation",
            "mambalrp-fast": "fast path (head at the explained position)",
            "mambalrp-lean": "lean path (+ residual layers recomputed)",
        }
        cells = [
            [
                names[r["method"]],
                _cell(r["seconds"]),
                _cell(r["increase_mib"], 0),
                _cell(r["mib_per_token"], 3),
            ]
            for r in results["compare"]
        ]
        parts.append(_table(header, cells))
    if results.get("generation"):
        g = GenerationResult(**results["generation"])
        sampled = [k for k in g.before_samples if k.startswith("explain_last_")]
        new_note = " (explain extrapolated)" if sampled else ""
        header = ["generation", "new s" + new_note, "before s (extrapolated)", "before / new"]
        total_new, total_before = g.generate + g.explain, g.before_generate + g.before_explain
        cells = [
            [name, _cell(new), _cell(before), f"{before / new:.1f}x"]
            for name, new, before in (
                ("generate", g.generate, g.before_generate),
                ("explain", g.explain, g.before_explain),
                ("generate + explain", total_new, total_before),
            )
        ]
        parts.append(
            f"{g.tokens} tokens after a {g.prompt}-token prompt; one no-grad forward of the "
            f"{g.prompt + g.tokens} tokens: {g.forward_rules:.2f} s (rules), "
            f"{g.forward_hf:.2f} s (transformers); generation / forward (rules) = "
            f"{g.generate / g.forward_rules:.2f}; explanation peak memory "
            f"{g.explain_mib:.0f} MiB\n\n" + _table(header, cells)
        )
    if results.get("throughput"):
        header = ["threads", "batch size", "texts", "tokens", "s", "tokens/s"]
        cells = [
            [str(r[k]) for k in ("threads", "batch_size", "texts", "tokens", "seconds")]
            + [str(r["tokens_per_s"])]
            for r in results["throughput"]
        ]
        parts.append(_table(header, cells))
    if results.get("hybrids"):
        parts.append(hybrid_table(results["hybrids"]))
    return "\n\n".join(parts)


def plot_scaling(rows: Sequence[LengthRow], path: Path) -> Path:
    """Time and peak memory growth against length, log-log, for MambaLRP and the no-grad
    forward under the rules.

    Args:
        rows (sequence of LengthRow): measured lengths.
        path (Path): the image file to write.

    Returns:
        Path: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [row.length for row in rows]
    figure, (timing, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, values, label in (
        (timing, [row.lrp for row in rows], "MambaLRP"),
        (timing, [row.forward_rules for row in rows], "no-grad forward (rules)"),
        (memory, [row.lrp_mib for row in rows], "MambaLRP"),
        (memory, [row.forward_rules_mib for row in rows], "no-grad forward (rules)"),
    ):
        axis.plot(lengths, values, marker="o", label=label)
    lean = [row.length for row in rows if row.lean]
    for axis in (timing, memory):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("tokens")
        if lean:
            axis.axvspan(min(lean), max(lengths), color="grey", alpha=0.1, label="lean path")
        axis.legend(fontsize=8)
    timing.set_ylabel("seconds")
    memory.set_ylabel("peak memory growth (MiB)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


#: Hybrid shapes of ``--hybrid-lengths``: hidden 256, 16 attention heads, two attention
#: and two state-space layers (Bamba: Mamba-2 mixers; Jamba: Mamba-1 mixers and a
#: mixture of 4 experts, top 2, in every other layer), float32, random weights.
HYBRIDS = {
    "bamba": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=1024,
        num_attention_heads=16, num_key_value_heads=16, attn_layer_indices=[1, 3],
        mamba_n_heads=8, mamba_d_head=64, mamba_n_groups=1, mamba_d_state=64,
        mamba_chunk_size=256, mamba_expand=2,
    ),
    "jamba": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=1024,
        num_attention_heads=16, num_key_value_heads=16, attn_layer_period=2,
        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4,
        num_experts_per_tok=2, mamba_d_state=16, mamba_expand=2, use_mamba_kernels=False,
    ),
}  # fmt: skip


def _hybrid_worker(family: str, method: str, length: int) -> dict[str, Any]:
    """One measurement of ``method`` (``"mambalrp"`` or ``"forward-hf"``) on the hybrid
    ``family`` at ``length`` tokens: warm-up on 8 tokens, peak resident set reset, one run."""
    import transformers

    from captum_mamba.attr import MambaLRP
    from captum_mamba.study import _proc_status, _reset_peak

    config_class, model_class = {
        "bamba": (transformers.BambaConfig, transformers.BambaForCausalLM),
        "jamba": (transformers.JambaConfig, transformers.JambaForCausalLM),
    }[family]
    torch.manual_seed(0)
    config = config_class(**HYBRIDS[family])
    config._attn_implementation = "sdpa"
    model = model_class(config).eval()
    ids = _ids(config.vocab_size, length, 0)
    embeds = model.get_input_embeddings()(ids).detach()

    def call(x: torch.Tensor) -> None:
        if method == "mambalrp":
            MambaLRP(model).attribute(x, target=(-1, TARGET_TOKEN))
        else:
            with torch.no_grad():
                model(inputs_embeds=x, use_cache=False, logits_to_keep=1)

    call(embeds[:, :8])
    exact = _reset_peak()
    before = _proc_status("VmRSS") or 0
    start = time.perf_counter()
    call(embeds)
    seconds = time.perf_counter() - start
    peak = _proc_status("VmHWM") or 0
    increase = (peak - before) / 1024
    return {
        "family": family,
        "method": method,
        "length": length,
        "seconds": round(seconds, 3),
        "increase_mib": round(increase, 1),
        "mib_per_token": round(increase / length, 4),
        "peak_reset": exact,
    }


def measure_hybrids(args: argparse.Namespace, progress: Callable[[str], None] = print) -> list:
    """MambaLRP against transformers' no-grad forward (SDPA attention) on the hybrid
    shapes of :data:`HYBRIDS` at ``--hybrid-lengths``, each run in a fresh subprocess.

    Returns:
        list of dict: per family and length, ``lrp`` and ``forward`` seconds, their
        ``ratio``, MambaLRP's peak memory growth ``lrp_mib`` and ``lrp_mib_per_token``.
    """
    rows = []
    for family in args.hybrids:
        for length in args.hybrid_lengths:
            measured = {}
            for method in ("mambalrp", "forward-hf"):
                command = [sys.executable, "-m", "captum_mamba.benchmark", "--hybrid-worker",
                           f"{family},{method},{length}"]  # fmt: skip
                if args.threads:
                    command += ["--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                measured[method] = json.loads(done.stdout.strip().splitlines()[-1])
            lrp, forward = measured["mambalrp"], measured["forward-hf"]
            ratio = round(lrp["seconds"] / forward["seconds"], 1)
            rows.append({
                "family": family, "length": length, "lrp": lrp["seconds"],
                "forward": forward["seconds"], "ratio": ratio,
                "lrp_mib": lrp["increase_mib"], "lrp_mib_per_token": lrp["mib_per_token"],
                "forward_mib": forward["increase_mib"],
            })  # fmt: skip
            progress(f"measured {family} at {length} tokens: {rows[-1]}")
    return rows


def hybrid_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`measure_hybrids` as a markdown table."""
    header = ["model", "tokens", "MambaLRP s", "forward s", "ratio", "MambaLRP MiB",
              "MiB/token", "forward MiB"]  # fmt: skip
    keys = ["family", "length", "lrp", "forward", "ratio", "lrp_mib", "lrp_mib_per_token",
            "forward_mib"]  # fmt: skip
    return _table(header, [[str(row[key]) for key in keys] for row in rows])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[128, 512, 2048])
    parser.add_argument("--long-lengths", type=int, nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=3, help="runs per length up to 4096")
    parser.add_argument(
        "--saliency-cap", type=float, default=600.0, help="seconds; 0 skips Saliency"
    )
    parser.add_argument("--hf-max-length", type=int, default=2048)
    parser.add_argument("--compare-length", type=int, default=0, help="0 skips the comparison")
    parser.add_argument("--generation", action="store_true")
    parser.add_argument("--gen-prompt", type=int, default=1024)
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument(
        "--gen-explain-steps",
        type=int,
        default=0,
        help="explain only this many tokens and extrapolate (0: explain all)",
    )
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--text-lengths", type=int, nargs=2, default=[16, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the runs")
    parser.add_argument("--out", type=Path, default=None, help="folder for json, md and plot")
    parser.add_argument("--quick", action="store_true", help="tiny model, small sizes")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=50280)
    parser.add_argument("--saliency-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generation-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hybrids", nargs="*", default=["bamba", "jamba"], choices=HYBRIDS)
    parser.add_argument("--hybrid-lengths", type=int, nargs="*", default=[])
    parser.add_argument("--hybrid-worker", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the parts of the benchmark that ``args`` selects.

    Args:
        args (argparse.Namespace): parsed command-line options.
        progress (Callable, optional): receives progress lines.

    Returns:
        dict: ``machine`` (threads, load, torch version), ``lengths``, ``compare``,
        ``generation`` and ``throughput`` results (empty when not run).
    """
    results: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "threads": args.threads or torch.get_num_threads(),
            "load_before": os.getloadavg(),
            "shape": _shape(args),
        }
    }
    lengths = measure_lengths(args, progress)
    results["lengths"] = [asdict(row) for row in lengths]
    results["hybrids"] = measure_hybrids(args, progress) if args.hybrid_lengths else []
    results["compare"] = compare_paths(args) if args.compare_length else []
    if args.generation:
        results["generation"] = asdict(measure_generation(args))
        progress("measured generation")
    if args.throughput:
        results["throughput"] = measure_throughput(args)
        progress("measured throughput")
    results["machine"]["load_after"] = os.getloadavg()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "tables.md").write_text(markdown_tables(results) + "\n")
        if lengths:
            plot_scaling(lengths, args.out / "scaling.png")
    return results


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the benchmark tables."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:  # quick sizes as defaults; options given explicitly still apply
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.saliency_worker is not None:
        _saliency_worker(args)
        return
    if args.generation_worker:
        _generation_worker(args)
        return
    if args.hybrid_worker is not None:
        family, method, length = args.hybrid_worker.split(",")
        print(json.dumps(_hybrid_worker(family, method, int(length))))
        return
    results = run(args, progress=lambda line: print(line, file=sys.stderr))
    machine = results["machine"]
    print(
        f"random Mamba ({machine['shape']}: hidden, layers, state, vocab), float32, batch 1; "
        f"torch {machine['torch']}, {machine['threads']} threads; load average "
        f"{machine['load_before'][0]:.2f} before, {machine['load_after'][0]:.2f} after"
    )
    print(markdown_tables(results))


if __name__ == "__main__":
    main()
