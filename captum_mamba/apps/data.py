"""Data: readers for text sets (CSV, TSV, JSON lines, Parquet, Hugging Face ``datasets``
saved to disk), splits and the tokenizer.

Every reader checks each row and stops at the first bad one with a one-line
:class:`DataFormatError` that names the file, the row (and the line, for text files)
and how to fix it. Labels are class indices ``0..K-1``, or strings mapped to indices
(:attr:`LabelledData.label_names` keeps the mapping). :func:`read_texts` reads one or
more text columns and an optional label column; :func:`read_labelled` needs a label.

Paths are always arguments; :func:`default_data_dir` only suggests the shared folder
that sits next to a checkout (``../shared/data``) or ``$CAPTUM_MAMBA_DATA``.

Examples::

    >>> data = read_labelled("reviews.csv", text_column="review", label_column="stars")
    >>> train, validation = train_validation_split(data.examples, 0.1, seed=0)
    >>> table = read_texts("pairs.jsonl", text_columns=("premise", "hypothesis"))
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

SST2_FILE = "sst2_validation.jsonl"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes.csv"
TOKENIZER_FILE = "gpt-neox-20b-tokenizer.json"

#: Class names of the two sentiment sets (label 1 = positive).
SENTIMENT_LABELS = ("negative", "positive")

FORMATS = ("csv", "tsv", "jsonl", "parquet", "arrow")

#: Most classes inferred from a label column (without ``label_names``) unless
#: ``max_classes`` allows more; a column with more is probably not a label column.
MAX_CLASSES = 100
#: A label column whose inferred classes are more than this share of its (at least
#: :data:`MIN_ROWS_FOR_SHARE`) rows is refused too: nearly one class per row is a text.
MAX_CLASS_SHARE = 0.5
MIN_ROWS_FOR_SHARE = 20
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
_INTEGER = re.compile(r"[+-]?\d+")


class DataFormatError(ValueError):
    """A data file or one of its rows cannot be read; the message names file, row and fix."""


@dataclass(frozen=True)
class LabelledText:
    """One labelled example; ``label`` is a class index (for sentiment, 1 = positive)."""

    text: str
    label: int


@dataclass(frozen=True)
class LabelledData:
    """Examples read from one file, with the names of their classes.

    Args:
        examples (tuple of LabelledText): the rows in file order.
        label_names (tuple of str): name of class ``k`` at position ``k``.
        source (str): the file they were read from.
    """

    examples: tuple[LabelledText, ...]
    label_names: tuple[str, ...]
    source: str

    @property
    def num_labels(self) -> int:
        """Number of classes ``K`` (labels are ``0..K-1``)."""
        return len(self.label_names)

    def fingerprint(self) -> str:
        """SHA-256 of the texts, labels and class names (not of the file name)."""
        return fingerprint(self.examples, self.label_names)


def fingerprint(examples: Sequence[LabelledText], label_names: Sequence[str]) -> str:
    """SHA-256 hex digest identifying labelled examples and their class names.

    Args:
        examples (sequence of LabelledText): the examples, in order.
        label_names (sequence of str): the class names.

    Returns:
        str: 64 hex digits; any change of a text, a label, the order or a name changes it.
    """
    digest = hashlib.sha256(json.dumps(list(label_names)).encode())
    for example in examples:
        digest.update(json.dumps([example.text, example.label]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def class_list(names: Sequence[str], limit: int = 8, width: int = 40) -> str:
    """Class names for a message or a caption, never the whole of a long list.

    Args:
        names (sequence of str): the class names.
        limit (int, optional): names shown at most. Default: 8.
        width (int, optional): characters shown of each name at most. Default: 40.

    Returns:
        str: e.g. ``"negative, positive"`` or ``"a, b, ... (2300 classes)"``.
    """
    shown = [name if len(name) <= width else name[: width - 3] + "..." for name in names[:limit]]
    if len(names) > limit:
        return f"{', '.join(shown)}, ... ({len(names)} classes)"
    return ", ".join(shown)


def default_data_dir() -> Path:
    """``$CAPTUM_MAMBA_DATA`` if set, else ``../shared/data`` from the working directory."""
    return Path(os.environ.get("CAPTUM_MAMBA_DATA", Path("..") / "shared" / "data"))


def _require(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found (no such file)"
        raise FileNotFoundError(f"file {path} {what}")
    return path


def _format_of(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        if file_format not in FORMATS:
            raise ValueError(
                f"file_format must be one of {', '.join(FORMATS)}, got {file_format!r}"
            )
        return file_format
    if path.is_dir():
        return "arrow"
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise DataFormatError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            f"rename it to .csv, .tsv, .jsonl or .parquet or pass file_format= "
            f"(--format on the command line)"
        )
    return found


# A raw row: (where, for messages, e.g. "line 7 (row 6)"; mapping column -> value).
RawRow = tuple[str, dict[Any, Any]]
# Columns to read: (role, column name), e.g. ("text", "review"), ("label", "stars").
Columns = tuple[tuple[str, str], ...]


#: Stands for a bare carriage return inside a record while the csv module reads it (a
#: Unicode noncharacter, reserved for such internal use), and is turned back afterwards.
_BARE_CR = "\uffff"
_BARE_CR_PATTERN = re.compile(r"\r(?!\n)")


def line_ending(path: Path) -> str:
    """The line ending of a text file: ``"\\r\\n"`` or ``"\\n"`` (whichever ends its
    first line), or ``"\\r"`` for a file with carriage returns but no line feed.

    Args:
        path (Path): the file.

    Returns:
        str: the line ending (``"\\n"`` for a file without any).
    """
    carriage_return, previous = False, b""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            newline = chunk.find(b"\n")
            if newline >= 0:
                before = (previous + chunk[:newline])[-1:]
                return "\r\n" if before == b"\r" else "\n"
            carriage_return = carriage_return or b"\r" in chunk
            previous = chunk
    return "\r" if carriage_return else "\n"


def _records(handle: Any, ending: str) -> Iterator[str]:
    """The lines of ``handle`` for the csv module: split at ``ending`` only, a bare
    carriage return inside a line kept as text (hidden from the csv module, which would
    end the record there)."""
    if ending == "\r":
        yield from handle
        return
    for line in handle:
        yield _BARE_CR_PATTERN.sub(_BARE_CR, line)


def _csv_rows(path: Path, delimiter: str, columns: Columns) -> Iterator[RawRow]:
    reader = None
    ending = line_ending(path)
    limit = csv.field_size_limit()
    try:
        # A field may be as long as the file (a whole book in one cell).
        csv.field_size_limit(max(limit, min(path.stat().st_size + 1, sys.maxsize, 2**31 - 1)))
        with path.open(encoding="utf-8-sig", newline="" if ending == "\r" else "\n") as handle:
            reader = csv.reader(_records(handle, ending), delimiter=delimiter, strict=True)
            header = next(reader, None)
            if not header:
                names = tuple(column for _, column in columns)
                raise DataFormatError(
                    f"{path} is empty or starts with a blank line; "
                    f"start it with a header row naming the columns {names}"
                )
            _check_columns(path, header, columns)
            start, number = reader.line_num + 1, 0
            for record in reader:
                if record:  # blank lines are skipped
                    number += 1
                    where = f"line {start} (row {number})"
                    if any(_BARE_CR in field for field in record):
                        record = [field.replace(_BARE_CR, "\r") for field in record]
                    if len(record) > len(header):
                        raise DataFormatError(
                            f"{path} {where}: {len(record)} fields but {len(header)} columns"
                            f"{_carriage_return_note(record, ending)}; quote the fields that "
                            f"contain {delimiter!r}"
                        )
                    if len(record) < len(header) and any("\r" in f for f in record):
                        raise DataFormatError(
                            f"{path} {where}: {len(record)} fields but {len(header)} columns"
                            f"{_carriage_return_note(record, ending)}; end every row with the "
                            f"file's line ending or quote the field"
                        )
                    yield where, dict(zip(header, record, strict=False))
                start = reader.line_num + 1
    except csv.Error as error:
        line = reader.line_num if reader is not None else 1
        raise DataFormatError(
            f"{path} line {line}: malformed CSV ({error}); "
            f"close the quotes of that record or double the quote characters inside it"
        ) from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} is not UTF-8 text ({error}); save it as UTF-8") from None
    finally:
        csv.field_size_limit(limit)


def _carriage_return_note(record: Sequence[str], ending: str) -> str:
    """Names a carriage return found inside a broken row, or nothing."""
    if not any("\r" in field for field in record):
        return ""
    shown = {"\n": "\\n", "\r\n": "\\r\\n", "\r": "\\r"}[ending]
    return (
        f" (a carriage return \\r inside a field, kept as text since the file's rows end "
        f"with {shown}; if it ends a row there, replace it with {shown})"
    )


def _check_columns(path: Path, header: Sequence[str], columns: Columns) -> None:
    for role, column in columns:
        if column not in header:
            raise DataFormatError(
                f"{path} has no column {column!r} (columns: {', '.join(map(str, header))}); "
                f"pass {role}_column= the name of the {role} column "
                f"(--{role}-column on the command line)"
            )


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            number = 0
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                number += 1
                where = f"line {line_number} (row {number})"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataFormatError(
                        f"{path} {where}: not valid JSON ({error.msg}); "
                        f"write one JSON object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise DataFormatError(
                        f"{path} {where}: a JSON {type(row).__name__}, not an object; "
                        f'write one object per line, e.g. {{"text": "...", "label": 0}}'
                    )
                yield where, row
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} is not UTF-8 text ({error}); save it as UTF-8") from None


def require_pyarrow(purpose: str, alternative: str = "") -> Any:
    """pyarrow with its Parquet module, or an ``ImportError`` that names the fix.

    Args:
        purpose (str): what needs it, e.g. ``"writing Parquet results"``.
        alternative (str, optional): a way around it, appended to the message (e.g.
            ``"convert it to CSV or JSONL"``). Default: none.

    Returns:
        module: ``pyarrow`` (``pyarrow.parquet`` imported).

    Raises:
        ImportError: naming ``purpose`` and how to install pyarrow.
    """
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        fix = "pip install pyarrow (or captum-mamba[parquet])"
        raise ImportError(
            f"{purpose} needs pyarrow; {fix}" + (f", or {alternative}" if alternative else "")
        ) from None
    return pyarrow


def _pyarrow(path: Path) -> Any:
    return require_pyarrow(f"reading {path}", "convert it to CSV or JSONL")


def _table_rows(path: Path, table: Any, columns: Columns) -> Iterator[RawRow]:
    _check_columns(path, table.column_names, columns)
    names = list(dict.fromkeys(column for _, column in columns))
    for number, row in enumerate(table.select(names).to_pylist(), 1):
        yield f"row {number}", row


def _parquet_rows(path: Path, columns: Columns) -> Iterator[RawRow]:
    pyarrow = _pyarrow(path)
    try:
        table = pyarrow.parquet.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise DataFormatError(
            f"{path} is not a readable Parquet file ({type(error).__name__}: {error}); "
            f"write it again or convert it to CSV or JSONL"
        ) from None
    return _table_rows(path, table, columns)


def _dataset_directory(path: Path, split: str | None) -> Path:
    """The folder of one split of a ``datasets`` data set saved with ``save_to_disk``."""
    if (path / "state.json").is_file():
        return path
    index = path / "dataset_dict.json"
    if not index.is_file():
        raise DataFormatError(
            f"{path} is a folder but not a Hugging Face data set saved with save_to_disk "
            f"(no state.json or dataset_dict.json); pass a data file or such a folder"
        )
    try:
        splits = [str(name) for name in json.loads(index.read_text())["splits"]]
    except (ValueError, KeyError, TypeError) as error:
        raise DataFormatError(
            f"{index} is not a readable dataset_dict.json ({error}); save the data set again"
        ) from None
    if split is None and len(splits) == 1:
        split = splits[0]
    if split not in splits:
        choice = "choose" if split is None else f"there is no split {split!r}; choose"
        raise DataFormatError(
            f"{path} holds the splits {', '.join(splits)}; {choice} one with split= "
            f"(--split on the command line)"
        )
    return path / split


def _arrow_table(path: Path, split: str | None) -> tuple[Any, tuple[str, ...] | None, Path]:
    """The table of a saved ``datasets`` data set (read with pyarrow, without
    ``datasets``), the class names of its label feature if it has any, and the folder."""
    directory = _dataset_directory(path, split)
    pyarrow = _pyarrow(path)
    try:
        state = json.loads((directory / "state.json").read_text())
        files = [directory / entry["filename"] for entry in state["_data_files"]]
        tables = []
        for file in files:
            with pyarrow.memory_map(str(file)) as source:
                tables.append(pyarrow.ipc.open_stream(source).read_all())
        table = pyarrow.concat_tables(tables) if len(tables) > 1 else tables[0]
    except Exception as error:  # json, KeyError, OSError and pyarrow's errors
        raise DataFormatError(
            f"{directory} is not a readable saved data set ({type(error).__name__}: {error}); "
            f"save it again with Dataset.save_to_disk"
        ) from None
    return table, _class_label_names(directory), directory


def _class_label_names(directory: Path) -> dict[str, tuple[str, ...]]:
    """Class names of the ``ClassLabel`` features in ``dataset_info.json``, by column."""
    try:
        features = json.loads((directory / "dataset_info.json").read_text())["features"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(features, dict):
        return {}
    return {
        column: tuple(str(name) for name in feature["names"])
        for column, feature in features.items()
        if isinstance(feature, dict)
        and feature.get("_type") == "ClassLabel"
        and isinstance(feature.get("names"), list)
    }


def _label_value(value: Any) -> int | str | None:
    """A label as a class index (``3``, ``"3"``) or a class name (a non-numeric string);
    None for anything else (``1.5``, ``"1.0"``, ``True``, a list)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    value = value.strip()
    if _INTEGER.fullmatch(value):
        return int(value)
    try:
        float(value)
    except ValueError:
        return value or None
    return None


