"""Smoke test of benchmarks/bench_likelihood.py at tiny sizes: the JSON's structure, the paired
ratios' arithmetic, and that every contender computes the same log-likelihoods. No timing is asserted."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_likelihood  # noqa: E402

HAVE_FLOW_MATCHING = bench_likelihood.optional_import("flow_matching") is not None


@pytest.fixture(scope="module")
def result():
    cfg = bench_likelihood.quick_config()
    cfg.threads = 1
    return cfg, bench_likelihood.run_likelihood(cfg, log=lambda message: None)


def test_every_contender_computes_the_same_log_likelihood(result):
    cfg, out = result
    rows = out["euler"]["contenders"]
    assert set(rows) == {"raw", "flowkit", "flow_matching"}
    assert rows["raw"]["max_abs_diff_vs_raw"] == 0.0
    assert rows["flowkit"]["max_abs_diff_vs_raw"] < 1e-4  # same grid, same operations
    # flow_matching is a peer of the bench extra, not of the dev one that CI installs
    if HAVE_FLOW_MATCHING:  # its grid starts at 1.0 rather than the OT path's 1 - 1e-5
        assert rows["flow_matching"]["max_abs_diff_vs_raw"] < 1e-2
    else:
        assert rows["flow_matching"] == {"status": "not installed"}
    for row in rows.values():
        assert row.get("nfe", cfg.steps) == cfg.steps
    # Euler with 4 steps is far from the reference; dopri5 is close to it
    assert abs(rows["flowkit"]["error_of_mean_vs_reference"]) > 1e-3
    adaptive = out["dopri5"]["contenders"]
    assert abs(adaptive["flowkit"]["error_of_mean_vs_reference"]) < 1e-4
    assert (adaptive["flowkit"]["nfe"] - 2) % 6 == 0


def test_ratios_are_paired_medians_and_the_tables_show_them(result):
    cfg, out = result
    rows = out["euler"]["contenders"]
    raw = rows["raw"]["seconds"]["values"]
    flowkit = rows["flowkit"]["seconds"]
    assert len(raw) == len(flowkit["values"]) == cfg.reps
    ratios = [a / b for a, b in zip(flowkit["values"], raw, strict=True)]
    assert flowkit["ratio"] == pytest.approx(statistics.median(ratios))
    text = bench_likelihood.tables(out)
    assert f"Euler {cfg.steps} steps, n = {cfg.n}" in text
    assert "| flowkit |" in text and "### dopri5" in text and "| flow_matching |" in text
    assert out["machine"]["torch_threads"] == 1 and "load_average_after" in out["machine"]


def test_main_writes_json_and_markdown(tmp_path):
    out = tmp_path / "likelihood.json"
    bench_likelihood.main(["--quick", "--threads", "1", "--no-dopri5", "--no-peers", "--out", str(out)])
    assert out.is_file() and out.with_suffix(".md").read_text().startswith("### Exact-divergence")
