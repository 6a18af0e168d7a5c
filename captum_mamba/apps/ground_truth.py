r"""Ground-truth suite: generated tasks with known evidence positions, tiny language
models trained on them (cached), and every compared method scored against the evidence.

Every task is next-token prediction over one small vocabulary (:data:`VOCABULARY`). An
example is a token sequence with one or more **queries**: a position whose next-token
logit is explained, the answer token and the **evidence positions** that hold what the
answer needs (besides the current token):

=========  =====================================================  ========================
task       sequence (answer after the last token)                 evidence
=========  =====================================================  ========================
copy       ``x_0 .. x_7 SEP x_0 .. x_{j-1}`` -> ``x_j``           ``x_j``'s source ``j``
recall     ``k_1 v_1 .. k_4 v_4 QUERY k_i`` -> ``v_i``            ``k_i`` and ``v_i``
needle     filler .. ``NEEDLE v`` .. filler ``QUERY`` -> ``v``    ``NEEDLE`` and ``v``
induction  ``.. a b .. a`` -> ``b`` (1 to 4 repeated)             the earlier ``a``, ``b``
planted    noise .. ``MARK_c`` .. noise ``QUERY`` -> ``LABEL_c``  ``MARK_c``
=========  =====================================================  ========================

The copy source and induction tokens are distinct, recall keys are distinct, needle
values never occur elsewhere in their sequence, so each answer has exactly the
stated evidence. Needle sequences are trained at 16 to 32 tokens and evaluated at growing
lengths (16 to 128: beyond the training range too).

**Target convention.** Every explained sequence is cut after the query position (the
models are causal, so the query's logits are unchanged) and the explained output is the
logit of the correct answer token at the last position: ``forward(embeds)`` returns the
last position's logits ``(batch, vocab)`` and ``target`` is the answer's token id. The
last position, the *current token*, is never evidence: the metrics are reported both
with it among the candidates and with it set aside (see
:func:`~captum_mamba.metrics.evidence_scores`).

Models (:data:`ARCHITECTURES`): Mamba-1 (``MambaForCausalLM``), Mamba-2
(``Mamba2ForCausalLM``) and a hybrid (``BambaForCausalLM``: Mamba-2 layers and one
attention layer), all tiny, trained with the loss on the query positions only, on this
package's fast scans (:func:`~captum_mamba.attr.forward.fast_forward`), and cached under
a key that hashes the task, the architecture, the training setup and the checkpoint
format (like the sentiment classifier of :mod:`captum_mamba.apps.sentiment`).

Command line::

    captum-mamba study run --suite ground-truth --output-dir ground_truth_results
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.adapters.families import resolve
from captum_mamba.apps.methods import method_explainers, resolve_methods
from captum_mamba.apps.sentiment import default_cache_dir
from captum_mamba.attr import MambaLRP
from captum_mamba.attr.forward import fast_forward
from captum_mamba.baselines.captum_methods import HYBRID_METHODS, MethodSettings, TokenScorer
from captum_mamba.metrics import (
    EVIDENCE_METRICS,
    alignment_error_rate,
    curve_area,
    evidence_scores,
    mean_sem,
    perturbation_curves,
)
from captum_mamba.rules import MambaRules

#: Special tokens; the content tokens are ``CONTENT`` (ids 8 to 39).
PAD, SEP, QUERY, NEEDLE, LABEL_A, LABEL_B, MARK_A, MARK_B = range(8)
CONTENT: tuple[int, ...] = tuple(range(8, 40))
#: Names of the token ids (for printing examples).
VOCABULARY: tuple[str, ...] = (
    *("PAD", "SEP", "QUERY", "NEEDLE", "LABEL_A", "LABEL_B", "MARK_A", "MARK_B"),
    *(f"t{i}" for i in CONTENT),
)
#: Checkpoint format of the cached models (part of the cache key).
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Query:
    """One explained output of a task example.

    Args:
        position (int): the position whose next-token logit is explained.
        answer (int): the correct next token.
        evidence (tuple of int): positions (before ``position``) holding what the
            answer needs.
    """

    position: int
    answer: int
    evidence: tuple[int, ...]


@dataclass(frozen=True)
class TaskExample:
    """A generated sequence and its queries.

    Args:
        ids (tuple of int): the token ids.
        queries (tuple of Query): its explained outputs (the training loss covers all
            of them).
    """

    ids: tuple[int, ...]
    queries: tuple[Query, ...]


def copy_example(rng: random.Random, length: int = 8) -> TaskExample:
    """``x_0 .. x_{n-1} SEP x_0 .. x_{n-1}``: the logit at position ``n + j`` (``SEP``
    or ``x_{j-1}``) predicts ``x_j``, whose only earlier occurrence is position ``j``
    (the source tokens are distinct)."""
    source = rng.sample(CONTENT, length)
    ids = (*source, SEP, *source)
    queries = tuple(Query(length + j, source[j], (j,)) for j in range(length))
    return TaskExample(ids, queries)


def recall_example(rng: random.Random, pairs: int = 4) -> TaskExample:
    """``k_1 v_1 .. k_n v_n QUERY k_i`` -> ``v_i`` (distinct keys from the first half
    of the content tokens, values from the second half)."""
    half = len(CONTENT) // 2
    keys = rng.sample(CONTENT[:half], pairs)
    values = [rng.choice(CONTENT[half:]) for _ in range(pairs)]
    asked = rng.randrange(pairs)
    ids = tuple(t for pair in zip(keys, values, strict=True) for t in pair)
    ids = (*ids, QUERY, keys[asked])
    return TaskExample(ids, (Query(len(ids) - 1, values[asked], (2 * asked, 2 * asked + 1)),))


def needle_example(rng: random.Random, length: int = 32) -> TaskExample:
    """``length - 1`` filler tokens (first half of the content tokens) with
    ``NEEDLE v`` at a random place (``v`` from the second half), then ``QUERY`` -> ``v``."""
    half = len(CONTENT) // 2
    filler = [rng.choice(CONTENT[:half]) for _ in range(length - 3)]
    place = rng.randrange(len(filler) + 1)
    value = rng.choice(CONTENT[half:])
    ids = (*filler[:place], NEEDLE, value, *filler[place:], QUERY)
    return TaskExample(ids, (Query(len(ids) - 1, value, (place, place + 1)),))


def induction_example(rng: random.Random, length: int = 16) -> TaskExample:
    """Distinct random content tokens ``x_0 .. x_{n-1}``, then ``x_i .. x_{i+k-1}``
    repeated (``k`` from 1 to 4, ``n = length - k``): each repeated ``x_{i+m}`` predicts
    its successor ``x_{i+m+1}``, whose only earlier occurrence is position ``i + m + 1``
    (the tokens are distinct); the answer is never the last token before the repeat."""
    repeat = rng.randint(1, 4)
    count = length - repeat
    tokens = rng.sample(CONTENT, count)
    start = rng.randrange(count - repeat - 1)
    ids = (*tokens, *tokens[start : start + repeat])
    queries = tuple(
        Query(count + m, tokens[start + m + 1], (start + m, start + m + 1)) for m in range(repeat)
    )
    return TaskExample(ids, queries)


def planted_example(rng: random.Random, length: int = 16) -> TaskExample:
    """Noise tokens with one ``MARK_A`` or ``MARK_B`` at a random place, then ``QUERY``
    -> ``LABEL_A`` or ``LABEL_B``: the mark decides the class."""
    noise = [rng.choice(CONTENT) for _ in range(length - 2)]
    label = rng.randrange(2)
    place = rng.randrange(len(noise) + 1)
    ids = (*noise[:place], (MARK_A, MARK_B)[label], *noise[place:], QUERY)
    return TaskExample(ids, (Query(len(ids) - 1, (LABEL_A, LABEL_B)[label], (place,)),))


@dataclass(frozen=True)
class TrainingSetup:
    """How a task model is trained.

    Args:
        steps (int): optimiser steps at most. Default: 800.
        batch_size (int): sequences per step. Default: 32.
        learning_rate (float): AdamW learning rate. Default: 5e-3.
        seconds (float): wall-clock safety cap (on a loaded machine the model then
            depends on the timing; the steps limit binds first otherwise). Default: 600.
        target_accuracy (float): stop once the 256 held-out examples (checked every
            25 steps) reach it. Default: 0.995.
        seed (int): seed of the data and the initialisation. Default: 0.
    """

    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 5e-3
    seconds: float = 600.0
    target_accuracy: float = 0.995
    seed: int = 0


@dataclass(frozen=True)
class Task:
    """A task of the suite.

    Args:
        name (str): task name.
        make (Callable): ``make(rng, size)`` -> :class:`TaskExample`.
        train_sizes (tuple of int): sizes drawn for training (sequence length, or
            number of pairs for recall).
        eval_sizes (tuple of int): sizes evaluated (one table section each).
        description (str): one line for captions.
        revision (int, optional): revision of the generator, part of the cache key of
            the task's models once above 0 (so that the models of unchanged tasks stay
            cached). Default: 0.
        setup (TrainingSetup, optional): the task's own training schedule, used when
            none is given. Default: None (``TrainingSetup()``).
    """

    name: str
    make: Callable[[random.Random, int], TaskExample]
    train_sizes: tuple[int, ...]
    eval_sizes: tuple[int, ...]
    description: str
    revision: int = 0
    setup: TrainingSetup | None = None


#: The tasks, in table order.
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("copy", copy_example, (8,), (8,), "copy 8 distinct tokens after SEP"),
        Task("recall", recall_example, (4,), (4,), "associative recall, 4 key-value pairs"),
        Task(
            "planted",
            planted_example,
            (16,),
            (16,),
            "planted evidence: one class mark among 14 noise tokens, then QUERY",
        ),
        Task(
            "needle",
            needle_example,
            (16, 24, 32),
            (16, 32, 64, 128),
            "needle in a haystack (trained at 16-32 tokens)",
        ),
        Task(
            "induction",
            induction_example,
            (16,),
            (16,),
            "induction: distinct tokens, 1 to 4 of them repeated, 16 tokens",
            revision=1,
            setup=TrainingSetup(steps=4000, learning_rate=2e-3),
        ),
    )
}


def generate(task: str, count: int, seed: int, size: int | None = None) -> list[TaskExample]:
    """``count`` seeded examples of a task.

    Args:
        task (str): a key of :data:`TASKS`.
        count (int): number of examples.
        seed (int): seed of the generator.
        size (int, optional): the size (length, or pairs for recall). Default: drawn
            from the task's training sizes.

    Returns:
        list of TaskExample: the examples.
    """
    spec = TASKS[task]
    rng = random.Random(f"{task}-{seed}")
    return [spec.make(rng, size or rng.choice(spec.train_sizes)) for _ in range(count)]


# ---------------------------------------------------------------- models


#: The architectures: tiny configurations of each family.
ARCHITECTURES: tuple[str, ...] = ("mamba", "mamba2", "bamba")
#: The architectures with softmax attention, where the methods of
#: :data:`~captum_mamba.baselines.captum_methods.HYBRID_METHODS` (MambaLRP with CP-LRP
#: on attention) differ from MambaLRP and are explained too.
HYBRIDS: tuple[str, ...] = ("bamba",)


#: Per architecture: the transformers configuration and model class names and the
#: configuration arguments of the tiny model (besides the vocabulary, ``PAD`` and
#: ``use_cache=False``, common to all).
MODEL_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mamba": (
        "MambaConfig",
        "MambaForCausalLM",
        {"hidden_size": 32, "num_hidden_layers": 2, "state_size": 8},
    ),
    "mamba2": (
        "Mamba2Config",
        "Mamba2ForCausalLM",
        {
            **{"hidden_size": 32, "num_hidden_layers": 2, "state_size": 16},
            **{"num_heads": 4, "head_dim": 16, "n_groups": 1, "chunk_size": 16},
        },
    ),
    "bamba": (
        "BambaConfig",
        "BambaForCausalLM",
        {
            **{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3},
            **{"num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_indices": [1]},
            **{"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1},
            **{"mamba_d_state": 16, "mamba_chunk_size": 16},
        },
    ),
}


def tiny_causal_lm(
    config_class: str,
    model_class: str,
    fields: Mapping[str, Any],
    seed: int = 0,
    eager_attention: bool = True,
    eager_experts: bool = False,
) -> nn.Module:
    """An untrained causal language model of transformers' classes over
    :data:`VOCABULARY` (padding :data:`PAD`, no cache); the classes are looked up at call
    time, so that releases without one of them still import this module.

    Args:
        config_class (str): name of the configuration class in ``transformers``.
        model_class (str): name of the causal-LM class in ``transformers``.
        fields (Mapping): further configuration fields (the shape).
        seed (int, optional): initialisation seed. Default: 0.
        eager_attention (bool, optional): attention layers, if any, run eagerly.
            Default: True.
        eager_experts (bool, optional): mixtures of experts computed eagerly.
            Default: False.

    Returns:
        nn.Module: the model (float32, train mode).

    Raises:
        FamilyUnavailable: if the installed transformers lacks one of the classes.
    """
    config = resolve("transformers", config_class)(
        vocab_size=len(VOCABULARY), pad_token_id=PAD, use_cache=False, **fields
    )
    if eager_attention:
        config._attn_implementation = "eager"
    if eager_experts:
        config._experts_implementation = "eager"
    torch.manual_seed(seed)
    return resolve("transformers", model_class)(config)


def build_model(architecture: str, seed: int = 0) -> nn.Module:
    """An untrained tiny causal language model over :data:`VOCABULARY`
    (:data:`MODEL_CONFIGS`, built by :func:`tiny_causal_lm`).

    Args:
        architecture (str): ``"mamba"`` (Mamba-1), ``"mamba2"`` or ``"bamba"`` (hybrid:
            a Mamba-2 layer, an attention layer, a Mamba-2 layer).
        seed (int, optional): initialisation seed. Default: 0.

    Returns:
        nn.Module: the model (float32, train mode; attention, if any, eager).
    """
    if architecture not in MODEL_CONFIGS:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
    return tiny_causal_lm(*MODEL_CONFIGS[architecture], seed)


def _batch(examples: Sequence[TaskExample]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, the loss mask of the query positions and their answers."""
    length = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), length), PAD, dtype=torch.long)
    answers = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.ids)] = torch.tensor(example.ids)
        for query in example.queries:
            answers[row, query.position] = query.answer
    return ids, answers != -100, answers


