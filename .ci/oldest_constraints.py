"""Print pip constraints pinning every dependency of pyproject.toml to its lower bound.

CI installs the package with these constraints into a second virtual environment, so that
the oldest releases the package declares are tested at every run (``.ci/run``). torch is
left out: the package index has a CPU build of torch 2.13.0 only (older releases come as
multi-GB CUDA builds), so CI installs that one; pyproject.toml says why torch's lower bound
is what it is.

Usage: python .ci/oldest_constraints.py [PYPROJECT]  (default: the checkout's)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

#: Dependencies whose lower bound CI cannot install (see the module docstring).
NOT_PINNED = {"torch"}


def lower_bounds(pyproject: Path) -> dict[str, str]:
    """Dependency name -> the version of its ``>=`` bound, for every runtime dependency."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    bounds = {}
    for requirement in dependencies:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*(.*)$", requirement)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name, spec = match.groups()
        lower = re.search(r">=\s*([^,;\s]+)", spec)
        if lower is None:
            raise ValueError(f"{requirement!r} declares no lower bound (>=)")
        bounds[name.lower()] = lower.group(1)
    return bounds


def main() -> None:
    """Print ``name==version`` for every dependency but those in :data:`NOT_PINNED`."""
    default = Path(__file__).resolve().parents[1] / "pyproject.toml"
    pyproject = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    for name, version in sorted(lower_bounds(pyproject).items()):
        if name not in NOT_PINNED:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
