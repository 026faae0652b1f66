"""Smoke test of benchmarks/bench_discrete.py at tiny sizes: the JSON's structure and the paired
ratios' arithmetic. No timing is asserted (tests/test_discrete.py checks that the samplers agree)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_discrete  # noqa: E402

HAVE_FLOW_MATCHING = bench_discrete.optional_import("flow_matching") is not None


def test_the_quick_benchmark_pairs_flow_matching_with_flowkit(tmp_path):
    out = tmp_path / "discrete.json"
    result = bench_discrete.main(["--quick", "--out", str(out)])
    rows = result["contenders"]
    ours = rows["flowkit discrete-euler"]["seconds"]
    assert "ratio" not in ours and len(ours["values"]) == 2
    peer = "flow_matching MixtureDiscreteEulerSolver"
    # flow_matching is a peer of the bench extra, not of the dev one that CI installs
    assert (peer in rows) == HAVE_FLOW_MATCHING
    if HAVE_FLOW_MATCHING:
        theirs = rows[peer]["seconds"]
        ratios = [a / b for a, b in zip(theirs["values"], ours["values"], strict=True)]
        assert theirs["ratio"] == statistics.median(ratios)
        assert f"| {peer} | 64 | 4 |" in bench_discrete.table(result)
    assert out.exists() and out.with_suffix(".md").exists()
