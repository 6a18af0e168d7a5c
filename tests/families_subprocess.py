"""Run in a subprocess by ``tests/test_families.py``: change one transformers module before
``captum_mamba`` is imported, restore it, and report as JSON what captum-mamba made of it.

Usage: ``python families_subprocess.py MODE MODULE [NAME [NEW_NAME]]`` with ``MODE``

- ``hide``: the module cannot be imported (``sys.modules[MODULE] = None``);
- ``rename``: the class ``NAME`` of the module is called ``NEW_NAME`` instead.

The change lasts only while the adapters load; the module is then restored, so that the
models of the hidden family can still be built. The report lists the family statuses,
``describe_architectures()``, the relative error against the independent reference of
the first configuration of every case that runs, the cases skipped, and the error that
explaining each skipped transformers case raised.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _change(mode: str, module: str, names: list[str]) -> None:
    if mode == "hide":
        sys.modules[module] = None  # type: ignore[assignment]
        return
    found = import_module(module)
    old, new = names
    setattr(found, new, getattr(found, old))
    delattr(found, old)


def _restore(mode: str, module: str, names: list[str]) -> None:
    if mode == "hide":
        del sys.modules[module]
        return
    found = import_module(module)
    old, new = names
    setattr(found, old, getattr(found, new))
    delattr(found, new)


def main() -> None:
    mode, module, *names = sys.argv[1:]
    _change(mode, module, names)
    try:
        import captum_mamba
        from captum_mamba.adapters import describe_architectures, family_statuses
    finally:
        _restore(mode, module, names)

    from cases import load_cases
    from helpers import gradient_x_input, relative_error

    cases, skipped = load_cases()
    exact = {}
    for case in cases:
        config = case.configs[0]
        model = case.build(config, 0, False)
        inputs, targets = case.inputs(model, config, 0)
        forward = case.forward_func(model) if case.forward_func else None
        lrp = captum_mamba.MambaLRP(model, forward_func=forward)
        relevance = lrp.attribute(inputs, target=targets)
        expected, _ = gradient_x_input(
            lambda x, case=case, model=model: case.reference(model, x, captum_mamba.MambaRules()),
            inputs,
            targets,
        )
        exact[case.name] = relative_error(relevance, expected)
    errors = {}
    for name in skipped:
        try:
            case = import_module(f"cases.{name}").CASE
        except ImportError:  # the installed transformers lacks the model
            continue
        if case is None:
            continue
        model = case.build(case.configs[0], 0, False)
        inputs, targets = case.inputs(model, case.configs[0], 0)
        try:
            captum_mamba.MambaLRP(model).attribute(inputs, target=targets)
        except captum_mamba.UnsupportedModelError as error:
            errors[name] = str(error)
    report = {
        "statuses": [
            {"name": s.name, "available": s.available, "reason": s.reason, "needs": s.needs}
            for s in family_statuses()
        ],
        "supported": describe_architectures(),
        "exact": exact,
        "skipped": skipped,
        "errors": errors,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