@dataclass(frozen=True)
class TextTable:
    """Texts read from one file (and their labels, if a label column was read).

    Args:
        texts (tuple of str): the texts in file order (several text columns joined).
        labels (tuple of int, optional): class index of each text; None without a
            label column.
        label_names (tuple of str): name of class ``k`` at position ``k`` (empty
            without labels and ``label_names``).
        source (str): the file (or folder) they were read from.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...]
    source: str

    def labelled(self) -> LabelledData:
        """The texts as :class:`LabelledData` (needs labels)."""
        if self.labels is None:
            raise DataFormatError(
                f"{self.source} was read without a label column; pass label_column= "
                f"(--label-column on the command line)"
            )
        examples = tuple(
            LabelledText(text, label) for text, label in zip(self.texts, self.labels, strict=True)
        )
        return LabelledData(examples, self.label_names, self.source)

    def fingerprint(self) -> str:
        """SHA-256 of the texts, labels and class names (not of the file name)."""
        digest = hashlib.sha256(json.dumps([list(self.label_names), self.labels]).encode())
        for text in self.texts:
            digest.update(json.dumps(text).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def read_texts(
    path: str | os.PathLike[str],
    text_columns: str | Sequence[str] = "text",
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    file_format: str | None = None,
    split: str | None = None,
    separator: str = "\n",
    max_classes: int | None = None,
) -> TextTable:
    """Read texts (one or more text columns) and optional labels from a CSV, TSV,
    JSON-lines or Parquet file, or a Hugging Face ``datasets`` data set saved with
    ``save_to_disk`` (read with pyarrow; ``datasets`` itself is not needed).

    Rows are checked as in :func:`read_labelled`: every text column must hold a
    non-empty string, and labels (if read) must name a class.

    Args:
        path (str or PathLike): the file, or the folder of a saved data set.
        text_columns (str or sequence of str, optional): column(s) of the text; several
            are joined with ``separator`` (e.g. a premise and a hypothesis).
            Default: ``"text"``.
        label_column (str, optional): column of the label. Default: None (no labels).
        label_names (sequence of str, optional): the class names, class ``k`` at
            position ``k``. Default: None (the ``ClassLabel`` names of a saved data
            set, else inferred as in :func:`read_labelled`).
        file_format (str, optional): one of :data:`FORMATS`. Default: None (from the
            suffix; ``"arrow"`` for a folder).
        split (str, optional): split of a saved ``DatasetDict``. Default: None (the
            only split).
        separator (str, optional): joins several text columns. Default: ``"\\n"``.
        max_classes (int, optional): most classes inferred from the label column
            (without ``label_names``); more are refused as not a label column.
            Default: None (:data:`MAX_CLASSES`, and at most half as many classes
            as rows from :data:`MIN_ROWS_FOR_SHARE` rows on).

    Returns:
        TextTable: the texts, labels and class names.

    Raises:
        DataFormatError: as :func:`read_labelled`, naming the file and the row.

    Examples::

        >>> table = read_texts("news.csv", text_columns=("title", "body"),
        ...                    label_column="topic")
        >>> table.texts[0], table.labels[0], table.label_names
    """
    path = Path(path)
    if not path.is_dir():
        path = _require(path)
    text_columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not text_columns or not all(isinstance(c, str) and c for c in text_columns):
        raise ValueError(f"text_columns must name at least one column, got {text_columns!r}")
    file_format = _format_of(path, file_format)
    columns: Columns = tuple(("text", column) for column in text_columns)
    if label_column is not None:
        columns += (("label", label_column),)
    names = None if label_names is None else tuple(str(name) for name in label_names)
    if names is not None and (not names or len(set(names)) != len(names)):
        raise ValueError(f"label_names must be distinct and non-empty, got {label_names!r}")
    source = path
    if file_format == "csv":
        rows = _csv_rows(path, ",", columns)
    elif file_format == "tsv":
        rows = _csv_rows(path, "\t", columns)
    elif file_format == "jsonl":
        rows = _jsonl_rows(path)
    elif file_format == "parquet":
        rows = _parquet_rows(path, columns)
    else:
        table, class_labels, source = _arrow_table(path, split)
        rows = _table_rows(source, table, columns)
        if names is None and label_column in class_labels:
            names = class_labels[label_column]
    texts: list[str] = []
    raw_labels: list[tuple[str, Any]] = []
    for where, row in rows:
        for _, column in columns:
            if row.get(column) is None:
                raise DataFormatError(
                    f"{source} {where}: no value in column {column!r}; "
                    f"complete the row or remove it"
                )
        parts = []
        for column in text_columns:
            text = row[column]
            if not isinstance(text, str):
                raise DataFormatError(
                    f"{source} {where}: the text in column {column!r} is a "
                    f"{type(text).__name__}, not a string; write it as a string"
                )
            if not text.strip():
                raise DataFormatError(
                    f"{source} {where}: empty text in column {column!r}; "
                    f"remove the row or fill in its text"
                )
            parts.append(text)
        texts.append(separator.join(parts))
        if label_column is not None:
            raw_labels.append((where, row[label_column]))
    if not texts:
        what = "labelled example" if label_column is not None else "text"
        raise DataFormatError(f"{source} has no rows; it needs at least one {what}")
    labels = None
    if label_column is not None:
        names, found = _class_indices(source, raw_labels, names, label_column, max_classes)
        labels = tuple(found)
    return TextTable(tuple(texts), labels, names or (), str(source))


def read_labelled(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    file_format: str | None = None,
    split: str | None = None,
) -> LabelledData:
    """Read labelled texts from a CSV, TSV, JSON-lines or Parquet file, or a saved
    Hugging Face data set (see :func:`read_texts`).

    CSV and TSV files need a header row; quoted fields may contain newlines and
    delimiters. A JSON-lines file has one object per line (blank lines are skipped).
    Parquet and saved data sets need the optional ``pyarrow``.

    Labels:

    - with ``label_names``: a label is a class index ``0..K-1`` or one of the names;
    - without: either every label is an integer (classes ``0..max``, named
      ``"0"``, ``"1"``, ...) or none is (the distinct strings, sorted, become the
      classes ``0..K-1``).

    Args:
        path (str or PathLike): the file.
        text_column (str, optional): column (key) of the text. Default: ``"text"``.
        label_column (str, optional): column (key) of the label. Default: ``"label"``.
        label_names (sequence of str, optional): the class names, class ``k`` at
            position ``k``. Default: None (inferred as above).
        file_format (str, optional): ``"csv"``, ``"tsv"``, ``"jsonl"``, ``"parquet"``
            or ``"arrow"``. Default: None (from the file suffix).
        split (str, optional): split of a saved ``DatasetDict``. Default: None.

    Returns:
        LabelledData: the examples in file order with their class names.

    Raises:
        DataFormatError: for an unreadable file, a missing column, an empty text, a
            non-integer label (unless every label is a string), or a label outside the
            classes; the message names the file and the row (and line).

    Examples::

        >>> data = read_labelled("sst2_validation.jsonl", text_column="sentence",
        ...                      label_names=("negative", "positive"))
        >>> data.examples[0], data.num_labels
    """
    table = read_texts(path, text_column, label_column, label_names, file_format, split)
    return table.labelled()


def _class_indices(
    path: Path,
    rows: Sequence[tuple[str, Any]],
    names: tuple[str, ...] | None,
    column: str = "label",
    max_classes: int | None = None,
) -> tuple[tuple[str, ...], list[int]]:
    values = [_label_value(label) for _, label in rows]
    for (where, label), value in zip(rows, values, strict=True):
        if value is None:
            raise DataFormatError(
                f"{path} {where}: label {label!r} is neither an integer class index nor a "
                f"class name; write the class index (0, 1, ...) or the class name"
            )
    if names is None:
        strings = [i for i, value in enumerate(values) if isinstance(value, str)]
        if not strings:
            names = tuple(str(k) for k in range(max(max(values), 0) + 1))
        elif len(strings) == len(rows):
            names = tuple(sorted(set(values)))
        else:
            where, label = rows[strings[0]]
            raise DataFormatError(
                f"{path} {where}: label {label!r} is not an integer class index like the "
                f"other rows; fix the label or name the classes with label_names= "
                f"(--label-names on the command line)"
            )
        _check_class_count(path, column, names, len(rows), max_classes)
    index = {name: k for k, name in enumerate(names)}
    labels = []
    for (where, label), value in zip(rows, values, strict=True):
        if isinstance(value, str):
            value = index.get(value, -1)
        if not 0 <= value < len(names):
            raise DataFormatError(
                f"{path} {where}: label {label!r} is not one of the classes "
                f"0..{len(names) - 1} ({class_list(names)}); fix the label or pass "
                f"label_names= (--label-names on the command line)"
            )
        labels.append(value)
    return names, labels


def _check_class_count(
    path: Path, column: str, names: Sequence[str], rows: int, max_classes: int | None
) -> None:
    """Refuse inferred classes that are too many to come from a label column."""
    if max_classes is None:
        share = len(names) > MAX_CLASS_SHARE * rows and rows >= MIN_ROWS_FOR_SHARE
        if len(names) <= MAX_CLASSES and not share:
            return
    elif len(names) <= max_classes:
        return
    raise DataFormatError(
        f"{path}: column {column!r} has {len(names)} distinct labels in {rows} rows "
        f"({class_list(names, 3, 30)}); that is not a label column: pass the column of "
        f"the class labels as label_column= (--label-column), or allow more classes with "
        f"max_classes= (--max-classes)"
    )


def split_indices(
    labels: Sequence[int], held_out_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Seeded split of example indices, stratified by label (see
    :func:`train_validation_split`).

    Args:
        labels (sequence of int): the class of each example.
        held_out_fraction (float): share held out, in ``(0, 1)``.
        seed (int, optional): seed of the selection. Default: 0.

    Returns:
        tuple: ``(kept, held_out)`` sorted index lists.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {held_out_fraction}")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    generator = random.Random(seed)
    held_out: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        count = round(held_out_fraction * len(indices))
        count = min(max(count, 1 if len(indices) > 1 else 0), len(indices) - 1)
        held_out.update(generator.sample(indices, count))
    if not held_out:
        raise ValueError(
            f"validation_fraction {held_out_fraction} of {len(labels)} examples holds out "
            f"nothing; use a larger fraction or more examples"
        )
    kept = [i for i in range(len(labels)) if i not in held_out]
    return kept, sorted(held_out)


def train_validation_split(
    examples: Sequence[LabelledText], validation_fraction: float, seed: int = 0
) -> tuple[list[LabelledText], list[LabelledText]]:
    """Seeded split into training and validation examples, stratified by label.

    Each class contributes ``round(validation_fraction * count)`` examples (at least
    one if it has two or more) to the validation part; both parts keep the file order.

    Args:
        examples (sequence of LabelledText): the examples.
        validation_fraction (float): share held out for validation, in ``(0, 1)``.
        seed (int, optional): seed of the selection. Default: 0.

    Returns:
        tuple: ``(train, validation)`` lists; the same seed gives the same split.

    Examples::

        >>> train, validation = train_validation_split(data.examples, 0.1, seed=0)
    """
    kept, held_out = split_indices([e.label for e in examples], validation_fraction, seed)
    return [examples[i] for i in kept], [examples[i] for i in held_out]


def load_sst2(path: str | os.PathLike[str]) -> list[LabelledText]:
    """Read GLUE SST-2 validation rows ``{"sentence": str, "label": 0/1}`` (JSON lines).

    Args:
        path (str or PathLike): the ``.jsonl`` file.

    Returns:
        list of LabelledText: the examples in file order (1 = positive).
    """
    data = read_labelled(path, text_column="sentence", label_names=SENTIMENT_LABELS)
    return list(data.examples)


def load_rotten_tomatoes(path: str | os.PathLike[str]) -> list[LabelledText]:
    """Read the Rotten Tomatoes snippets (CSV with columns ``text,label``).

    Args:
        path (str or PathLike): the ``.csv`` file.

    Returns:
        list of LabelledText: the examples in file order (1 = positive).
    """
    return list(read_labelled(path, label_names=SENTIMENT_LABELS).examples)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a Hugging Face ``tokenizers`` JSON file (e.g. the GPT-NeoX-20B tokenizer).

    Args:
        path (str or PathLike): the tokenizer ``.json`` file.

    Returns:
        tokenizers.Tokenizer: the tokenizer.
    """
    return Tokenizer.from_file(str(_require(path)))
