"""Smoke tests of the benchmark command and the peak-memory measurement (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captum_mamba.adapters import family_statuses
from captum_mamba.apps import benchmark
from captum_mamba.apps.cli import benchmark_settings, main, parser
from captum_mamba.apps.study import MEMORY_METHODS, measure_peak_memory, parse_shape


@pytest.mark.slow
def test_quick_benchmark_writes_tables_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "benchmark",
            "--quick",
            "--lengths",
            "24",
            "--long-lengths",
            "--saliency-cap",
            "0",
            "--hf-max-length",
            "0",
            "--compare-length",
            "0",
            "--generation",
            "--throughput",
            "--thread-counts",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["length"] for row in results["lengths"]] == [24]
    row = results["lengths"][0]
    assert row["lrp"] > 0 and row["forward_rules"] > 0 and row["forward_hf"] is None
    assert results["compare"] == []
    generation = results["generation"]
    assert generation["tokens"] == 4 and generation["generate"] > 0
    assert generation["before_explain"] > 0 and generation["explain"] > 0
    assert [r["batch_size"] for r in results["throughput"]] == [1, 4]
    assert all(r["tokens_per_s"] > 0 for r in results["throughput"])
    assert (tmp_path / "scaling.png").stat().st_size > 0
    tables = (tmp_path / "tables.md").read_text()
    assert "| tokens | path | MambaLRP s |" in tables and tables.strip() in printed
    assert "generate + explain" in tables and "tokens/s" in tables


def test_markdown_of_saliency_cap_and_paths() -> None:
    row = dict(
        length=1024,
        lean=True,
        lrp=2.0,
        lrp_mib=100.0,
        forward_rules=1.0,
        forward_rules_mib=10.0,
        forward_hf=None,
        saliency=None,
        saliency_note=">300 (cap)",
    )
    table = benchmark.markdown_tables({"lengths": [row]})
    assert (
        "| 1024 | lean | 2.00 | 1.95 | 100 | 0.098 | 1.00 | 10 | - | 2.00 | >300 (cap) |" in table
    )
    assert table.endswith("> 150.0x |")


def test_peak_memory_of_the_lean_path() -> None:
    lean = measure_peak_memory("mambalrp-lean", 256, shape="tiny", repeats=2)
    assert lean["lean"] is False  # 256 tokens: the automatic choice would be fast
    assert lean["seconds"] > 0 and lean["peak_rss_mib"] >= lean["before_call_rss_mib"]
    assert lean["method"] == "mambalrp-lean" and lean["length"] == 256
    assert set(MEMORY_METHODS) >= {"mambalrp-fast", "mambalrp-lean", "forward-rules"}
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        measure_peak_memory("lime", 8, shape="tiny")


def test_shapes() -> None:
    assert parse_shape("130m") == (768, 24, 16, 50280)
    assert parse_shape("8,2,4,32") == (8, 2, 4, 32)
    with pytest.raises(ValueError, match="hidden,layers,state,vocab"):
        parse_shape("big")


@pytest.mark.slow
def test_hybrid_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--lengths", "--hybrid-lengths", "16", "--threads", "1", "--saliency-cap", "0"]
    main(["benchmark", *options, "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["hybrids"]
    assert [(row["family"], row["length"]) for row in rows] == [("bamba", 16), ("jamba", 16)]
    for row in rows:
        assert row["lrp"] > 0 and row["forward"] > 0 and row["lrp_mib"] >= 0
        assert row["ratio"] == pytest.approx(row["lrp"] / row["forward"], abs=0.051)
    tables = (tmp_path / "tables.md").read_text()
    assert "| model | tokens | MambaLRP s |" in tables and "| Jamba-shaped | 16 |" in tables
    assert tables.strip() in capsys.readouterr().out


def test_hybrid_options_reach_the_settings() -> None:
    options = ["benchmark", "--hybrids", "bamba", "--hybrid-lengths", "1024", "4096"]
    settings = benchmark_settings(parser().parse_args(options))
    assert settings.hybrids == ("bamba",) and settings.hybrid_lengths == (1024, 4096)
    assert benchmark.BenchmarkSettings().hybrid_lengths == ()


def test_family_timings_on_a_tiny_lfm2(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--families``: one row per family and length, and its table."""
    status = {s.adapter: s for s in family_statuses()}["captum_mamba.adapters.hf_lfm2"]
    if not status.available:
        pytest.skip(status.describe())
    config, model, fields = benchmark.FAMILY_MODELS["lfm2"]
    tiny = dict(fields, hidden_size=16, intermediate_size=24, num_attention_heads=4)
    tiny.update(num_key_value_heads=2, vocab_size=64)
    monkeypatch.setitem(benchmark.FAMILY_MODELS, "lfm2", (config, model, tiny))
    settings = benchmark.BenchmarkSettings(families=("lfm2",), family_lengths=(8, 16), repeats=1)
    rows = benchmark.measure_families(settings, progress=lambda _: None)
    assert [(r["family"], r["length"]) for r in rows] == [("lfm2", 8), ("lfm2", 16)]
    assert all(r["mambalrp"] > 0 and r["forward"] > 0 for r in rows)
    table = benchmark.markdown_tables({"families": rows})
    assert table.splitlines()[0].startswith("| family | tokens | MambaLRP s | forward s")
    assert len(table.splitlines()) == 4


def test_many_targets_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "benchmark", "--quick", "--lengths", "--long-lengths", "--compare-length", "0",
            "--targets", "1", "3", "--targets-length", "8", "--repeats", "1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "8 tokens; one backward pass per target (through one forward pass) measured at" in out
    assert "| targets K | backward | one call, K targets: s | s per target | peak MiB |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert len(rows) == 2 and all(row.endswith("x |") for row in rows)
    assert "| per target: one target |" in rows[0]
    assert "| batched: 3 targets in 1 pass |" in rows[1]
