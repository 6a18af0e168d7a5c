"""Benchmark: time and peak memory of MambaLRP against forward passes and Captum's
Saliency, long inputs, generation and batched throughput.

Run ``captum-mamba benchmark`` (options: :class:`BenchmarkSettings`). For a randomly
initialised Mamba with the shape of ``mamba-130m`` (float32, batch 1) it prints:

- per sequence length (``--lengths``, and ``--long-lengths`` such as 8k to 64k tokens),
  each method measured in a fresh subprocess (:func:`captum_mamba.apps.study.measure_peak_memory`:
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
- ``--targets K ...``: many targets per pass: seconds per target and peak memory of
  ``MambaLRP.attribute(embeds, targets=[K targets])`` (one forward pass, one batched
  backward pass, ``--targets-per-pass`` targets at a time) against one backward pass per
  target through one forward pass and one ``attribute`` call per target (a forward and
  a backward pass each), at ``--targets-length`` tokens, for each ``K``;
- ``--throughput``: tokens per second of :func:`captum_mamba.attribute_batches` on
  texts of random lengths against batch size and threads;
- ``--hybrid-lengths``: MambaLRP against transformers' no-grad forward on a Bamba-shaped
  and a Jamba-shaped hybrid (:data:`HYBRIDS`, ``--hybrids``), time and peak memory per
  length, each measurement in a fresh subprocess;
- ``--families NAME ...``: for each named model family (:data:`FAMILY_MODELS`,
  :data:`MAMBA_SSM_FAMILIES`: mamba-ssm's Mamba-3, whose "forward" on CPU is this
  package's forward with every rule off) a randomly initialised model of a small shape
  (float32, batch 1, SDPA attention where it has any):
  ``MambaLRP.attribute`` (one target logit) against transformers' own no-grad forward
  to the last position's logits (on CPUs the reference PyTorch path of the Mamba layers:
  a loop over time steps for Mamba-1) and against the same forward through this
  package's scans with every rule off, at each of ``--family-lengths`` (in this process,
  median of ``--repeats`` runs, no memory measured);
- ``--out DIR``: ``results.json``, ``tables.md`` and ``scaling.png`` (time and peak
  memory against length, log-log).

``--quick`` runs everything on a tiny model at small sizes (a smoke test). Compare
ratios, not absolute numbers, on a shared machine; the machine load (``os.getloadavg``)
is printed with the results.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from captum_mamba.adapters import rules_applied
from captum_mamba.apps.study import measure_peak_memory, proc_status, reset_peak
from captum_mamba.attr import LayerMambaLRP, MambaLRP, attribute_batches, attribute_generation
from captum_mamba.attr.forward import default_forward
from captum_mamba.attr.generation import greedy_generate
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.rules import MambaRules

TARGET_TOKEN = 42


@dataclass(frozen=True)
class BenchmarkSettings:
    """What the benchmark measures, and on which model (the options of
    ``captum-mamba benchmark``, see the module docstring).

    Args:
        lengths (tuple of int): sequence lengths measured. Default: 128, 512, 2048.
        long_lengths (tuple of int): further lengths (e.g. 8k to 64k). Default: none.
        repeats (int): runs per length up to 4096 tokens (the median counts). Default: 3.
        saliency_cap (float): seconds before Saliency is stopped; 0 skips it. Default: 600.
        hf_max_length (int): longest length of transformers' own forward. Default: 2048.
        compare_length (int): length of the fast / lean path comparison; 0 skips it.
            Default: 0.
        generation (bool): measure generation and its explanation. Default: False.
        gen_prompt (int): prompt tokens of the generation. Default: 1024.
        gen_tokens (int): generated tokens. Default: 256.
        gen_explain_steps (int): explain only this many tokens and extrapolate (0:
            explain all). Default: 0.
        targets (tuple of int): numbers of targets ``K`` of the many-target
            measurement. Default: none (skipped).
        targets_length (int): sequence length of the many-target measurement.
            Default: 256.
        targets_per_pass (int, optional): targets per batched backward pass (the
            memory-bounded chunk of ``K``). Default: None (automatic).
        throughput (bool): measure batched throughput. Default: False.
        texts (int): texts of the throughput measurement. Default: 64.
        text_lengths (tuple of int): lowest and highest text length. Default: 16, 256.
        batch_sizes (tuple of int): batch sizes of the throughput. Default: 1, 4, 16.
        thread_counts (tuple of int): torch threads of the throughput. Default: 1, 2.
        hybrids (tuple of str): the hybrid shapes (names of :data:`HYBRIDS`) measured at
            ``hybrid_lengths``. Default: ``("bamba", "jamba")``.
        hybrid_lengths (tuple of int): sequence lengths of the hybrids. Default: none.
        families (tuple of str): model families measured (keys of
            :data:`FAMILY_MODELS` or :data:`MAMBA_SSM_FAMILIES`). Default: none.
        family_lengths (tuple of int): sequence lengths of the families. Default: 512,
            2048.
        threads (int, optional): torch threads of the runs. Default: None (torch's).
        out (Path, optional): folder for ``results.json``, ``tables.md`` and
            ``scaling.png``. Default: None (nothing written).
        hidden (int): hidden size of the random model. Default: 768 (``mamba-130m``).
        layers (int): layers. Default: 24.
        state (int): state size. Default: 16.
        vocab (int): vocabulary size (above :data:`TARGET_TOKEN`). Default: 50280.
    """

    lengths: tuple[int, ...] = (128, 512, 2048)
    long_lengths: tuple[int, ...] = ()
    repeats: int = 3
    saliency_cap: float = 600.0
    hf_max_length: int = 2048
    compare_length: int = 0
    generation: bool = False
    gen_prompt: int = 1024
    gen_tokens: int = 256
    gen_explain_steps: int = 0
    targets: tuple[int, ...] = ()
    targets_length: int = 256
    targets_per_pass: int | None = None
    throughput: bool = False
    texts: int = 64
    text_lengths: tuple[int, int] = (16, 256)
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    thread_counts: tuple[int, ...] = (1, 2)
    hybrids: tuple[str, ...] = ("bamba", "jamba")
    hybrid_lengths: tuple[int, ...] = ()
    families: tuple[str, ...] = ()
    family_lengths: tuple[int, ...] = (512, 2048)
    threads: int | None = None
    out: Path | None = None
    hidden: int = 768
    layers: int = 24
    state: int = 16
    vocab: int = 50280

    @classmethod
    def quick(cls) -> BenchmarkSettings:
        """A tiny model at small sizes (a smoke test)."""
        return cls(
            hidden=16,
            layers=2,
            state=4,
            vocab=64,
            lengths=(32, 128),
            long_lengths=(512,),
            compare_length=128,
            saliency_cap=20.0,
            gen_prompt=16,
            gen_tokens=4,
            texts=8,
            text_lengths=(4, 32),
            batch_sizes=(1, 4),
        )

    def replace(self, **changes: Any) -> BenchmarkSettings:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def shape(self) -> str:
        """The model shape, ``"hidden,layers,state,vocab"``."""
        return f"{self.hidden},{self.layers},{self.state},{self.vocab}"

    def shape_options(self) -> list[str]:
        """The model shape as ``captum-mamba benchmark`` options (for the workers)."""
        return [
            *("--hidden", str(self.hidden), "--layers", str(self.layers)),
            *("--state", str(self.state), "--vocab", str(self.vocab)),
        ]


#: The command that runs the benchmark's worker processes.
WORKER_COMMAND = ("-m", "captum_mamba", "benchmark")


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


def _model(settings: BenchmarkSettings) -> torch.nn.Module:
    config = mamba_config(
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        state_size=settings.state,
        vocab_size=settings.vocab,
    )
    return random_mamba_lm(config, seed=0)


def _ids(vocab: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def saliency_worker(settings: BenchmarkSettings, length: int) -> float:
    """Seconds of Captum's ``Saliency`` at ``length`` tokens (run in a worker process)."""
    from captum.attr import Saliency

    model = _model(settings)
    embeds = model.get_input_embeddings()(_ids(settings.vocab, length, 0)).detach()
    saliency = Saliency(
        lambda e: model(inputs_embeds=e, use_cache=False, logits_to_keep=1).logits[:, -1]
    )
    start = time.perf_counter()
    saliency.attribute(embeds, target=TARGET_TOKEN, abs=False)
    return time.perf_counter() - start


def _saliency(settings: BenchmarkSettings, length: int) -> tuple[float | None, str]:
    command = [sys.executable, *WORKER_COMMAND, "--saliency-worker", str(length)]
    command += settings.shape_options()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=settings.saliency_cap, check=True
        )
    except subprocess.TimeoutExpired:
        return None, f">{settings.saliency_cap:.0f} (cap)"
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"the Saliency worker failed:\n{error.stderr}") from error
    return float(done.stdout.strip().splitlines()[-1]), ""


