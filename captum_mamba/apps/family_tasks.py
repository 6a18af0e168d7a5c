r"""Ground-truth tasks per model family: a tiny model of every supported family trained
on a task of the ground-truth suite, and MambaLRP against Gradient x Input and
Integrated Gradients on it, scored against the known evidence.

Each family is one entry of :data:`FAMILIES` (:class:`ModelFamily`): the transformers
configuration and model classes (by name, looked up when the model is built, so a
release that lacks a family reports it as unavailable instead of failing to import)
and the fields of a tiny configuration. The vocabulary, padding id and cache setting of
the suite are added to every configuration. Adding a family is adding one entry::

    ModelFamily("mistral", "Mistral", "MistralConfig", "MistralForCausalLM",
                dict(hidden_size=32, ...), attention=True)

Everything else comes from the ground-truth suite (:mod:`captum_mamba.apps.ground_truth`):
the tasks and their evidence positions, the training (loss on the query positions,
held-out accuracy, early stop) and the model cache (a key hashing the task, the family,
the configuration and the schedule), the explained output (the correct answer's logit
at the last position) and the per-item metrics (:func:`~captum_mamba.metrics.evidence_scores`)
with their mean and standard error (:func:`~captum_mamba.metrics.mean_sem`).

Compared (:data:`DEFAULT_METHODS`): MambaLRP (the package's default rules: on attention
layers AttnLRP), MambaLRP with CP-LRP on attention (:data:`CP_LRP`, families with
attention, or with a mixer that the ``attention`` setting governs: xLSTM, RWKV; the
conservative preset of the hybrids), Gradient x Input, Integrated
Gradients, and Saliency and Random as anchors. A family whose model does not reach
:data:`LEARNED_ACCURACY` on held-out examples is marked as not learned in the table
(and still measured): an explanation of a model that has not learned the task says
nothing about the evidence.

Command line::

    captum-mamba study run --suite families --output-dir family_results
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from captum_mamba.adapters.families import FamilyUnavailable
from captum_mamba.apps import ground_truth
from captum_mamba.baselines.captum_methods import (
    CP_LRP,
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    MAMBA_LRP,
    RANDOM,
    SALIENCY,
    MethodSettings,
)


@dataclass(frozen=True)
class ModelFamily:
    """One model family of the comparison: a tiny transformers causal language model.

    Args:
        name (str): registry key (command-line name).
        title (str): display name.
        config_class (str): name of the configuration class in ``transformers``.
        model_class (str): name of the causal-LM class in ``transformers``.
        fields (Mapping): configuration fields of the tiny model (the suite's
            vocabulary size, padding id and ``use_cache=False`` are added).
        attention (bool, optional): the model has softmax attention layers: they run
            the eager implementation, and CP-LRP is compared too. Default: False.
        eager_experts (bool, optional): mixtures of experts computed eagerly (their
            grouped kernel has no float64). Default: False.
        attention_setting (bool, optional): the family's token mixer without softmax
            attention is governed by the ``attention`` rule setting (xLSTM's mLSTM cell,
            RWKV's WKV), so CP-LRP is compared too. Default: False.
        learning_rate (float, optional): the training's learning rate, where the
            schedule's diverges for the family. Default: None (the schedule's).
    """

    name: str
    title: str
    config_class: str
    model_class: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    attention: bool = False
    eager_experts: bool = False
    learning_rate: float | None = None
    attention_setting: bool = False

    @property
    def cp_lrp_differs(self) -> bool:
        """Whether CP-LRP gives other relevance than MambaLRP's defaults on this family."""
        return self.attention or self.attention_setting


#: Shape shared by the families with attention: width 32, MLP width 64, 4 query and 2
#: key/value heads.
_ATTENTION = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2
)

