r"""Sharded, resumable, multi-process runs over a data set (applications).

A run splits the examples ``0..n-1`` into shards of ``shard_size`` consecutive
examples. Each shard is one file, written atomically (a temporary name, then a rename),
so a finished shard is never half-written and an interrupted run resumes by computing
only the shards without a file. The folder's ``run.json`` records the settings of the
run; resuming with other settings is refused, so shards of two runs never mix.

Processes share the work by shard: process ``r`` of ``W`` takes the shards
``k`` with ``k % W == r``. The assignment depends only on ``W``, so a failed rank is
re-run alone (``--rank r --world-size W``), and a run with any other number of
processes finishes whatever is missing.

Processes are launched by ``torchrun`` (PyTorch's launcher; one or many machines):
:func:`current_process` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the
``torch.distributed`` process group (gloo on CPUs, NCCL on GPUs) whose barrier lets
rank 0 merge the shards after every rank has finished. Without ``torchrun`` a process is
rank 0 of 1, or the rank it is given.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: File with the settings of a run, in its output folder.
RUN_FILE = "run.json"
#: Sub-folder of the shard files.
SHARD_FOLDER = "shards"


class RunSettingsError(ValueError):
    """The output folder holds a run with other settings."""


@dataclass(frozen=True)
class ProcessInfo:
    """This process's part of a multi-process run.

    Args:
        rank (int): rank of this process, ``0 <= rank < world_size``.
        world_size (int): number of processes.
        local_rank (int): rank on this machine (selects the GPU).
        group (bool): whether this process joined a ``torch.distributed`` group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False

    def shards(self, count: int) -> list[int]:
        """The shards of this process among ``count``: ``k % world_size == rank``."""
        return [k for k in range(count) if k % self.world_size == self.rank]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def current_process(
    rank: int | None = None, world_size: int | None = None, device: str = "cpu"
) -> ProcessInfo:
    """This process's rank: given explicitly, or from ``torchrun``'s environment.

    Under ``torchrun`` (``WORLD_SIZE > 1`` and ``MASTER_ADDR`` set) the process joins
    the default ``torch.distributed`` process group (``gloo`` for ``device="cpu"``,
    ``nccl`` for CUDA) with a timeout of a week, so that ranks with more work do not
    make the others' final barrier time out.

    Args:
        rank (int, optional): rank to take (with ``world_size``), e.g. to re-run one
            failed rank alone. Default: None (from the environment, else 0).
        world_size (int, optional): number of processes. Default: None (from the
            environment, else 1).
        device (str, optional): ``"cpu"`` or ``"cuda"``. Default: ``"cpu"``.

    Returns:
        ProcessInfo: rank, world size, local rank, whether a group was joined.

    Raises:
        ValueError: for a rank outside ``0..world_size-1`` or only one of the two.
    """
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size (e.g. --rank 1 --world-size 2), or none")
    if rank is not None and world_size is not None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in 0..world_size-1, got rank {rank} of {world_size}; "
                f"e.g. --rank 1 --world-size 2"
            )
        return ProcessInfo(rank, world_size, _env_int("LOCAL_RANK") or 0)
    env_world = _env_int("WORLD_SIZE") or 1
    env_rank = _env_int("RANK") or 0
    local = _env_int("LOCAL_RANK") or 0
    if env_world <= 1 or "MASTER_ADDR" not in os.environ:
        return ProcessInfo(env_rank if env_world > 1 else 0, env_world, local)
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(days=7))
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), local, group=True)


def barrier(process: ProcessInfo) -> None:
    """Wait for every process of the group (nothing without one)."""
    if process.group:
        import torch.distributed as dist

        dist.barrier()


def finish(process: ProcessInfo) -> None:
    """Leave the process group joined by :func:`current_process` (if any)."""
    if process.group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(process: ProcessInfo, device: str) -> torch.device:
    """The torch device of this process: ``"cuda"`` becomes ``cuda:<local rank>``.

    Args:
        process (ProcessInfo): this process.
        device (str): ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        torch.device: the device.
    """
    if device == "cuda":
        return torch.device("cuda", process.local_rank)
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"--device {device!r} is not a torch device; pass cpu, cuda or cuda:N"
        ) from None
    if chosen.type == "meta":
        raise ValueError("--device meta holds shapes without values; pass cpu, cuda or cuda:N")
    return chosen


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through ``write(temporary_path)`` and rename it into place, so
    that ``path`` is either absent or complete."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