def _measure(settings: BenchmarkSettings, method: str, length: int) -> dict[str, Any]:
    repeats = settings.repeats if length <= 4096 else 1
    return measure_peak_memory(
        method, length, threads=settings.threads, shape=settings.shape(), repeats=repeats
    )


def measure_lengths(
    settings: BenchmarkSettings, progress: Callable[[str], None] = print
) -> list[LengthRow]:
    """Time and peak memory of every method at every length.

    Args:
        settings (BenchmarkSettings): what to measure.
        progress (Callable, optional): receives one line per finished length.

    Returns:
        list of LengthRow: one row per sequence length.
    """
    rows: list[LengthRow] = []
    saliency_open = settings.saliency_cap > 0
    for length in [*settings.lengths, *settings.long_lengths]:
        lrp = _measure(settings, "mambalrp", length)
        rules = _measure(settings, "forward-rules", length)
        hf = (
            _measure(settings, "forward-hf", length)["seconds"]
            if length <= settings.hf_max_length
            else None
        )
        saliency, note = (None, "skipped")
        if saliency_open:
            saliency, note = _saliency(settings, length)
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


def compare_paths(settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """MambaLRP at ``--compare-length`` on the fast and lean paths and as before the
    lean path existed (every position's logits, no recomputation)."""
    methods = ("mambalrp-full-logits", "mambalrp-fast", "mambalrp-lean")
    return [_measure(settings, method, settings.compare_length) for method in methods]


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


def measure_generation(settings: BenchmarkSettings) -> GenerationResult:
    """Greedy generation and its explanation, new against the previous method."""
    model = _model(settings)
    prompt = _ids(settings.vocab, settings.gen_prompt, 1)[0]
    greedy_generate(model, prompt[:4], 2)  # warm-up
    start = time.perf_counter()
    generated = greedy_generate(model, prompt, settings.gen_tokens)
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
    explain, explain_samples = _explain_cost(model, prompt, generated, settings.gen_explain_steps)
    explain_mib = _explain_peak_mib(settings)
    before_generate, before_explain, samples = _before_generation_costs(model, prompt, generated)
    samples.update(explain_samples)
    return GenerationResult(
        settings.gen_prompt,
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


def _explain_peak_mib(settings: BenchmarkSettings) -> float:
    """Peak memory growth of the generation explanation, in a fresh subprocess."""
    command = [sys.executable, *WORKER_COMMAND, "--generation-worker"]
    command += settings.shape_options()
    command += ["--gen-prompt", str(settings.gen_prompt), "--gen-tokens", str(settings.gen_tokens)]
    command += ["--gen-explain-steps", str(settings.gen_explain_steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the generation worker failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def generation_worker(settings: BenchmarkSettings) -> float:
    """Peak memory growth (MiB; NaN where it cannot be reset) of explaining the
    generation of ``settings`` (run in a worker process)."""
    model = _model(settings)
    prompt = _ids(settings.vocab, settings.gen_prompt, 1)[0]
    targets = _ids(settings.vocab, settings.gen_tokens, 2)[0]
    attribute_generation(model, prompt[:4], target_ids=targets[:2])  # warm-up
    if not reset_peak():
        return float("nan")
    before = proc_status("VmRSS")
    steps = settings.gen_explain_steps
    if 0 < steps < len(targets):  # the same sequence, its last ``steps`` tokens explained
        prompt, targets = torch.cat([prompt, targets[:-steps]]), targets[-steps:]
    attribute_generation(model, prompt, target_ids=targets)
    return (proc_status("VmHWM") - before) / 1024


def measure_targets(settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """Seconds per target and peak memory of MambaLRP with ``K`` targets in one call (one
    forward pass, one batched backward pass, ``settings.targets_per_pass`` targets per
    pass), for each ``K`` of ``settings.targets``, against one backward pass per target
    through one forward pass (timed at ``K = min(8, largest K)``) and one call per target;
    target ``k`` is token ``42 + k`` at position ``-1 - k`` (cycling through the sequence)."""
    model = _model(settings)
    length = settings.targets_length
    embeds = model.get_input_embeddings()(_ids(settings.vocab, length, 5)).detach()
    lrp = MambaLRP(model)

    def targets(count: int) -> list[tuple[int, int]]:
        return [
            (length - 1 - k % length, (TARGET_TOKEN + k) % settings.vocab) for k in range(count)
        ]

    def run(count: int, per_pass: int | None) -> tuple[float, float]:
        """Seconds and peak memory growth (MiB; NaN where it cannot be reset) of a call."""
        peak = reset_peak()
        before = proc_status("VmRSS")
        start = time.perf_counter()
        lrp.attribute(embeds, targets=targets(count), targets_per_pass=per_pass)
        seconds = time.perf_counter() - start
        return seconds, (proc_status("VmHWM") - before) / 1024 if peak else float("nan")

    lrp.attribute(embeds[:, :8], targets=[(-1, TARGET_TOKEN), (-2, TARGET_TOKEN)])  # warm-up
    single = _median_time(lambda: lrp.attribute(embeds, target=targets(1)[0]), settings.repeats)
    looped = min(8, max(settings.targets))
    loop_seconds, loop_mib = run(looped, 1)
    results = []
    for count in settings.targets:
        seconds, mib = run(count, settings.targets_per_pass)
        results.append(
            {
                "targets": count,
                "length": length,
                "backward": lrp.last_backward,
                "seconds": round(seconds, 3),
                "per_target": round(seconds / count, 4),
                "peak_mib": round(mib, 1),
                "looped_targets": looped,
                "one_backward_each": round(loop_seconds / looped, 4),
                "one_backward_each_mib": round(loop_mib, 1),
                "single_call": round(single, 4),
            }
        )
    return results


def measure_throughput(settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """Tokens per second of :func:`attribute_batches` (LayerMambaLRP on token ids, last
    token's logit) over texts of random lengths, per batch size and thread count."""
    model = _model(settings)
    generator = torch.Generator().manual_seed(3)
    low, high = settings.text_lengths
    lengths = torch.randint(low, high + 1, (settings.texts,), generator=generator).tolist()
    texts = [torch.randint(0, settings.vocab, (n,), generator=generator) for n in lengths]
    targets = [(-1, TARGET_TOKEN)] * len(texts)
    lrp = LayerMambaLRP(model, model.get_input_embeddings())
    tokens = sum(lengths)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in settings.thread_counts:
            torch.set_num_threads(threads)
            attribute_batches(lrp, texts[:2], targets[:2], batch_size=2)  # warm-up
            for batch_size in settings.batch_sizes:
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


#: Hybrid shapes of ``--hybrid-lengths`` (transformers configuration arguments): hidden
#: 256, 16 attention heads, two attention and two state-space layers (Bamba: Mamba-2
#: mixers; Jamba: Mamba-1 mixers and a mixture of 4 experts, top 2, in every other layer).
HYBRIDS: dict[str, dict[str, Any]] = {
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

_HYBRID_CLASSES = {
    "bamba": ("BambaConfig", "BambaForCausalLM"),
    "jamba": ("JambaConfig", "JambaForCausalLM"),
}


def hybrid_worker(family: str, method: str, length: int) -> dict[str, Any]:
    """One measurement on a hybrid of :data:`HYBRIDS` (run in a worker process): warm-up
    on 8 tokens, peak resident set reset, one run.

    Args:
        family (str): ``"bamba"`` or ``"jamba"``.
        method (str): ``"mambalrp"`` (``MambaLRP.attribute``, one target logit at the last
            position) or ``"forward-hf"`` (transformers' no-grad forward, SDPA attention,
            the last position's logits).
        length (int): sequence length (batch 1).

    Returns:
        dict: ``seconds``, ``increase_mib`` (peak resident set above the one before the
        run) and ``peak_reset`` (whether the peak could be reset).
    """
    config_name, model_name = _HYBRID_CLASSES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**HYBRIDS[family])
    config._attn_implementation = "sdpa"
    model = getattr(transformers, model_name)(config).eval()
    embeds = model.get_input_embeddings()(_ids(config.vocab_size, length, 0)).detach()
    explainer = MambaLRP(model)

    def call(x: torch.Tensor) -> None:
        if method == "mambalrp":
            explainer.attribute(x, target=(-1, TARGET_TOKEN))
        else:
            with torch.no_grad():
                model(inputs_embeds=x, use_cache=False, logits_to_keep=1)

    call(embeds[:, :8])
    exact = reset_peak()
    before = proc_status("VmRSS") or 0
    start = time.perf_counter()
    call(embeds)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM") or 0
    return {
        "seconds": round(seconds, 3),
        "increase_mib": round((peak - before) / 1024, 1),
        "peak_reset": exact,
    }


def measure_hybrids(
    settings: BenchmarkSettings, progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """MambaLRP against transformers' no-grad forward on the hybrids ``settings.hybrids``
    at ``settings.hybrid_lengths``, each measurement in a fresh worker process.

    Args:
        settings (BenchmarkSettings): what to measure.
        progress (Callable, optional): receives one line per finished length.

    Returns:
        list of dict: per hybrid and length, ``lrp`` and ``forward`` seconds, their
        ``ratio``, the peak memory growths ``lrp_mib`` and ``forward_mib`` and
        ``lrp_mib_per_token``.
    """
    rows = []
    for family in settings.hybrids:
        for length in settings.hybrid_lengths:
            measured = {}
            for method in ("mambalrp", "forward-hf"):
                command = [sys.executable, *WORKER_COMMAND, "--hybrid-worker", family, method]
                command += [str(length)]
                if settings.threads:
                    command += ["--threads", str(settings.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"the hybrid worker ({family}, {method}, {length} tokens) failed:\n"
                        + done.stderr[-3000:]
                    )
                measured[method] = json.loads(done.stdout.strip().splitlines()[-1])
            lrp, forward = measured["mambalrp"], measured["forward-hf"]
            rows.append(
                {
                    "family": family,
                    "length": length,
                    "lrp": lrp["seconds"],
                    "forward": forward["seconds"],
                    "ratio": round(lrp["seconds"] / max(forward["seconds"], 1e-9), 1),
                    "lrp_mib": lrp["increase_mib"],
                    "lrp_mib_per_token": round(lrp["increase_mib"] / length, 4),
                    "forward_mib": forward["increase_mib"],
                }
            )
            progress(f"measured the {family}-shaped hybrid at {length} tokens")
    return rows


HYBRID_HEADER = [
    "model",
    "tokens",
    "MambaLRP s",
    "forward s",
    "LRP / forward",
    "MambaLRP peak MiB",
    "MiB/token",
    "forward peak MiB",
]


#: The families ``--families`` measures: name -> (transformers configuration class,
#: model class, configuration fields) of a randomly initialised model.
FAMILY_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mamba": (
        "MambaConfig",
        "MambaForCausalLM",
        dict(hidden_size=256, num_hidden_layers=6, state_size=16, vocab_size=1024),
    ),
    "falcon-mamba": (
        "FalconMambaConfig",
        "FalconMambaForCausalLM",
        dict(hidden_size=256, num_hidden_layers=6, state_size=16, vocab_size=1024),
    ),
    "mamba2": (
        "Mamba2Config",
        "Mamba2ForCausalLM",
        dict(
            hidden_size=256,
            num_hidden_layers=6,
            num_heads=8,
            head_dim=64,
            n_groups=1,
            state_size=64,
            chunk_size=256,
            vocab_size=1024,
        ),
    ),
    "bamba": ("BambaConfig", "BambaForCausalLM", HYBRIDS["bamba"]),
    "jamba": ("JambaConfig", "JambaForCausalLM", HYBRIDS["jamba"]),
    "falcon-h1": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            mamba_d_ssm=512,
            mamba_n_heads=8,
            mamba_d_head=64,
            mamba_n_groups=1,
            mamba_d_state=64,
            mamba_chunk_size=256,
        ),
    ),
    "zamba": (
        "ZambaConfig",
        "ZambaForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            n_mamba_heads=2,
            mamba_d_state=16,
            mamba_dt_rank=16,
            layers_block_type=["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid"],
        ),
    ),
    "zamba2": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=16,
            n_mamba_heads=8,
            mamba_d_state=64,
            mamba_ngroups=1,
            chunk_size=256,
            num_mem_blocks=1,
            layers_block_type=["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid"],
        ),
    ),
    "nemotron-h": (
        "NemotronHConfig",
        "NemotronHForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=16,
            mamba_num_heads=8,
            mamba_head_dim=64,
            n_groups=1,
            ssm_state_size=64,
            chunk_size=256,
            layers_block_type=[
                "linear_attention",
                "mlp",
                "full_attention",
                "linear_attention",
                "mlp",
                "full_attention",
            ],
        ),
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=192,
            shared_intermediate_size=768,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
            num_local_experts=16,
            num_experts_per_tok=4,
            mamba_n_heads=8,
            mamba_d_head=64,
            mamba_n_groups=1,
            mamba_d_state=64,
            mamba_chunk_size=256,
            position_embedding_type="rope",
            num_hidden_layers=6,
            layer_types=["mamba", "mamba", "attention", "mamba", "mamba", "attention"],
        ),
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            vocab_size=1024,
            num_attention_heads=16,
            num_key_value_heads=4,
        ),
    ),
    "lfm2": (
        "Lfm2Config",
        "Lfm2ForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            num_attention_heads=16,
            num_key_value_heads=4,
            full_attn_idxs=[2, 5],
            block_auto_adjust_ff_dim=False,
            vocab_size=1024,
        ),
    ),
    "lfm2-moe": (
        "Lfm2MoeConfig",
        "Lfm2MoeForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            moe_intermediate_size=192,
            num_hidden_layers=6,
            num_attention_heads=16,
            num_key_value_heads=4,
            layer_types=["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
            num_dense_layers=1,
            num_experts=16,
            num_experts_per_tok=4,
            vocab_size=1024,
        ),
    ),
    "recurrent-gemma": (
        "RecurrentGemmaConfig",
        "RecurrentGemmaForCausalLM",
        dict(
            hidden_size=256,
            lru_width=256,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=16,
            num_key_value_heads=4,
            attention_window_size=1024,
            vocab_size=1024,
        ),
    ),
    "xlstm": (
        "xLSTMConfig",
        "xLSTMForCausalLM",
        dict(hidden_size=256, num_hidden_layers=6, num_heads=4, vocab_size=1024),
    ),
    "rwkv": (
        "RwkvConfig",
        "RwkvForCausalLM",
        dict(
            hidden_size=256,
            attention_hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=6,
            context_length=2048,
            vocab_size=1024,
        ),
    ),
    "qwen3-next": (
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=32,
            linear_num_key_heads=4,
            linear_num_value_heads=8,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=192,
            shared_expert_intermediate_size=192,
            vocab_size=1024,
        ),
    ),
    "olmo-hybrid": (
        "OlmoHybridConfig",
        "OlmoHybridForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=8,
            linear_num_key_heads=8,
            linear_num_value_heads=8,
            linear_key_head_dim=32,
            linear_value_head_dim=32,
            vocab_size=1024,
            pad_token_id=0,
            eos_token_id=None,
        ),
    ),
    "kimi-linear": (
        "KimiLinearConfig",
        "KimiLinearForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=768,
            moe_intermediate_size=192,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=8,
            kv_lora_rank=64,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
            linear_num_heads=8,
            linear_head_dim=32,
            num_experts=16,
            num_experts_per_token=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 2,
            mlp_layer_types=["dense"] + ["sparse"] * 5,
            vocab_size=1024,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=None,
        ),
    ),
}