def query_accuracy(model: nn.Module, examples: Sequence[TaskExample]) -> float:
    """Fraction of queries whose answer is the model's top next token.

    Args:
        model (nn.Module): a causal language model.
        examples (sequence of TaskExample): the examples.

    Returns:
        float: accuracy over every query of every example.
    """
    ids, mask, answers = _batch(examples)
    with torch.no_grad(), fast_forward(model):
        logits = model(input_ids=ids).logits
    return float((logits.argmax(-1)[mask] == answers[mask]).double().mean())


#: ``build(architecture, seed)``: an untrained model (float32), as :func:`build_model`.
ModelBuilder = Callable[[str, int], nn.Module]


def train_task_model(
    task: str,
    architecture: str,
    setup: TrainingSetup | None = None,
    progress: Callable[[str], None] = print,
    build: ModelBuilder = build_model,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a tiny model on a task (loss on the query positions only).

    Args:
        task (str): a key of :data:`TASKS`.
        architecture (str): one of :data:`ARCHITECTURES`.
        setup (TrainingSetup, optional): the schedule. Default: the task's own
            (:attr:`Task.setup`), else ``TrainingSetup()``.
        progress (Callable, optional): receives progress lines. Default: print.
        build (Callable, optional): ``build(architecture, seed)`` -> the untrained
            model. Default: :func:`build_model`.

    Returns:
        tuple: the model (eval mode) and its metrics (steps, seconds, accuracy on
        512 held-out examples per evaluated size).
    """
    setup = setup or TASKS[task].setup or TrainingSetup()
    model = build(architecture, setup.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.learning_rate, weight_decay=0.01)
    held_out = generate(task, 256, setup.seed + 1_000_000)
    rng = random.Random(f"train-{task}-{setup.seed}")
    spec = TASKS[task]
    start, step, accuracy = time.perf_counter(), 0, 0.0
    while step < setup.steps and time.perf_counter() - start < setup.seconds:
        size = rng.choice(spec.train_sizes)
        ids, mask, answers = _batch([spec.make(rng, size) for _ in range(setup.batch_size)])
        model.train()
        with fast_forward(model):
            logits = model(input_ids=ids).logits
        loss = nn.functional.cross_entropy(logits[mask], answers[mask])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 25 == 0:
            model.eval()
            accuracy = query_accuracy(model, held_out)
            progress(
                f"{task}/{architecture}: step {step}, loss {loss.item():.3f}, acc {accuracy:.3f}"
            )
            if accuracy >= setup.target_accuracy:
                break
    model.eval()
    metrics: dict[str, Any] = {
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "accuracy": {
            str(size): query_accuracy(model, generate(task, 512, setup.seed + 2_000_000, size))
            for size in spec.eval_sizes
        },
    }
    return model, metrics


def model_cache_key(
    task: str, architecture: str, setup: TrainingSetup, build: ModelBuilder = build_model
) -> str:
    """Hash of everything a cached task model depends on (16 hex digits)."""
    spec = TASKS[task]
    parts = {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "sizes": [spec.train_sizes, spec.eval_sizes],
        "architecture": architecture,
        "setup": asdict(setup),
        "vocabulary": VOCABULARY,
        **({"revision": spec.revision} if spec.revision else {}),
        "transformers": build(architecture, 0).config.to_json_string(use_diff=False),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train_task_model(
    task: str,
    architecture: str,
    setup: TrainingSetup | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] = print,
    build: ModelBuilder = build_model,
) -> tuple[nn.Module, dict[str, Any]]:
    """A cached task model, or a newly trained one (then cached).

    Args:
        task (str): a key of :data:`TASKS`.
        architecture (str): one of :data:`ARCHITECTURES`.
        setup (TrainingSetup, optional): the schedule. Default: the task's own
            (:attr:`Task.setup`), else ``TrainingSetup()``.
        cache_dir (str or Path, optional): checkpoint folder. Default:
            :func:`~captum_mamba.apps.sentiment.default_cache_dir`.
        progress (Callable, optional): receives progress lines. Default: print.
        build (Callable, optional): ``build(architecture, seed)`` -> the untrained
            model. Default: :func:`build_model`.

    Returns:
        tuple: the model (float64, eval mode) and its training metrics.
    """
    setup = setup or TASKS[task].setup or TrainingSetup()
    folder = Path(cache_dir or default_cache_dir())
    key = model_cache_key(task, architecture, setup, build)
    path = folder / f"task-{task}-{architecture}-{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model = build(architecture, setup.seed)
        model.load_state_dict(saved["state_dict"])
        metrics = json.loads(saved["metrics"])
    else:
        progress(f"no cached {task}/{architecture} model at {path}: training one")
        model, metrics = train_task_model(task, architecture, setup, progress, build)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save({"state_dict": model.state_dict(), "metrics": json.dumps(metrics)}, temporary)
        temporary.replace(path)
    return model.double().eval(), metrics


# ---------------------------------------------------------------- evaluation

#: Seed of the evaluated examples (the training data use other seeds).
EVAL_SEED = 7


@dataclass(frozen=True)
class Item:
    """One explained query: the sequence cut after the query position.

    Args:
        example (int): index of the example.
        ids (tuple of int): the token ids up to and including the query position.
        answer (int): the explained logit's token id (the correct answer).
        evidence (tuple of int): the evidence positions.
    """

    example: int
    ids: tuple[int, ...]
    answer: int
    evidence: tuple[int, ...]


def evaluation_items(task: str, count: int, size: int, every_query: bool = False) -> list[Item]:
    """The explained queries of ``count`` evaluation examples of one size.

    Args:
        task (str): a key of :data:`TASKS`.
        count (int): number of examples.
        size (int): the size (length, or pairs for recall).
        every_query (bool, optional): every query of each example (copy: each of the
            copied tokens, an alignment), else one drawn per example. Default: False.

    Returns:
        list of Item: the items, in example order.
    """
    rng = random.Random(f"queries-{task}-{size}")
    items = []
    for index, example in enumerate(generate(task, count, EVAL_SEED, size)):
        queries = example.queries if every_query else (rng.choice(example.queries),)
        for query in queries:
            ids = example.ids[: query.position + 1]
            items.append(Item(index, ids, query.answer, query.evidence))
    return items


def last_logits(model: nn.Module) -> Callable[..., Tensor]:
    """``forward(embeds, attention_mask=None)`` -> the last position's logits
    ``(batch, vocab)`` (the explained output of every task)."""

    def forward(embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return model(inputs_embeds=embeds, attention_mask=attention_mask).logits[:, -1]

    return forward


def delta_af(forward: Callable[..., Tensor], embeds: Tensor, scores: Tensor, answer: int) -> float:
    """``Delta A^F`` of one example, zero replacement, the current (last) token kept in
    place (the curves run over the other tokens)."""
    last = embeds[:, -1:]

    def with_last(perturbed: Tensor) -> Tensor:
        return forward(torch.cat([perturbed, last.expand(perturbed.shape[0], -1, -1)], 1))

    curves = perturbation_curves(
        with_last, embeds[:, :-1], scores[None, :-1], answer, torch.zeros(embeds.shape[-1])
    )
    return float(curve_area(curves["lerf"])[0] - curve_area(curves["morf"])[0])


#: Columns of the task tables: the metrics with every position competing, the same
#: with the current token set aside ("-cur"), how often the top token is the current
#: one, Delta A^F, and (copy) the alignment error rate.
COLUMNS: tuple[str, ...] = (
    *EVIDENCE_METRICS,
    *(f"{m}-cur" for m in EVIDENCE_METRICS),
    "top=cur",
    "dAF",
    "AER",
)


def evaluate(
    model: nn.Module,
    task: str,
    size: int,
    methods: Sequence[str | TokenScorer],
    count: int = 40,
    settings: MethodSettings | None = None,
    with_delta: bool = True,
    refused: dict[str, str] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per-item metrics of every method on one task size. A method that refuses the
    model (:class:`~captum_mamba.adapters.UnsupportedModelError`, e.g. LaTIM on a
    hybrid) is left out of the results and its one-line reason put into ``refused``.

    Args:
        model (nn.Module): the task model (float64).
        task (str): a key of :data:`TASKS`.
        size (int): the evaluated size.
        methods (sequence of str or TokenScorer): method names (any of
            :data:`~captum_mamba.baselines.captum_methods.METHODS`) or built
            scorers explaining :func:`last_logits` of ``model``.
        count (int, optional): examples; for copy, every copied token of
            ``count // 4`` examples (at least 2). Default: 40.
        settings (MethodSettings, optional): method hyper-parameters.
        with_delta (bool, optional): compute ``Delta A^F`` too. Default: True.
        refused (dict, optional): receives ``method -> reason`` of the methods that
            refused the model. Default: None.

    Returns:
        dict: method -> column (:data:`COLUMNS`, plus ``"correct"``) -> values (one per
        item; ``"AER"`` one per example, copy only).
    """
    forward = last_logits(model)
    names = [resolve_methods([m])[0] if isinstance(m, str) else m for m in methods]
    runners = method_explainers(names, model, forward, settings)
    every = task == "copy"  # an alignment: every copied token of fewer examples
    items = evaluation_items(task, max(count // 4, 2) if every else count, size, every)
    embedding = model.get_input_embeddings()
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in runners}
    # per method and example: (predicted link, sure link) of each explained token
    links: dict[str, dict[int, list[tuple[tuple[int, int], ...]]]] = {
        name: {} for name, _, _ in runners
    }
    for number, item in enumerate(items):
        ids = torch.tensor([item.ids])
        with torch.no_grad():
            embeds = embedding(ids).double()
            with fast_forward(model):
                correct = float(int(forward(embeds)[0].argmax()) == item.answer)
        current = len(item.ids) - 1
        aside = torch.arange(len(item.ids)) != current
        for runner in tuple(runners):
            name, _, explain = runner
            try:
                scores = explain(embeds, item.answer, number)[0].double()
            except UnsupportedModelError as error:
                runners.remove(runner)
                del results[name], links[name]
                if refused is not None:
                    refused[name] = str(error)
                continue
            values = results[name]
            full = evidence_scores(scores, item.evidence)
            without = evidence_scores(scores, item.evidence, candidates=aside)
            row = {
                **full.as_dict(),
                **{f"{k}-cur": v for k, v in without.as_dict().items()},
                "top=cur": float(full.top == current),
                "correct": correct,
            }
            if with_delta:
                with fast_forward(model):
                    row["dAF"] = delta_af(forward, embeds, scores, item.answer)
            for key, value in row.items():
                values.setdefault(key, []).append(value)
            pair = ((current, without.top), (current, item.evidence[0]))
            links[name].setdefault(item.example, []).append(pair)
    if task == "copy":
        for name, per_example in links.items():
            results[name]["AER"] = [
                alignment_error_rate([p for p, _ in pairs], [s for _, s in pairs])
                for pairs in per_example.values()
            ]
    return results


# ---------------------------------------------------------------- tables and plots

#: Column titles of the markdown tables.
TITLES: dict[str, str] = {
    "hit@1": "hit@1",
    "rr": "MRR",
    "auc": "AUC",
    "ap": "AP",
    "hit@1-cur": "hit@1 (cur. aside)",
    "rr-cur": "MRR (cur. aside)",
    "auc-cur": "AUC (cur. aside)",
    "ap-cur": "AP (cur. aside)",
    "top=cur": "top = current",
    "dAF": "ΔA^F",
    "AER": "AER",
}


def summary_rows(results: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per method: ``column -> (mean, s.e.)`` for each measured column.

    Args:
        results (dict): from :func:`evaluate`.

    Returns:
        list of dict: rows with ``"method"`` and ``(mean, s.e.)`` per column.
    """
    rows = []
    for name, values in results.items():
        row: dict[str, Any] = {"method": name}
        for column in COLUMNS:
            if values.get(column):
                row[column] = mean_sem(values[column])
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`summary_rows` (``mean ± s.e.``).

    Args:
        rows (sequence of dict): summary rows.

    Returns:
        str: the table.
    """
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    lines = [
        "| method | " + " | ".join(TITLES[c] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for column in columns:
            mean, error = row.get(column, (math.nan, math.nan))
            cells.append(f"{mean:.2f} ± {error:.2f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    """Bars of hit@1 and AUC (current token set aside) per method, with s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["method"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(names) + 1.5), sharey=True)
    for axis, column in zip(axes, ("hit@1-cur", "auc-cur"), strict=True):
        means = [row[column][0] for row in rows]
        errors = [row[column][1] for row in rows]
        axis.barh(range(len(names)), means, xerr=errors, color="tab:blue")
        axis.set_xlim(0, 1)
        axis.set_title(TITLES[column])
        axis.invert_yaxis()
    axes[0].set_yticks(range(len(names)), names)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@dataclass
class SuiteResult:
    """Outcome of :func:`run_suite`.

    Args:
        tables (dict): ``"task/architecture/size"`` -> summary rows.
        captions (dict): the same keys -> caption (model accuracy, examples).
        files (dict): name -> written path.
        diagnoses (dict): architecture -> :func:`copy_diagnosis` rows (copy only).
    """

    tables: dict[str, list[dict[str, Any]]]
    captions: dict[str, str]
    files: dict[str, Path]
    diagnoses: dict[str, list[dict[str, Any]]]


def run_suite(
    output_dir: str | Path,
    tasks: Sequence[str] = tuple(TASKS),
    architectures: Sequence[str] = ("mamba", "mamba2"),
    methods: Sequence[str] | str = "all",
    count: int = 40,
    setup: TrainingSetup | None = None,
    settings: MethodSettings | None = None,
    cache_dir: str | Path | None = None,
    with_delta: bool = True,
    diagnose: bool = True,
    progress: Callable[[str], None] = print,
) -> SuiteResult:
    """Train (or load) each task model, explain its evaluation queries with every
    method and write one table (methods x metrics, ``mean ± s.e.``) and one plot per
    task, architecture and size.

    Args:
        output_dir (str or Path): result folder (``ground_truth.md``,
            ``ground_truth.json`` and a PNG per table).
        tasks (sequence of str, optional): keys of :data:`TASKS`. Default: all.
        architectures (sequence of str, optional): of :data:`ARCHITECTURES`.
            Default: Mamba-1 and Mamba-2.
        methods (sequence of str or str, optional): method names or ``"all"``.
        count (int, optional): evaluation examples per table. Default: 40.
        setup (TrainingSetup, optional): training schedule.
        settings (MethodSettings, optional): method hyper-parameters.
        cache_dir (str or Path, optional): model cache folder.
        with_delta (bool, optional): compute ``Delta A^F``. Default: True.
        diagnose (bool, optional): with copy, the MambaLRP conventions of
            :func:`copy_diagnosis` too. Default: True.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        SuiteResult: the tables, captions, files and copy diagnoses.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    names = resolve_methods(methods)
    tables: dict[str, list[dict[str, Any]]] = {}
    captions: dict[str, str] = {}
    files: dict[str, Path] = {}
    diagnoses: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        for architecture in architectures:
            model, metrics = load_or_train_task_model(
                task, architecture, setup, cache_dir, progress
            )
            explained = [n for n in names if architecture in HYBRIDS or n not in HYBRID_METHODS]
            for size in TASKS[task].eval_sizes:
                key = f"{task}/{architecture}/{size}"
                progress(f"explaining {key}")
                refused: dict[str, str] = {}
                results = evaluate(
                    model, task, size, explained, count, settings, with_delta, refused
                )
                tables[key] = summary_rows(results)
                correct = next(iter(results.values()))["correct"]
                examples = max(count // 4, 2) if task == "copy" else count
                captions[key] = (
                    f"{TASKS[task].description}; {architecture}, size {size}; model accuracy "
                    f"{metrics['accuracy'][str(size)]:.3f} (512 held-out examples, trained "
                    f"{metrics['steps']} steps in {metrics['seconds']} s); {len(correct)} "
                    f"explained queries of {examples} examples, answered correctly: "
                    f"{sum(correct) / len(correct):.3f}"
                    + "".join(f"; {name} refuses the model" for name in refused)
                )
                plot = directory / f"{task}-{architecture}-{size}.png"
                _plot(tables[key], key, plot)
                files[key] = plot
            if task == "copy" and diagnose:
                diagnoses[architecture] = copy_diagnosis(model, count, progress=progress)
    text = [
        "# Ground-truth suite\n",
        "Explained: the correct answer's logit at the last position; evidence positions "
        "as in captum_mamba.apps.ground_truth; mean ± s.e. over explained queries "
        "(AER over examples); ties count against the explanation; ΔA^F with zero "
        "replacement, the current token kept.\n",
    ]
    for key, rows in tables.items():
        text += [f"## {key}\n", captions[key] + "\n", markdown(rows) + "\n"]
    for architecture, rows in diagnoses.items():
        text += [f"## copy/{architecture}: MambaLRP diagnosis\n", diagnosis_markdown(rows) + "\n"]
    files["markdown"] = directory / "ground_truth.md"
    files["markdown"].write_text("\n".join(text))
    files["json"] = directory / "ground_truth.json"
    saved = {"tables": tables, "captions": captions, "copy_diagnosis": diagnoses}
    files["json"].write_text(json.dumps(saved, indent=1))
    return SuiteResult(tables, captions, files, diagnoses)


# ---------------------------------------------------------------- the copy task, diagnosed

#: Rule variants of the copy diagnosis: MambaLRP, each of its rules switched off alone,
#: the LN-rule alone and no rules (Gradient x Input).
DIAGNOSIS_RULES: dict[str, Callable[[], MambaRules]] = {
    "MambaLRP": MambaRules,
    "without SSM rule": lambda: MambaRules(ssm=False),
    "without SiLU rule": lambda: MambaRules(silu=False),
    "without half rule (gate)": lambda: MambaRules(gate=False),
    "LN-rule only": MambaRules.norm_only,
    "no rules (GxI)": MambaRules.gradient_x_input,
}
#: Token aggregations of the element relevance ``(seq, hidden)``.
AGGREGATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sum": lambda r: r.sum(-1),
    "abs(sum)": lambda r: r.sum(-1).abs(),
    "L1": lambda r: r.abs().sum(-1),
    "L2": lambda r: r.norm(dim=-1),
}
#: Explained outputs: the answer's logit, or the answer's logit minus the mean logit
#: (a contrast that removes what raises every logit alike).
TARGETS: tuple[str, ...] = ("logit", "logit - mean")
#: Columns of the diagnosis table.
DIAGNOSIS_COLUMNS: tuple[str, ...] = (
    "hit@1",
    "hit@1-cur",
    "hit@1-src",
    "auc",
    "auc-cur",
    "auc-src",
    "top=cur",
    "top=src±1",
    "top=cur-K",
    "share src",
    "share cur",
    "cons. err",
)


def _contrast(model: nn.Module) -> Callable[..., Tensor]:
    forward = last_logits(model)

    def contrast(embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        logits = forward(embeds, attention_mask)
        return logits - logits.mean(-1, keepdim=True)

    return contrast


def copy_diagnosis(
    model: nn.Module,
    count: int = 40,
    rules: Sequence[str] = tuple(DIAGNOSIS_RULES),
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """MambaLRP on the copy task under every convention: rule variants, the explained
    output and the aggregation over the hidden dimension.

    For each copied token (every query of ``count // 4`` examples, as in
    :func:`evaluate`) it records hit@1 and AUC with every position competing, with the
    current token set aside (``-cur``) and among the source tokens only (``-src``,
    positions ``0 .. n-1``); how often the top token (all positions) is the current one
    and how often (current set aside) it is next to the source or ``K`` tokens before the
    current one (``K`` the conv kernel width: the nearest token outside the current
    token's conv window); the shares of
    ``sum |R|`` on the source and on the current token; and the conservation error
    ``|sum R - f| / |f|`` of the explained output ``f``.

    Args:
        model (nn.Module): the copy model (float64).
        count (int, optional): examples, as for :func:`evaluate`. Default: 40.
        rules (sequence of str, optional): keys of :data:`DIAGNOSIS_RULES`.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        list of dict: one row per rules, target and aggregation: ``"rules"``,
        ``"target"``, ``"aggregation"`` and ``(mean, s.e.)`` per column of
        :data:`DIAGNOSIS_COLUMNS`.
    """
    items = evaluation_items("copy", max(count // 4, 2), TASKS["copy"].eval_sizes[0], True)
    embedding = model.get_input_embeddings()
    kernel = getattr(model.config, "conv_kernel", getattr(model.config, "mamba_d_conv", 4))
    forwards = {"logit": last_logits(model), "logit - mean": _contrast(model)}
    rows = []
    for rule_name in rules:
        for target in TARGETS:
            progress(f"copy diagnosis: {rule_name}, {target}")
            lrp = MambaLRP(model, forwards[target], rules=DIAGNOSIS_RULES[rule_name]())
            values: dict[str, dict[str, list[float]]] = {a: {} for a in AGGREGATIONS}
            for item in items:
                with torch.no_grad():
                    embeds = embedding(torch.tensor([item.ids])).double()
                    output = float(forwards[target](embeds)[0, item.answer])
                relevance = lrp.attribute(embeds, target=item.answer)[0].detach()
                length = len(item.ids)
                current, source = length - 1, item.evidence[0]
                aside = torch.arange(length) != current
                sources = torch.arange(length) < TASKS["copy"].eval_sizes[0]
                magnitude = relevance.abs().sum(-1)
                conservation = abs(float(relevance.sum()) - output) / abs(output)
                for aggregation, reduce in AGGREGATIONS.items():
                    scores = reduce(relevance)
                    full = evidence_scores(scores, item.evidence)
                    without = evidence_scores(scores, item.evidence, candidates=aside)
                    within = evidence_scores(scores, item.evidence, candidates=sources)
                    row = {
                        "hit@1": full.hit_at_1,
                        "hit@1-cur": without.hit_at_1,
                        "hit@1-src": within.hit_at_1,
                        "auc": full.auc,
                        "auc-cur": without.auc,
                        "auc-src": within.auc,
                        "top=cur": float(full.top == current),
                        "top=src±1": float(abs(without.top - source) == 1),
                        "top=cur-K": float(without.top == current - kernel),
                        "share src": float(magnitude[source] / magnitude.sum()),
                        "share cur": float(magnitude[current] / magnitude.sum()),
                        "cons. err": conservation,
                    }
                    for key, value in row.items():
                        values[aggregation].setdefault(key, []).append(value)
            for aggregation, columns in values.items():
                summary = {key: mean_sem(v) for key, v in columns.items()}
                rows.append(
                    {"rules": rule_name, "target": target, "aggregation": aggregation, **summary}
                )
    return rows


def diagnosis_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`copy_diagnosis` (``mean ± s.e.``).

    Args:
        rows (sequence of dict): the diagnosis rows.

    Returns:
        str: the table.
    """
    lines = [
        "| rules | target | aggregation | " + " | ".join(DIAGNOSIS_COLUMNS) + " |",
        "|---|---|---|" + "---:|" * len(DIAGNOSIS_COLUMNS),
    ]
    for row in rows:
        cells = [f"{row[c][0]:.2f} ± {row[c][1]:.2f}" for c in DIAGNOSIS_COLUMNS]
        lines.append(
            f"| {row['rules']} | {row['target']} | {row['aggregation']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)