@dataclass(frozen=True)
class ShardLayout:
    """Shards of a run in its output folder.

    Args:
        directory (Path): the output folder.
        count (int): number of examples.
        shard_size (int): examples per shard (the last one may be shorter).
        suffix (str): file suffix of a shard, e.g. ``".parquet"``.
    """

    directory: Path
    count: int
    shard_size: int
    suffix: str

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return -(-self.count // self.shard_size)

    def examples(self, shard: int) -> range:
        """The example indices of ``shard``."""
        return range(shard * self.shard_size, min(self.count, (shard + 1) * self.shard_size))

    def path(self, shard: int) -> Path:
        """File of ``shard``: ``shards/shard-00003-of-00012.parquet``."""
        name = f"shard-{shard:05d}-of-{self.num_shards:05d}{self.suffix}"
        return self.directory / SHARD_FOLDER / name

    def missing(self, shards: Sequence[int] | None = None) -> list[int]:
        """The shards (of ``shards``, default all) that have no file yet."""
        chosen = range(self.num_shards) if shards is None else shards
        return [shard for shard in chosen if not self.path(shard).is_file()]


def _notice(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def discard_bad_shards(
    layout: ShardLayout,
    shards: Sequence[int],
    read_ids: Callable[[Path], list[int]],
    expected_ids: Callable[[int], list[int]],
    notice: Callable[[str], None] = _notice,
) -> list[int]:
    """Delete the files of shards that cannot be read, or do not hold exactly their
    examples, so that they are computed again (a resume never stops at a corrupt
    shard).

    Args:
        layout (ShardLayout): the run's shards.
        shards (sequence of int): the shards to check (those without a file are skipped).
        read_ids (Callable): ``read_ids(path) -> example ids`` of a shard file; any
            exception means the file is unreadable.
        expected_ids (Callable): ``expected_ids(shard) -> example ids`` it should hold.
        notice (Callable, optional): prints the one-line notice naming each deleted
            file. Default: a line on stderr.

    Returns:
        list of int: the shards whose files were deleted.
    """
    discarded = []
    for shard in shards:
        path = layout.path(shard)
        if not path.is_file():
            continue
        try:
            found = read_ids(path)
        except Exception as error:  # any reader's error: the file is not usable
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            problem = f"cannot be read ({type(error).__name__}: {reason})"
        else:
            wanted = expected_ids(shard)
            problem = (
                ""
                if list(found) == list(wanted)
                else (f"holds {len(found)} examples, not its {len(wanted)} examples in order")
            )
        if problem:
            notice(f"{path} {problem}; computing it again")
            path.unlink()
            discarded.append(shard)
    return discarded


def check_once(ids: Sequence[int], count: int, what: str) -> None:
    """Check that merged results hold ``count`` examples, each exactly once.

    Args:
        ids (sequence of int): the example ids found.
        count (int): the number of examples of the run.
        what (str): the results, for the message.

    Raises:
        ValueError: naming an example found twice, or the counts.
    """
    seen: set[int] = set()
    for example in ids:
        if example in seen:
            raise ValueError(
                f"{what} holds example {example} twice; delete the shards folder's files of "
                f"other runs and run the command again"
            )
        seen.add(example)
    if len(seen) != count:
        raise ValueError(f"{what} holds {len(seen)} examples, not {count}; run it again")


def prepare_directory(
    directory: str | os.PathLike[str],
    settings: dict[str, Any],
    overwrite: bool = False,
    outputs: Sequence[str] = (),
) -> Path:
    """Create the output folder of a run, or check that it holds the same run.

    Args:
        directory (str or PathLike): the output folder.
        settings (dict): JSON-serialisable settings of the run (everything its
            results depend on).
        overwrite (bool, optional): delete the shards and results of another run
            there instead of refusing. Default: False.
        outputs (sequence of str, optional): names of result files in the folder,
            deleted with the shards when another run is replaced. Default: none.

    Returns:
        Path: the folder.

    Raises:
        RunSettingsError: if the folder holds a run with other settings (naming the
            settings that differ).
        NotADirectoryError: if ``directory`` is a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; pass a folder as the output directory")
    run_file = directory / RUN_FILE
    wanted = json.loads(json.dumps(settings))
    if run_file.is_file():
        try:
            found = json.loads(run_file.read_text())
        except ValueError:
            found = {"unreadable": str(run_file)}
        if found != wanted:
            if not overwrite:
                keys = sorted(k for k in {*found, *wanted} if found.get(k) != wanted.get(k))
                raise RunSettingsError(
                    f"{directory} holds a run with other settings ({', '.join(keys)} differ); "
                    f"pass another output directory, or --overwrite to replace it"
                )
            for shard in sorted((directory / SHARD_FOLDER).glob("shard-*")):
                shard.unlink()
            for name in outputs:
                (directory / name).unlink(missing_ok=True)
    (directory / SHARD_FOLDER).mkdir(parents=True, exist_ok=True)
    write_atomic(run_file, lambda path: path.write_text(json.dumps(wanted, indent=2) + "\n"))
    return directory
