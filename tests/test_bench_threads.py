"""Smoke test of ``benchmarks/bench_threads.py`` at tiny sizes: the JSON's and the table's structure,
the paired slowdowns' arithmetic, and that the competing busy process never outlives a measurement.
No timing is asserted."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from flowkit_devices.backends import default_threads

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_threads  # noqa: E402


@pytest.fixture(scope="module")
def result():
    cfg = bench_threads.quick_config()
    cfg.steps, cfg.warmup, cfg.threads = 5, 0, [1, 2]
    cfg.max_seconds = 1.0  # bounds the test on a loaded machine (2 threads can stall)
    before = torch.get_num_threads()
    out = bench_threads.run_threads(cfg, log=lambda message: None)
    assert torch.get_num_threads() == before  # restored
    return cfg, out


def test_json_structure_and_paired_slowdowns(result):
    cfg, out = result
    json.dumps(out)  # serializable as written
    assert out["machine"]["usable_cpus"] >= 1
    assert len(out["load_average_per_repetition"]) == cfg.reps
    entries = out["examples"]["moons"]
    assert set(entries) == {"1", "2"}
    for threads, entry in entries.items():
        assert entry["torch_threads"] == int(threads)
        idle, loaded = entry["idle"], entry["loaded"]
        assert len(idle["values"]) == len(loaded["values"]) == cfg.reps
        done = idle["steps_done"] + loaded["steps_done"]
        assert len(done) == 2 * cfg.reps and all(1 <= n <= cfg.steps for n in done)
        assert entry["extrapolated"] is any(n < cfg.steps for n in done)
        assert "ratio" not in idle
        ratios = [a / b for a, b in zip(loaded["values"], idle["values"], strict=True)]
        assert loaded["ratios"] == pytest.approx(ratios)
        assert loaded["ratio"] == pytest.approx(statistics.median(ratios))
        assert idle["median"] == pytest.approx(statistics.median(idle["values"]))
        others = entry["other_cpus"]["idle"] + entry["other_cpus"]["loaded"]
        assert len(others) == 2 * cfg.reps
        assert all(value is None or value >= 0 for value in others)


def test_table_lists_every_configuration(result):
    _, out = result
    text = bench_threads.table(out)
    lines = text.splitlines()
    assert lines[0] == (
        "| example | threads | idle s (5 steps) | loaded s (5 steps) | slowdown loaded/idle | others' CPUs |"
    )
    assert lines[2].startswith("| moons | 1 ")  # "1 *" where a measurement was extrapolated
    assert lines[3].startswith("| moons | 2 ")
    assert sum(line.startswith("| moons |") for line in lines) == 2
    extrapolated = any(e["extrapolated"] for e in out["examples"]["moons"].values())
    assert ("extrapolated to 5 steps" in text) is extrapolated
    assert "Measured" in bench_threads.header(out)


def test_the_busy_process_is_killed_on_exit():
    with bench_threads.Burner(limit=60.0, settle=0.0) as burner:
        process = burner.process
        assert process is not None and process.poll() is None  # running
    assert process.returncode is not None  # killed and reaped
    assert burner.process is None
    with pytest.raises(RuntimeError), bench_threads.Burner(limit=60.0, settle=0.0) as burner:
        process = burner.process
        raise RuntimeError("a failing measurement")
    assert process.returncode is not None


def test_main_writes_results_and_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_threads, "HERE", tmp_path)  # where --reference writes reference/threads.*
    out = tmp_path / "results" / "threads.json"
    argv = ["--examples", "vp-dsm", "--threads", "0", "--steps", "3", "--warmup", "0", "--reps", "1"]
    # --max-seconds 0 stops each measurement after one step: the extrapolation is marked.
    result = bench_threads.main([*argv, "--max-seconds", "0", "--reference", "--out", str(out)])
    entry = result["examples"]["vp-dsm"]["0"]  # threads = 0: flowkit's default
    assert entry["torch_threads"] == default_threads()
    assert entry["extrapolated"] is True and entry["idle"]["steps_done"] == [1]
    row = f"| vp-dsm | 0 (default: {default_threads()}) * |"
    for path in (out, tmp_path / "reference" / "threads.json"):
        assert json.loads(path.read_text())["examples"].keys() == {"vp-dsm"}
        text = path.with_suffix(".md").read_text()
        assert text.startswith("Measured ") and row in text and "extrapolated to 3 steps" in text
    assert row in capsys.readouterr().out