#: The families, in table order (Mamba-1, Mamba-2 and the hybrid Bamba have the shapes of
#: :func:`captum_mamba.apps.ground_truth.build_model`).
FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            "mamba",
            "Mamba",
            "MambaConfig",
            "MambaForCausalLM",
            ground_truth.MODEL_CONFIGS["mamba"][2],
        ),
        ModelFamily(
            "falcon-mamba",
            "Falcon-Mamba",
            "FalconMambaConfig",
            "FalconMambaForCausalLM",
            dict(hidden_size=32, num_hidden_layers=2, state_size=8),
        ),
        ModelFamily(
            "mamba2",
            "Mamba-2",
            "Mamba2Config",
            "Mamba2ForCausalLM",
            ground_truth.MODEL_CONFIGS["mamba2"][2],
        ),
        ModelFamily(
            "bamba",
            "Bamba",
            "BambaConfig",
            "BambaForCausalLM",
            ground_truth.MODEL_CONFIGS["bamba"][2],
            attention=True,
        ),
        ModelFamily(
            "jamba",
            "Jamba",
            "JambaConfig",
            "JambaForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1,
                expert_layer_period=2, expert_layer_offset=0, num_experts=4,
                num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4,
            ),
            attention=True,
            eager_experts=True,
        ),
        ModelFamily(
            "falcon-h1",
            "Falcon-H1",
            "FalconH1Config",
            "FalconH1ForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=2, mamba_d_ssm=64, mamba_n_heads=4,
                mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=16,
            ),
            attention=True,
        ),
        ModelFamily(
            "zamba",
            "Zamba",
            "ZambaConfig",
            "ZambaForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=4, n_mamba_heads=2, mamba_d_state=8,
                mamba_dt_rank=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
            ),
            attention=True,
        ),
        ModelFamily(
            "zamba2",
            "Zamba2",
            "Zamba2Config",
            "Zamba2ForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=2, n_mamba_heads=4, mamba_d_state=16,
                mamba_ngroups=1, chunk_size=16, num_mem_blocks=1,
                layers_block_type=["mamba", "hybrid"],
            ),
            attention=True,
            learning_rate=1e-3,  # 5e-3 diverges: loss at chance after 300 steps
        ),
        ModelFamily(
            "nemotron-h",
            "Nemotron-H",
            "NemotronHConfig",
            "NemotronHForCausalLM",
            dict(
                _ATTENTION, head_dim=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=1,
                ssm_state_size=16, chunk_size=16,
                layers_block_type=["linear_attention", "full_attention", "mlp"],
            ),
            attention=True,
        ),
        ModelFamily(
            "granitemoehybrid",
            "GraniteMoeHybrid",
            "GraniteMoeHybridConfig",
            "GraniteMoeHybridForCausalLM",
            dict(
                _ATTENTION, intermediate_size=32, shared_intermediate_size=64,
                num_hidden_layers=2, layer_types=["mamba", "attention"],
                position_embedding_type="rope", mamba_n_heads=4, mamba_d_head=16,
                mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=16,
                num_local_experts=4, num_experts_per_tok=2,
            ),
            attention=True,
            eager_experts=True,
        ),
        ModelFamily(
            "lfm2",
            "LFM2",
            "Lfm2Config",
            "Lfm2ForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=3, full_attn_idxs=[1],
                block_auto_adjust_ff_dim=False,
            ),
            attention=True,
        ),
        ModelFamily(
            "lfm2-moe",
            "LFM2-MoE",
            "Lfm2MoeConfig",
            "Lfm2MoeForCausalLM",
            dict(
                _ATTENTION, moe_intermediate_size=32, num_hidden_layers=3,
                layer_types=["conv", "full_attention", "conv"], num_dense_layers=1,
                num_experts=4, num_experts_per_tok=2,
            ),
            attention=True,
            eager_experts=True,
        ),
        ModelFamily(
            "recurrent-gemma",
            "RecurrentGemma",
            "RecurrentGemmaConfig",
            "RecurrentGemmaForCausalLM",
            dict(
                _ATTENTION, lru_width=32, num_hidden_layers=3, attention_window_size=32,
                block_types=["recurrent", "attention", "recurrent"], conv1d_width=4,
            ),
            attention=True,
        ),
        ModelFamily(
            "qwen3-next",
            "Qwen3-Next",
            "Qwen3NextConfig",
            "Qwen3NextForCausalLM",
            dict(
                _ATTENTION, head_dim=8, num_hidden_layers=2,
                layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=32, shared_expert_intermediate_size=32,
            ),
            attention=True,
            eager_experts=True,
        ),
        ModelFamily(
            "olmo-hybrid",
            "OLMo-Hybrid",
            "OlmoHybridConfig",
            "OlmoHybridForCausalLM",
            dict(
                _ATTENTION, num_hidden_layers=2,
                layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                linear_num_value_heads=4, eos_token_id=None,
            ),
            attention=True,
        ),
        ModelFamily(
            "kimi-linear",
            "Kimi-Linear",
            "KimiLinearConfig",
            "KimiLinearForCausalLM",
            dict(
                hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4,
                v_head_dim=8, num_experts=4, num_experts_per_token=2, linear_head_dim=8,
                linear_num_heads=4, linear_conv_kernel_dim=4,
                layer_types=["linear_attention", "full_attention"],
                mlp_layer_types=["dense", "sparse"], bos_token_id=None, eos_token_id=None,
            ),
            attention=True,
            eager_experts=True,
        ),
        ModelFamily(
            "xlstm",
            "xLSTM",
            "xLSTMConfig",
            "xLSTMForCausalLM",
            dict(
                hidden_size=32, num_hidden_layers=2, num_heads=4, chunk_size=16,
                ffn_round_up_to_multiple_of=16, norm_reduction_force_float32=False,
            ),
            attention_setting=True,
        ),
        ModelFamily(
            "rwkv",
            "RWKV",
            "RwkvConfig",
            "RwkvForCausalLM",
            dict(
                hidden_size=32, attention_hidden_size=32, intermediate_size=64,
                num_hidden_layers=2,
            ),
            attention_setting=True,
        ),
        ModelFamily(
            "llama",
            "Llama (attention only)",
            "LlamaConfig",
            "LlamaForCausalLM",
            dict(_ATTENTION, num_hidden_layers=2),
            attention=True,
        ),
    )
}  # fmt: skip


