"""Model families: which are available with the installed model libraries, and why not.

Every adapter module declares its family first (:func:`declare_family`: name, models,
the modules of the model library that define its classes, the oldest release it works
with) and then takes the classes it handles from those modules with
:meth:`Family.load`. A family whose library is older than it needs, or whose modules or
classes are missing, raises :class:`FamilyUnavailable` there; the adapter package records
the reason and loads the other families as usual. :func:`family_statuses` lists every
family with its availability (``captum-mamba doctor`` prints it), and
:func:`unavailable_family_of` lets the allow-list refuse a model of an unavailable family
in one line.

A class renamed inside the supported range of a library is found under each of its
names, listed in :data:`RENAMED` (one table for every family).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any

from packaging.version import Version

#: Classes renamed inside the supported range: ``"module.current_name"`` -> earlier names,
#: newest first.
RENAMED: dict[str, tuple[str, ...]] = {
    # transformers 5.25 renamed MambaRMSNormGated
    "transformers.models.mamba2.modeling_mamba2.Mamba2RMSNormGated": ("MambaRMSNormGated",),
    # transformers 4.57 renamed PytorchGELUTanh
    "transformers.activations.GELUTanh": ("PytorchGELUTanh",),
}


class FamilyUnavailable(ImportError):
    """A family's model library is missing, too old, or lacks a class the adapter needs."""


def installed_release(distribution: str) -> str | None:
    """The installed release of a distribution (e.g. ``"transformers"``), or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _library(module: str) -> str:
    """``"transformers 5.25.0"`` for a module of an installed distribution."""
    distribution = module.split(".")[0].replace("_", "-")
    release = installed_release(distribution)
    return distribution if release is None else f"{distribution} {release}"


def resolve(module: str, name: str) -> Any:
    """``module.name``, under its current name or any earlier one in :data:`RENAMED`.

    Args:
        module (str): dotted module path, e.g. ``"transformers.activations"``.
        name (str): the current name of the object.

    Returns:
        Any: the object.

    Raises:
        FamilyUnavailable: if the module cannot be imported (whatever the error) or has
            none of the names.
    """
    try:
        found = import_module(module)
    except ImportError as error:
        raise FamilyUnavailable(f"{_library(module)} has no module {module}") from error
    except Exception as error:  # a library module that fails to import for another reason
        message = f"{_library(module)} fails to import {module}: {type(error).__name__}"
        raise FamilyUnavailable(message) from error
    for candidate in (name, *RENAMED.get(f"{module}.{name}", ())):
        if hasattr(found, candidate):
            return getattr(found, candidate)
    raise FamilyUnavailable(f"{_library(module)} has no {name} in {module}")


def optional(module: str, name: str) -> Any:
    """:func:`resolve`, or None where the installed release lacks the object."""
    try:
        return resolve(module, name)
    except FamilyUnavailable:
        return None


@dataclass(frozen=True)
class Family:
    """A model family as its adapter declares it.

    Args:
        adapter (str): the adapter module, e.g. ``"captum_mamba.adapters.hf_bamba"``.
        name (str): the family name used in messages, e.g. ``"transformers Bamba"``.
        models (tuple of str): user-facing model classes.
        sources (tuple of str): modules of the model library that define its classes.
        needs (str): the oldest release of the library the adapter works with, as
            ``"transformers >= 4.48"``; ``""`` if any.
    """

    adapter: str
    name: str
    models: tuple[str, ...]
    sources: tuple[str, ...]
    needs: str = ""

    def load(self, *names: str, source: str | None = None) -> tuple[Any, ...]:
        """The classes (or functions) ``names`` of ``source``.

        Args:
            *names (str): current names (earlier ones are found through
                :data:`RENAMED`).
            source (str, optional): the module. Default: the first of ``sources``.

        Returns:
            tuple: the objects, in the order of ``names``.

        Raises:
            FamilyUnavailable: if one is missing.
        """
        module = self.sources[0] if source is None else source
        return tuple(resolve(module, name) for name in names)

    def check_release(self) -> None:
        """Raise :class:`FamilyUnavailable` if the installed library is older than
        ``needs`` (or missing)."""
        if not self.needs:
            return
        distribution, _, oldest = (part.strip() for part in self.needs.partition(">="))
        release = installed_release(distribution)
        if release is None:
            raise FamilyUnavailable(f"{distribution} is not installed")
        if Version(release) < Version(oldest):
            raise FamilyUnavailable(f"{distribution} {release} is installed")


@dataclass(frozen=True)
class FamilyStatus:
    """Whether a family can be explained with the installed libraries.

    Args:
        name (str): family name, e.g. ``"transformers Bamba"``.
        adapter (str): the adapter module.
        models (tuple of str): user-facing model classes.
        available (bool): whether its adapter is registered.
        reason (str): why not (``""`` if available).
        needs (str): the oldest release the adapter works with (``""`` if any).
    """

    name: str
    adapter: str
    models: tuple[str, ...]
    available: bool
    reason: str = ""
    needs: str = ""

    def describe(self) -> str:
        """One line: the name and, if unavailable, the reason and the release it needs."""
        if self.available:
            return self.name
        needs = f"; needs {self.needs}" if self.needs else ""
        return f"{self.name} ({self.reason}{needs})"


_DECLARED: dict[str, Family] = {}
_UNAVAILABLE: dict[str, str] = {}


def declare_family(
    adapter: str, name: str, models: tuple[str, ...], sources: tuple[str, ...], needs: str = ""
) -> Family:
    """Declare the family of an adapter module; call it before loading any class.

    Args:
        adapter (str): the adapter module (its ``__name__``).
        name (str): family name.
        models (tuple of str): user-facing model classes.
        sources (tuple of str): modules of the model library defining its classes.
        needs (str, optional): the oldest release it works with, as
            ``"transformers >= 4.48"``. Default: ``""``.

    Returns:
        Family: the declaration, for :meth:`Family.load`.

    Raises:
        FamilyUnavailable: if the installed library is older than ``needs``.
    """
    family = Family(adapter, name, tuple(models), tuple(sources), needs)
    _DECLARED[adapter] = family
    family.check_release()
    return family


def mark_unavailable(adapter: str, reason: str) -> None:
    """Record that an adapter module could not be loaded, and why."""
    _UNAVAILABLE[adapter] = reason


def family_statuses() -> tuple[FamilyStatus, ...]:
    """Every declared family (and every adapter module that failed before declaring
    one), available or not, in the order they were loaded."""
    statuses = []
    for adapter in dict.fromkeys([*_DECLARED, *_UNAVAILABLE]):
        family = _DECLARED.get(adapter)
        reason = _UNAVAILABLE.get(adapter, "")
        if family is None:
            short = adapter.rsplit(".", 1)[-1]
            statuses.append(FamilyStatus(short, adapter, (), False, reason))
        else:
            statuses.append(
                FamilyStatus(
                    family.name,
                    adapter,
                    family.models,
                    adapter not in _UNAVAILABLE,
                    reason,
                    family.needs,
                )
            )
    return tuple(statuses)


def unavailable_family_of(cls: type) -> FamilyStatus | None:
    """The status of the unavailable family whose library module defines ``cls``."""
    for status in family_statuses():
        family = _DECLARED.get(status.adapter)
        if not status.available and family is not None and cls.__module__ in family.sources:
            return status
    return None
