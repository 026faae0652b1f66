"""Smoke test of benchmarks/bench_manifold.py at tiny sizes: the JSON's structure, the paired ratios'
arithmetic, and that flowkit's projected solver and flow_matching's ``RiemannianODESolver`` compute the
same samples on the same network. No timing is asserted."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_manifold  # noqa: E402

HAVE_PEER = all(bench_manifold.optional_import(name) is not None for name in ("flow_matching", "torchdiffeq"))


@pytest.fixture(scope="module")
def result():
    cfg = bench_manifold.quick_config()
    cfg.threads = 1
    return cfg, bench_manifold.run_manifold(cfg, log=lambda message: None)


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_both_solvers_keep_the_samples_on_the_sphere_and_agree(result, method):
    _, out = result
    rows = out[method]["contenders"]
    assert rows["flowkit"]["off_sphere"] < 1e-5
    # flow_matching is a peer of the bench extra, not of the dev one that CI installs
    if HAVE_PEER:
        assert rows["flow_matching"]["off_sphere"] < 1e-5
        assert rows["flow_matching"]["max_geodesic_gap"] < 1e-5  # the same scheme, step for step
        seconds = rows["flow_matching"]["seconds"]
        ours = rows["flowkit"]["seconds"]["values"]
        expected = [a / b for a, b in zip(seconds["values"], ours, strict=True)]
        assert seconds["ratio"] == pytest.approx(statistics.median(expected))
    else:
        assert rows["flow_matching"] == {"status": "not installed"}


def test_tables_and_main_write_the_report(tmp_path):
    out = tmp_path / "manifold.json"
    bench_manifold.main(["--quick", "--threads", "1", "--out", str(out)])
    text = out.with_suffix(".md").read_text()
    assert "### rk4" in text and "### euler" in text and "flow_matching / flowkit" in text