def build_family_model(name: str, seed: int = 0) -> nn.Module:
    """An untrained tiny model of a family over the suite's vocabulary
    (:data:`~captum_mamba.apps.ground_truth.VOCABULARY`).

    Args:
        name (str): a key of :data:`FAMILIES`.
        seed (int, optional): initialisation seed. Default: 0.

    Returns:
        nn.Module: the model (float32, train mode).

    Raises:
        FamilyUnavailable: if the installed transformers lacks the family's classes.
        ValueError: for an unknown family.
    """
    family = FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")
    return ground_truth.tiny_causal_lm(
        family.config_class,
        family.model_class,
        family.fields,
        seed,
        eager_attention=family.attention,
        eager_experts=family.eager_experts,
    )


#: Training schedule of the family models: the suite's, capped for a shared CPU.
FAMILY_SETUP = ground_truth.TrainingSetup(steps=300, seconds=240.0, target_accuracy=0.99)
#: Held-out accuracy from which a model counts as having learned its task.
LEARNED_ACCURACY = 0.9
#: Compared methods, in table order.
DEFAULT_METHODS: tuple[str, ...] = (
    MAMBA_LRP,
    CP_LRP,
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    SALIENCY,
    RANDOM,
)
#: Metrics of the markdown tables (columns of :data:`ground_truth.COLUMNS`): with the
#: current (last) token set aside, which the recurrent models read last and most directly.
TABLE_METRICS: tuple[str, ...] = ("hit@1-cur", "auc-cur")


def family_setup(
    family: ModelFamily, setup: ground_truth.TrainingSetup
) -> ground_truth.TrainingSetup:
    """The training schedule of one family: ``setup`` with the family's learning rate.

    Args:
        family (ModelFamily): the family.
        setup (TrainingSetup): the schedule of the run.

    Returns:
        TrainingSetup: the family's schedule.
    """
    if family.learning_rate is None:
        return setup
    return replace(setup, learning_rate=family.learning_rate)


def family_methods(family: ModelFamily, methods: Sequence[str]) -> list[str]:
    """The methods compared on one family: ``methods`` without :data:`CP_LRP` where no
    layer is governed by the ``attention`` setting (there it equals MambaLRP).

    Args:
        family (ModelFamily): the family.
        methods (sequence of str): catalogue method names.

    Returns:
        list of str: the names, for :func:`~captum_mamba.apps.ground_truth.evaluate`.
    """
    return [name for name in methods if name != CP_LRP or family.cp_lrp_differs]


@dataclass
class FamilyResult:
    """Outcome of :func:`run_families`.

    Args:
        results (dict): ``"family/task/size"`` -> the model's training metrics
            (``accuracy``, ``steps``, ``seconds``, ``learning_rate``), ``learned``, the
            number of explained ``queries`` and the summary rows of
            :func:`~captum_mamba.apps.ground_truth.summary_rows` (``rows``).
        unavailable (dict): family -> why it was not measured.
        files (dict): ``"markdown"`` and ``"json"`` -> written path.
    """

    results: dict[str, dict[str, Any]]
    unavailable: dict[str, str]
    files: dict[str, Path]


