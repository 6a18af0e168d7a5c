"""Several processes and interruptions, through the real command line: two CPU processes
under torchrun (gloo) give exactly the single process's results, and a run killed midway
finishes only its missing shards when run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_helpers import tiny_classifier, write_news_csv

pyarrow = pytest.importorskip("pyarrow", reason="Parquet results need pyarrow ([parquet] extra)")
import pyarrow.parquet as parquet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("CAPTUM_MAMBA_THREADS", None)
    return env


def command(tmp_path: Path, output: str, methods: str, shard_size: int) -> list[str]:
    model = tiny_classifier().save(tmp_path / "tiny.ckpt")
    data = write_news_csv(tmp_path / "news.csv")
    return [
        "attribute",
        *("--model", str(model), "--dataset", str(data)),
        *("--text-column", "body", "--label-column", "topic"),
        *("--methods", methods, "--ig-steps", "4", "--smoothgrad-samples", "2"),
        *("--shard-size", str(shard_size), "--batch-size", "4", "--threads", "1"),
        *("--output-dir", str(tmp_path / output), "--no-progress"),
    ]


def untimed(path: Path) -> list[dict]:
    rows = parquet.read_table(path).to_pylist()
    return [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in rows]


def test_two_torchrun_processes_give_the_single_process_output(tmp_path) -> None:
    methods = "mambalrp,integrated gradients,smoothgrad,random,recency,attention rollout"
    cli = [sys.executable, "-m", "captum_mamba"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "-m", "captum_mamba"]
    runs = {
        "one": subprocess.Popen(
            [*cli, *command(tmp_path, "one", methods, 3)],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "two": subprocess.Popen(
            [*launcher, *command(tmp_path, "two", methods, 3)],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    outputs = {name: run.communicate(timeout=300) for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, outputs[name][1][-2000:]
    # 18 texts in shards of 3: each of the two ranks computed 3 of the 6 shards.
    lines = [line for line in outputs["two"][0].splitlines() if "shard(s) computed" in line]
    assert len(lines) == 2 and all("3 shard(s) computed" in line for line in lines), lines
    assert sum("results:" in line for line in lines) == 1  # rank 0 merged
    one = untimed(tmp_path / "one" / "attributions.parquet")
    two = untimed(tmp_path / "two" / "attributions.parquet")
    assert len(one) == 18 and one == two


def test_a_killed_run_finishes_only_its_missing_shards(tmp_path) -> None:
    arguments = command(tmp_path, "run", "all", 1)
    cli = [sys.executable, "-m", "captum_mamba", *arguments]
    shards = tmp_path / "run" / "shards"
    process = subprocess.Popen(
        cli, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(shards.glob("shard-*.parquet"))) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*.parquet")}
    assert 2 <= len(done) < 18 and not (tmp_path / "run" / "attributions.parquet").exists()
    again = subprocess.run(cli, env=environment(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    expected = f"{18 - len(done)} shard(s) computed, {len(done)} already there, 0 missing"
    assert expected in again.stdout, again.stdout
    for name, stamp in done.items():
        assert (shards / name).stat().st_mtime_ns == stamp  # finished shards kept as they were
    rows = untimed(tmp_path / "run" / "attributions.parquet")
    assert [row["example_id"] for row in rows] == list(range(18))