#: The mamba-ssm families ``--families`` measures: name -> keyword arguments of mamba-ssm's
#: ``Mamba3`` (the mixers of a ``MambaLMHeadModel`` of 6 layers, width 256). mamba-ssm's
#: Mamba-3 kernels need CUDA; on CPU the "forward" is this package's no-grad forward with
#: every rule off, and importing mamba-ssm needs a stand-in ``selective_scan_cuda`` module.
MAMBA_SSM_FAMILIES: dict[str, dict[str, Any]] = {
    "mamba3": dict(d_state=64, headdim=32),
    "mamba3-mimo": dict(d_state=64, headdim=32, is_mimo=True, mimo_rank=4, chunk_size=16),
}


def _mamba3_lm(mixer_options: dict[str, Any]) -> torch.nn.Module:
    """A ``MambaLMHeadModel`` whose mixers are mamba-ssm's ``Mamba3`` (MIMO mixers built
    without the TileLang kernels that only their CUDA forward calls)."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from mamba_ssm.modules import mamba3

    config = MambaConfig(d_model=256, n_layer=6, vocab_size=1024, ssm_cfg={"layer": "Mamba2"})
    model = MambaLMHeadModel(config)
    kernels = mamba3.mamba3_mimo_combined
    mamba3.mamba3_mimo_combined = kernels or (lambda *args, **kwargs: None)
    try:
        for index, block in enumerate(model.backbone.layers):
            block.mixer = mamba3.Mamba3(256, layer_idx=index, **mixer_options)
    finally:
        mamba3.mamba3_mimo_combined = kernels
    return model


def _family_model(name: str) -> torch.nn.Module:
    if name in MAMBA_SSM_FAMILIES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _mamba3_lm(MAMBA_SSM_FAMILIES[name]).eval()
    config_name, model_name, fields = FAMILY_MODELS[name]
    transformers = importlib.import_module("transformers")
    config = getattr(transformers, config_name)(**fields)
    model_class = getattr(transformers, model_name)
    if model_class._supports_sdpa:  # families with attention layers (not xLSTM)
        config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model_class(config).eval()


def _family_row(name: str, model: torch.nn.Module, length: int, repeats: int) -> dict[str, Any]:
    ids = _ids(model.config.vocab_size, length, seed=0)
    own_forward = name not in MAMBA_SSM_FAMILIES
    embedding = model.get_input_embeddings() if own_forward else model.backbone.embedding
    embeds = embedding(ids).detach()
    target = (length - 1, int(ids[0, -1]))

    def forward() -> None:
        with torch.no_grad():
            if own_forward:
                model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
                return
            with rules_applied(model, MambaRules.gradient_x_input()):
                default_forward(model, "inputs_embeds").last_logits(embeds)

    def explain() -> None:
        MambaLRP(model).attribute(embeds, target=target)

    def scans() -> None:
        with torch.no_grad(), rules_applied(model, MambaRules.gradient_x_input()):
            model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)

    explain()  # warm-up
    mambalrp = _median_time(explain, repeats)
    return {
        "family": name,
        "length": length,
        "mambalrp": mambalrp,
        "forward": _median_time(forward, repeats),
        "scans_forward": _median_time(scans, repeats),
    }


def measure_families(
    settings: BenchmarkSettings, progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """MambaLRP against transformers' own forward and the forward through this package's
    scans, per family and length.

    Args:
        settings (BenchmarkSettings): the families, lengths and repeats.
        progress (Callable, optional): receives one line per measurement.

    Returns:
        list of dict: ``family``, ``length``, ``mambalrp``, ``forward`` and
        ``scans_forward`` (seconds).
    """
    rows = []
    for name in settings.families:
        model = _family_model(name)
        for length in settings.family_lengths:
            rows.append(_family_row(name, model, length, settings.repeats))
            progress(f"measured {name} at {length} tokens")
    return rows


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
    if results.get("families"):
        header = ["family", "tokens", "MambaLRP s", "forward s", "MambaLRP / forward"]
        header += ["scans forward s", "MambaLRP / scans forward"]
        cells = [
            [
                r["family"],
                str(r["length"]),
                _cell(r["mambalrp"]),
                _cell(r["forward"]),
                f"{r['mambalrp'] / r['forward']:.1f}",
                _cell(r.get("scans_forward")),
                f"{r['mambalrp'] / r['scans_forward']:.1f}" if r.get("scans_forward") else "-",
            ]
            for r in results["families"]
        ]
        parts.append(_table(header, cells))
    if results.get("targets"):
        first = results["targets"][0]
        parts.append(
            f"{first['length']} tokens; "
            f"one backward pass per target (through one forward pass) measured at "
            f"K = {first['looped_targets']}: {first['one_backward_each']:.3f} s per target, "
            f"peak {first['one_backward_each_mib']:.0f} MiB; one call per target: "
            f"{first['single_call']:.3f} s"
        )
        header = ["targets K", "backward", "one call, K targets: s", "s per target"]
        header += ["peak MiB", "vs one backward each", "vs one call each"]
        cells = [
            [
                str(r["targets"]),
                r["backward"],
                _cell(r["seconds"]),
                _cell(r["per_target"], 3),
                _cell(r["peak_mib"], 0),
                f"{r['one_backward_each'] / r['per_target']:.1f}x",
                f"{r['single_call'] / r['per_target']:.1f}x",
            ]
            for r in results["targets"]
        ]
        parts.append(_table(header, cells))
    if results.get("throughput"):
        header = ["threads", "batch size", "texts", "tokens", "s", "tokens/s"]
        cells = [
            [str(r[k]) for k in ("threads", "batch_size", "texts", "tokens", "seconds")]
            + [str(r["tokens_per_s"])]
            for r in results["throughput"]
        ]
        parts.append(_table(header, cells))
    if results.get("hybrids"):
        cells = [
            [
                f"{row['family'].capitalize()}-shaped",
                str(row["length"]),
                *(_cell(row["lrp"]), _cell(row["forward"]), _cell(row["ratio"], 1)),
                *(_cell(row["lrp_mib"], 0), _cell(row["lrp_mib_per_token"], 3)),
                _cell(row["forward_mib"], 0),
            ]
            for row in results["hybrids"]
        ]
        parts.append(_table(HYBRID_HEADER, cells))
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


def run(settings: BenchmarkSettings, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the parts of the benchmark that ``settings`` select.

    Args:
        settings (BenchmarkSettings): what to measure.
        progress (Callable, optional): receives progress lines.

    Returns:
        dict: ``machine`` (threads, load, torch version), ``lengths``, ``compare``,
        ``generation``, ``families``, ``targets``, ``throughput`` and ``hybrids`` results
        (empty when not run).
    """
    results: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "threads": settings.threads or torch.get_num_threads(),
            "load_before": os.getloadavg(),
            "shape": settings.shape(),
        }
    }
    lengths = measure_lengths(settings, progress)
    results["lengths"] = [asdict(row) for row in lengths]
    results["compare"] = compare_paths(settings) if settings.compare_length else []
    if settings.generation:
        results["generation"] = asdict(measure_generation(settings))
        progress("measured generation")
    if settings.families:
        results["families"] = measure_families(settings, progress)
    if settings.targets:
        results["targets"] = measure_targets(settings)
        progress("measured many targets per pass")
    if settings.throughput:
        results["throughput"] = measure_throughput(settings)
        progress("measured throughput")
    results["hybrids"] = measure_hybrids(settings, progress) if settings.hybrid_lengths else []
    results["machine"]["load_after"] = os.getloadavg()
    if settings.out is not None:
        settings.out.mkdir(parents=True, exist_ok=True)
        (settings.out / "results.json").write_text(json.dumps(results, indent=1))
        (settings.out / "tables.md").write_text(markdown_tables(results) + "\n")
        if lengths:
            plot_scaling(lengths, settings.out / "scaling.png")
    return results