def run_families(
    output_dir: str | Path,
    families: Sequence[str] = tuple(FAMILIES),
    tasks: Sequence[str] = ("planted",),
    methods: Sequence[str] = DEFAULT_METHODS,
    count: int = 40,
    setup: ground_truth.TrainingSetup | None = None,
    settings: MethodSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] = print,
) -> FamilyResult:
    """Train (or load) each family's task model, one at a time, explain its evaluation
    queries with every method and write the families x methods tables.

    Args:
        output_dir (str or Path): result folder (``families.md``, ``families.json``).
        families (sequence of str, optional): keys of :data:`FAMILIES`. Default: all.
        tasks (sequence of str, optional): tasks of the suite. Default: planted.
        methods (sequence of str, optional): catalogue names.
            Default: :data:`DEFAULT_METHODS`.
        count (int, optional): evaluation examples per table. Default: 40.
        setup (TrainingSetup, optional): training schedule. Default:
            :data:`FAMILY_SETUP`.
        settings (MethodSettings, optional): method hyper-parameters.
        cache_dir (str or Path, optional): model cache folder.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        FamilyResult: the results, the unavailable families and the files.
    """
    setup = setup or FAMILY_SETUP
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}
    for name in families:
        family = FAMILIES[name]
        schedule = family_setup(family, setup)
        for task in tasks:
            try:
                model, metrics = ground_truth.load_or_train_task_model(
                    task, name, schedule, cache_dir, progress, build_family_model
                )
            except FamilyUnavailable as error:
                unavailable[name] = str(error)
                break
            for size in ground_truth.TASKS[task].eval_sizes:
                key = f"{name}/{task}/{size}"
                progress(f"explaining {key}")
                chosen = family_methods(family, methods)
                measured = ground_truth.evaluate(
                    model, task, size, chosen, count, settings, with_delta=False
                )
                accuracy = metrics["accuracy"][str(size)]
                results[key] = {
                    "family": name,
                    "task": task,
                    "size": size,
                    "accuracy": accuracy,
                    "learned": accuracy >= LEARNED_ACCURACY,
                    "steps": metrics["steps"],
                    "learning_rate": schedule.learning_rate,
                    "seconds": metrics["seconds"],
                    "queries": len(next(iter(measured.values()))["correct"]),
                    "rows": ground_truth.summary_rows(measured),
                }
    files = {"markdown": directory / "families.md", "json": directory / "families.json"}
    files["markdown"].write_text(markdown(results, unavailable, methods))
    saved = {"results": results, "unavailable": unavailable, "setup": asdict(setup)}
    files["json"].write_text(json.dumps(saved, indent=1))
    return FamilyResult(results, unavailable, files)


def markdown(
    results: Mapping[str, Mapping[str, Any]],
    unavailable: Mapping[str, str] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = TABLE_METRICS,
) -> str:
    """One families x methods table per task, size and metric (``mean ± s.e.``), with
    each model's held-out accuracy, and the families not measured.

    Args:
        results (Mapping): :attr:`~captum_mamba.apps.family_tasks.FamilyResult.results`.
        unavailable (Mapping, optional): family -> why it was not measured.
        methods (sequence of str, optional): the column order.
        metrics (sequence of str, optional): columns of
            :data:`~captum_mamba.apps.ground_truth.COLUMNS`. Default:
            :data:`TABLE_METRICS`.

    Returns:
        str: the tables.
    """
    text = []
    sections = sorted({(r["task"], r["size"]) for r in results.values()}, key=str)
    for task, size in sections:
        entries = [r for r in results.values() if (r["task"], r["size"]) == (task, size)]
        for metric in metrics:
            text.append(
                f"### {task} ({ground_truth.TASKS[task].description}), size {size}: "
                f"{ground_truth.TITLES[metric]}\n"
            )
            lines = [
                "| family | accuracy | " + " | ".join(methods) + " |",
                "|---|---:|" + "---:|" * len(methods),
            ]
            for entry in entries:
                by_method = {row["method"]: row for row in entry["rows"]}
                accuracy = f"{entry['accuracy']:.3f}"
                if not entry["learned"]:
                    accuracy += " (not learned)"
                cells = []
                for method in methods:
                    mean, error = by_method.get(method, {}).get(metric, (math.nan, math.nan))
                    cells.append("-" if math.isnan(mean) else f"{mean:.2f} ± {error:.2f}")
                title = FAMILIES[entry["family"]].title
                lines.append(f"| {title} | {accuracy} | " + " | ".join(cells) + " |")
            text.append("\n".join(lines))
            text.append("")
    for name, reason in (unavailable or {}).items():
        text.append(f"- {name}: not measured ({reason})")
    return "\n".join(text).rstrip() + "\n"
