"""Every code block of the README and of the documentation pages (``docs/*.md``) works.

- ``python`` blocks run on their own, as a reader copies them into a fresh interpreter:
  each in its own subprocess, from an empty temporary folder, offline, with the shared
  data folder in ``$CAPTUM_MAMBA_DATA``. A block that starts with
  ``# excerpt of <path>`` shows part of a source file: it is not run; it must compile,
  and every function it defines and every name its other statements use must exist in
  that module.
- ``bash`` blocks are commands (installs, long runs): every console script they call is
  declared in ``pyproject.toml``, every ``python -m`` module exists, and every repository
  file they name exists.
- ``text`` blocks are output or formulas and are not executed; a block without a language
  fails, so that nothing is left unchecked by accident.

The README's relative links (into ``docs/``, pictures) name files that exist, and a link to
a heading of a Markdown page names one of its headings (the pages' own links are checked
by the documentation build, which turns a missing target into an error).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CAPTUM_MAMBA_DATA", ROOT.parent / "shared" / "data")).resolve()
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "text"}
EXCERPT = re.compile(r"# excerpt of (\S+\.py)")
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """A fenced code block: its document, first line, language and code."""

    document: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (MyST directives such as ``{toctree}``
    are not code and are left out)."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        language = match["info"].strip()
        if language.startswith("{"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(path, line, language, match["code"]))
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in code_blocks(path)]
PYTHON = [b for b in BLOCKS if b.language == "python" and not EXCERPT.match(b.code)]
EXCERPTS = [b for b in BLOCKS if b.language == "python" and EXCERPT.match(b.code)]
SHELL = [b for b in BLOCKS if b.language == "bash"]


def _ids(blocks: list[Block]) -> list[str]:
    return [block.name for block in blocks]


def test_every_block_has_a_known_language() -> None:
    unknown = [
        f"{b.name} ({b.language or 'no language'})" for b in BLOCKS if b.language not in LANGUAGES
    ]
    assert not unknown, f"give these blocks a language out of {sorted(LANGUAGES)}: {unknown}"


def test_the_documents_have_code() -> None:
    assert len(PYTHON) >= 15, _ids(PYTHON)
    assert {b.document.name for b in PYTHON} >= {
        "README.md",
        "getting_started.md",
        "concepts.md",
        "comparing_methods.md",
        "captum_workflows.md",
    }


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_block_runs_on_its_own(block: Block, tmp_path: Path) -> None:
    if "CAPTUM_MAMBA_DATA" in block.code and not DATA.is_dir():
        pytest.skip(f"the block reads the shared data, not found at {DATA}")
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(
        os.environ,
        CAPTUM_MAMBA_DATA=str(DATA),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{block.name}:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"


def _module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


@pytest.mark.parametrize("block", EXCERPTS, ids=_ids(EXCERPTS))
def test_excerpt_matches_its_source(block: Block) -> None:
    source = EXCERPT.match(block.code)[1]
    assert (ROOT / source).is_file(), f"{block.name}: {source} does not exist"
    module = importlib.import_module(_module_of(source))
    tree = ast.parse(block.code)
    missing = []
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.ClassDef):
            if not hasattr(module, statement.name):
                missing.append(statement.name)
            continue
        for node in ast.walk(statement):
            used = isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            if used and not hasattr(module, node.id) and not hasattr(builtins, node.id):
                missing.append(node.id)
    assert not missing, f"{block.name}: not in {source}: {sorted(set(missing))}"


def console_scripts() -> set[str]:
    """Names in the ``[project.scripts]`` table of ``pyproject.toml`` (read without
    ``tomllib``, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert table, "pyproject.toml has no [project.scripts] table"
    return set(re.findall(r"^([\w-]+)\s*=", table[1], re.MULTILINE))


def _commands(code: str) -> list[list[str]]:
    """Each command of a shell block, as words (comments, ``&&`` and ``;`` split off;
    lines ending in a backslash continued)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in {"&&", ";", "||", "|"}:
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_shell_block_names_existing_commands_and_files(block: Block) -> None:
    scripts = console_scripts()
    problems = []
    for words in _commands(block.code):
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]  # VAR=value
        if not words:
            continue
        program = words[0]
        if program.startswith("captum-mamba") and program not in scripts:
            problems.append(f"{program} is not a console script of pyproject.toml")
        if program in {"python", "python3"} and words[1:2] == ["-m"]:
            module = words[2]
            if find_spec(module.split(".")[0]) is None or (
                module.startswith("captum_mamba") and find_spec(module) is None
            ):
                problems.append(f"no module {module}")
        for word in words[1:]:
            path = re.fullmatch(r"[\w./-]+/[\w.-]+\.(py|ipynb|toml|md)", word)
            if path and not (ROOT / word).exists():
                problems.append(f"no file {word}")
    assert not problems, f"{block.name}: {problems}"


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub (and MyST, ``myst_heading_anchors``) give the headings of a page."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_readme_links_resolve() -> None:
    readme = ROOT / "README.md"
    problems = []
    for match in LINK.finditer(FENCE.sub("", readme.read_text(encoding="utf-8"))):
        target = match["target"]
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses; the README's own headings
        file, _, anchor = target.partition("#")
        path = ROOT / file
        if not path.exists():
            problems.append(f"{target}: no file {file}")
        elif anchor and anchor not in heading_anchors(path):
            problems.append(f"{target}: {file} has no heading with the anchor #{anchor}")
    assert not problems, problems
