r"""Methods of the applications: every compared attribution method by name, and
per-example seeding.

The study and the data-set attribution explain with the methods of the catalogue
:data:`~captum_mamba.baselines.captum_methods.METHODS`, which also holds two rankings
that read no model at all, against which every faithfulness score should be judged
(``Recency`` and ``Read position, then random``). A method that does not beat them on a
perturbation protocol measures the protocol, not the model.

Names are matched case-insensitively, also as their column slugs
(:func:`method_slug`: ``"Gradient x Input"`` is ``gradient_x_input``).

Randomness is per example: ``Random``, ``SmoothGrad`` and the read-position baseline
are seeded with :func:`example_seed` of the run's seed and the example's id, so an
example gets the same scores whichever process, shard or batch explains it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from captum_mamba.attr.targets import TargetType
from captum_mamba.baselines.captum_methods import (
    METHODS,
    MethodSettings,
    TokenScorer,
    build_method,
)

#: Every method of the applications, in table order.
ALL_METHODS: tuple[str, ...] = tuple(METHODS)


def method_slug(name: str) -> str:
    """Column-name form of a method name: lower case, runs of other characters as ``_``.

    Args:
        name (str): a method name, e.g. ``"LRP (LN-rule only)"``.

    Returns:
        str: e.g. ``"lrp_ln_rule_only"``.
    """
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def resolve_methods(names: str | Sequence[str]) -> tuple[str, ...]:
    """Method names from user input: ``"all"``, or names or slugs in any case,
    comma-separated or as a sequence; duplicates dropped, order kept.

    Args:
        names (str or sequence of str): e.g. ``"mambalrp,Integrated Gradients,random"``.

    Returns:
        tuple of str: the canonical names.

    Raises:
        ValueError: for an unknown or empty name, listing the valid names.

    Examples::

        >>> resolve_methods("MAMBALRP, saliency")
        ('MambaLRP', 'Saliency')
    """
    known = {}
    for name in ALL_METHODS:
        known[name.lower()] = name
        known[method_slug(name)] = name

    def lookup(text: str) -> str | None:
        text = text.strip()
        return (known.get(text.lower()) or known.get(method_slug(text))) if text else None

    if isinstance(names, str):
        if names.strip().lower() == "all":
            return ALL_METHODS
        # Some names hold commas ("Read position, then random"): take the longest
        # run of comma-separated parts that names a method.
        parts = names.split(",")
        items, start = [], 0
        while start < len(parts):
            for stop in range(len(parts), start, -1):
                if lookup(",".join(parts[start:stop])) is not None:
                    break
            items.append(",".join(parts[start:stop]))
            start = stop
    else:
        items = [str(item) for item in names]
    chosen: list[str] = []
    for item in items:
        name = lookup(item)
        if name is None:
            raise ValueError(
                f"unknown method {item.strip()!r}; choose from {', '.join(ALL_METHODS)} "
                f"(any case), or 'all'"
            )
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def example_seed(seed: int, example_id: int) -> int:
    """Seed of the random numbers for one example: a fixed mix of the run's seed and
    the example's id (the same in every process).

    Args:
        seed (int): the run's seed.
        example_id (int): the example's id (its row in the data set).

    Returns:
        int: a non-negative 63-bit seed.
    """
    return (seed * 1_000_003 + example_id * 7_919 + 12_345) % (2**63)


@dataclass
class MethodRunner:
    """One method of a run, ready to explain examples.

    Args:
        name (str): the method name.
        signed (bool): whether its scores are signed relevances meant to sum to the
            explained output.
        batchable (bool): whether padded batches may be explained in one call.
        model (nn.Module): the explained model.
        forward (Callable): ``forward(embeds, attention_mask) -> outputs``.
        settings (MethodSettings): hyper-parameters (and the run's seed).
        built (TokenScorer, optional): the method built once (unseeded methods;
            the seeded ones are built per example).
    """

    name: str
    signed: bool
    batchable: bool
    model: nn.Module
    forward: Callable[..., Tensor]
    settings: MethodSettings
    built: TokenScorer | None = None

    def __call__(
        self,
        embeds: Tensor,
        target: TargetType,
        attention_mask: Tensor | None = None,
        example_ids: Sequence[int] = (),
    ) -> Tensor:
        """Token scores ``(batch, seq)`` of ``embeds`` ``(batch, seq, hidden)``.

        Args:
            embeds (Tensor): input embeddings (left-padded for a batch).
            target (int, tuple or list): the explained output(s), as for
                :class:`~captum_mamba.MambaLRP`.
            attention_mask (Tensor, optional): ``(batch, seq)`` 0/1 mask.
            example_ids (sequence of int, optional): ids of the examples (seeds of the
                seeded methods; one example per call for those).

        Returns:
            Tensor: detached scores.
        """
        extra = () if attention_mask is None else (attention_mask,)
        if METHODS[self.name].seeded:
            if len(example_ids) != 1 or embeds.shape[0] != 1:
                raise ValueError(f"{self.name} explains one example per call with its id")
            seed = example_seed(self.settings.seed, int(example_ids[0]))
            settings = replace(self.settings, seed=seed)
            method = build_method(self.name, self.model, self.forward, settings)
            return method(embeds, target, extra or None)
        if self.built is None:
            raise ValueError(f"{self.name} was built without its method; use build_runners")
        return self.built(embeds, target, extra or None)


def build_runners(
    names: Sequence[str],
    model: nn.Module,
    forward: Callable[..., Tensor],
    settings: MethodSettings | None = None,
) -> list[MethodRunner]:
    """Runners of several methods (names as in :func:`resolve_methods`).

    Args:
        names (sequence of str): method names.
        model (nn.Module): the explained model.
        forward (Callable): ``forward(embeds, attention_mask=None) -> outputs``.
        settings (MethodSettings, optional): hyper-parameters. Default:
            ``MethodSettings()``.

    Returns:
        list of MethodRunner: one per name.

    Examples::

        >>> runners = build_runners(resolve_methods("mambalrp,recency"), model, forward)
        >>> scores = runners[0](embeds, target=1)
    """
    settings = settings or MethodSettings()
    runners = []
    for name in resolve_methods(names):
        spec = METHODS[name]
        built = None if spec.seeded else build_method(name, model, forward, settings)
        runners.append(
            MethodRunner(name, spec.signed, spec.batchable, model, forward, settings, built)
        )
    return runners


#: ``explain(embeds, target, example_id)`` -> token scores ``(batch, seq)``.
Explainer = Callable[[Tensor, Any, int], Tensor]


def method_explainers(
    methods: Sequence[str | TokenScorer],
    model: nn.Module,
    forward: Callable[..., Tensor],
    settings: MethodSettings | None = None,
) -> list[tuple[str, bool, Explainer]]:
    """One explain function per method, for methods given by name (runners of
    :func:`build_runners`, seeded per example) or built (:class:`TokenScorer`, e.g. an
    LRP preset outside the catalogue).

    Args:
        methods (sequence of str or TokenScorer): method names (as in
            :func:`resolve_methods`) or built scorers of ``model``.
        model (nn.Module): the explained model.
        forward (Callable): ``forward(embeds, attention_mask=None) -> outputs``.
        settings (MethodSettings, optional): hyper-parameters. Default:
            ``MethodSettings()``.

    Returns:
        list of tuple: ``(name, signed, explain(embeds, target, example_id))`` per
        method, in the given order.
    """
    names = [m for m in methods if isinstance(m, str)]
    runners = iter(build_runners(names, model, forward, settings) if names else [])
    result: list[tuple[str, bool, Explainer]] = []
    for method in methods:
        if isinstance(method, TokenScorer):
            built = method
            result.append((built.name, built.signed, lambda e, t, i, m=built: m(e, t)))
        else:
            runner = next(runners)
            explain = lambda e, t, i, r=runner: r(e, t, None, [i])  # noqa: E731
            result.append((runner.name, runner.signed, explain))
    return result
