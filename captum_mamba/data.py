"""Study runner support: loaders for the labelled text sets and the tokenizer.

Paths are always arguments; :func:`default_data_dir` only suggests the shared folder
that sits next to a checkout (``../shared/data``) or ``$CAPTUM_MAMBA_DATA``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

SST2_FILE = "sst2_validation.jsonl"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes.csv"
TOKENIZER_FILE = "gpt-neox-20b-tokenizer.json"


@dataclass(frozen=True)
class LabelledText:
    """One labelled example (``label`` 1 = positive, 0 = negative)."""

    text: str
    label: int


def default_data_dir() -> Path:
    """``$CAPTUM_MAMBA_DATA`` if set, else ``../shared/data`` from the working directory."""
    return Path(os.environ.get("CAPTUM_MAMBA_DATA", Path("..") / "shared" / "data"))


def _require(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the data folder explicitly or set CAPTUM_MAMBA_DATA"
        )
    return path


def load_sst2(path: str | os.PathLike[str]) -> list[LabelledText]:
    """Read GLUE SST-2 validation rows ``{"sentence": str, "label": 0/1}`` (JSON lines).

    Args:
        path (str or PathLike): the ``.jsonl`` file.

    Returns:
        list of LabelledText: the examples in file order.
    """
    with _require(path).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [LabelledText(row["sentence"], int(row["label"])) for row in rows]


def load_rotten_tomatoes(path: str | os.PathLike[str]) -> list[LabelledText]:
    """Read the Rotten Tomatoes snippets (CSV with columns ``text,label``).

    Args:
        path (str or PathLike): the ``.csv`` file.

    Returns:
        list of LabelledText: the examples in file order.
    """
    with _require(path).open(encoding="utf-8", newline="") as handle:
        return [LabelledText(row["text"], int(row["label"])) for row in csv.DictReader(handle)]


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a Hugging Face ``tokenizers`` JSON file (e.g. the GPT-NeoX-20B tokenizer).

    Args:
        path (str or PathLike): the tokenizer ``.json`` file.

    Returns:
        tokenizers.Tokenizer: the tokenizer.
    """
    return Tokenizer.from_file(str(_require(path)))
