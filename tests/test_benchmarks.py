"""Smoke tests of the benchmark scripts at tiny sizes: the JSON's structure, the ratios' arithmetic,
and that every contender computes the same samples. No timing is asserted."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_ddp  # noqa: E402
import bench_oracle  # noqa: E402
import bench_quality  # noqa: E402
import bench_speed  # noqa: E402
import speed_contenders  # noqa: E402
import speed_tables  # noqa: E402
import workloads  # noqa: E402
from harness import clocks, lockstep, machine, schedules, stats  # noqa: E402
from harness import report as harness_report  # noqa: E402


def test_summarize_pairs_ratios_by_repetition():
    out = stats.summarize([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert out["median"] == 3.0
    assert out["ratios"] == [2.0, 3.0, 1.0]
    assert out["ratio"] == 2.0  # median of the paired ratios
    assert out["ratio_of_medians"] == pytest.approx(3.0 / 2.0)
    assert "ratio" not in stats.summarize([1.0], None)
    with pytest.raises(ValueError, match="as many values: 2 vs 1"):
        stats.paired_ratios([1.0, 2.0], [1.0])


def test_rotate_starts_each_repetition_with_another_contender():
    assert [schedules.rotate("abc", k) for k in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_raw_moons_match_flowkit_moons():
    from flowkit_data.toy import Moons

    raw = workloads.raw_moons(500, torch.Generator().manual_seed(3), torch.device("cpu"))
    flowkit = Moons().sample(500, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(raw, flowkit)


def test_a_folder_as_the_speed_output_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_speed.parse_args(["--out", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"--out {tmp_path}: a folder; give the JSON file to write, e.g. --out {tmp_path / 'speed.json'}"
        in err
    )


@pytest.fixture(scope="module")
def speed():
    cfg = bench_speed.quick_config()
    cfg.threads, cfg.batches, cfg.block_steps, cfg.train_reps = 1, [16], [2], 2
    cfg.sample_n, cfg.sample_reps, cfg.sample_steps = 32, 2, {"euler": 3, "heun": 2, "euler-maruyama": 3}

    def partial(result):
        latest = result["sample"] or result["train"]
        raw = latest[list(latest)[-1]]["contenders"]["raw"]
        blocks = len(raw["seconds" if result["sample"] else "steps_per_s"]["values"])
        PARTIAL.append((list(result["train"]), list(result["sample"]), blocks, result["complete"]))

    return cfg, bench_speed.run_speed(cfg, log=lambda message: None, partial=partial)


PARTIAL: list[tuple[list[str], list[str], int, bool]] = []


def test_speed_results_are_handed_over_after_every_repetition(speed):
    # main() writes them each time, so a run stopped under heavy load keeps what it measured: after
    # each repetition, the workload so far (two repetitions a workload here)
    _, result = speed
    assert PARTIAL == [
        (["16"], [], 1, False),
        (["16"], [], 2, False),
        (["16"], ["euler"], 1, False),
        (["16"], ["euler"], 2, False),
        (["16"], ["euler", "heun"], 1, False),
        (["16"], ["euler", "heun"], 2, False),
        (["16"], ["euler", "heun", "euler-maruyama"], 1, False),
        (["16"], ["euler", "heun", "euler-maruyama"], 2, False),
    ]
    assert result["complete"] is True


def test_speed_json_structure_and_ratios(speed):
    cfg, result = speed
    json.dumps(result)  # serializable as written
    assert result["machine"]["torch_threads"] == 1
    contenders = result["train"]["16"]["contenders"]
    assert cfg.schedule == "lockstep"
    for key in ("steps_per_s", "steps_per_cpu_s"):
        raw = contenders["raw"][key]
        # in lockstep the raw loop runs once a repetition, beside every other contender
        assert len(raw["values"]) == cfg.train_reps and "ratio" not in raw
        for name in ("flowkit", "flowkit+ema", "torchcfm", "flow_matching"):
            entry = contenders[name]
            if entry["status"] != "ok":
                assert entry["status"] == "not installed"
                continue
            rates = entry[key]
            assert len(rates["values"]) == len(rates["reference_values"]) == cfg.train_reps
            # each paired with the raw loop of its own repetition
            assert rates["reference_values"] == raw["values"]
            expected = [a / b for a, b in zip(rates["values"], rates["reference_values"], strict=True)]
            assert rates["ratios"] == pytest.approx(expected)
            assert rates["ratio"] == pytest.approx(statistics.median(expected))
            assert entry["peak_mib"] is None or entry["peak_mib"] >= 0


def test_every_sampler_computes_the_same_samples(speed):
    cfg, result = speed
    assert set(result["sample"]) == {"euler", "heun", "euler-maruyama"}
    for simulator, entry in result["sample"].items():
        steps = cfg.sample_steps[simulator]
        raw = entry["contenders"]["raw"]
        assert raw["network_evals"] == (2 * steps if simulator == "heun" else steps)
        assert entry["contenders"]["flowkit"]["status"] == "ok"
        for name, c in entry["contenders"].items():
            if c["status"] != "ok":
                continue
            # Same x_0, same grid (up to flowkit's t_end = 1 - 1e-5), same noise for EM.
            assert c["max_abs_diff_vs_raw"] < 1e-4, (simulator, name)
            assert len(c["seconds"]["values"]) == len(c["cpu_seconds"]["values"]) == cfg.sample_reps
            if name != "raw":
                assert c["samples_per_s"]["ratio"] > 0
        if simulator != "euler-maruyama":
            assert entry["contenders"]["flowkit"]["network_evals"] == raw["network_evals"]


def test_speed_tables_list_every_contender(speed):
    _, result = speed
    text = speed_tables.tables(result)
    assert "| 16 | flowkit |" in text
    assert "| euler-maruyama (3 steps) | raw |" in text
    assert "no such solver" in text or "not installed" in text


def test_quality_oracle_converges_and_writes_outputs(tmp_path):
    cfg = bench_quality.QualityConfig(threads=1, steps=[1, 16], n=256, models=["oracle"], simulators=["heun"])
    result = bench_quality.run_quality(cfg, log=lambda message: None)
    points = result["models"]["oracle"]["simulators"]["heun"]
    assert [p["steps"] for p in points] == [1, 16]
    assert [p["drift_evals"] for p in points] == [2, 32]
    # Heun on the exact field: one step is far off, sixteen reach the sampling noise floor.
    assert points[0]["distance"] > 1.5 * points[1]["distance"]
    assert points[1]["distance"] < 1.5 * points[1]["noise_floor"]
    png = bench_quality.plot(result, tmp_path / "quality.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| oracle | heun | 16 | 32 |" in bench_quality.table(result)


def test_quality_trained_model_uses_the_trained_weights():
    cfg = bench_quality.QualityConfig(
        threads=1, train_steps=10, batch_size=32, steps=[2], n=64, models=["trained"], simulators=["euler"]
    )
    result = bench_quality.run_quality(cfg, log=lambda message: None)
    entry = result["models"]["trained"]
    assert entry["final_loss"] is not None and entry["final_loss"] > 0
    assert entry["simulators"]["euler"][0]["network_evals"] == 2


def test_oracle_benchmark_structure_and_ratios():
    cfg = bench_oracle.quick_config()
    result = bench_oracle.run_oracle(cfg, log=lambda message: None)
    json.dumps(result)
    entries = result["contenders"]
    assert set(entries) == {"mlp", "oracle", "oracle, per-sample t"}
    mlp = entries["mlp"]["seconds_per_call"]
    assert len(mlp["values"]) == cfg.reps and "ratio" not in mlp
    for name in ("oracle", "oracle, per-sample t"):
        seconds = entries[name]["seconds_per_call"]
        expected = [a / b for a, b in zip(seconds["values"], mlp["values"], strict=True)]
        assert seconds["ratios"] == pytest.approx(expected)
        assert seconds["ratio"] == pytest.approx(statistics.median(expected))
    assert "| oracle, per-sample t | 64 |" in bench_oracle.table(result)


def test_flowkit_contenders_run_on_the_configured_threads(tmp_path):
    # The CPU backend sets torch's process-wide thread count when it is built; the benchmark must give
    # it --threads, or every contender built after it runs on flowkit's default (half the cores).
    before = torch.get_num_threads()
    try:
        cfg = bench_speed.quick_config()
        cfg.threads = 3
        torch.set_num_threads(3)
        speed_contenders.FlowkitTrainer(16, cfg, tmp_path)
        assert torch.get_num_threads() == 3
        speed_contenders.FlowkitSampler("euler", cfg, tmp_path)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_paired_ratios_report_their_interquartile_range_and_two_runs_compare():
    summary = stats.summarize([2.0, 4.0, 6.0, 8.0, 10.0], [2.0, 2.0, 2.0, 2.0, 2.0])
    assert summary["ratio"] == 3.0
    assert summary["ratio_iqr"] == [2.0, 4.0]  # inclusive quartiles of 1, 2, 3, 4, 5
    assert stats.summarize([1.0], [1.0])["ratio_iqr"] is None

    def result(cpu, wall):
        rates = {"steps_per_s": {"ratio": wall}, "steps_per_cpu_s": {"ratio": cpu}}
        return {"train": {"256": {"contenders": {"flowkit": {"status": "ok", **rates}}}}}

    text = speed_tables.compare(result(1.0, 1.0), result(1.02, 0.9))
    assert "| train 256 flowkit | 1 | 1.02 | +2.0% | 1 | 0.9 | -10.0% |" in text
    assert "cpu: largest difference 2.0% (train 256 flowkit); 0 of 1 rows differ by more than 3%" in text
    assert "wall: largest difference 10.0% (train 256 flowkit); 1 of 1 rows differ by more than 3%" in text
    assert speed_tables.ratios(result(1.02, 0.9), "cpu") == {"train 256 flowkit": 1.02}
    assert speed_tables.ratios(result(1.02, 0.9), "wall") == {"train 256 flowkit": 0.9}


def test_timings_carry_every_clock_and_pair_ratios_on_each():
    start, end = clocks.Timing(10.0, 1.0, 1.5), clocks.Timing(12.0, 2.0, 2.5)
    assert end - start == clocks.Timing(2.0, 1.0, 1.0)
    assert (end - start).scaled(0.5) == clocks.Timing(1.0, 0.5, 0.5)
    # Two blocks of 10 steps: the contender waited for a core in the second (wall 4 s, CPU 1 s).
    mine = [clocks.Timing(1.0, 1.0, 1.0), clocks.Timing(4.0, 1.0, 1.0)]
    raw = [clocks.Timing(2.0, 2.0, 2.0), clocks.Timing(2.0, 2.0, 2.0)]
    rates = stats.summarize_clocks(mine, raw, 10)
    assert rates["cpu"]["values"] == [10.0, 10.0] and rates["cpu"]["ratios"] == [2.0, 2.0]
    assert rates["wall"]["ratios"] == [2.0, 0.5] and rates["wall"]["ratio"] == 1.25
    assert "ratio" not in stats.summarize_clocks(raw, None, 10)["cpu"]
    # The share of the process's CPU time that ran on other threads than the timing one.
    timings = [clocks.Timing(1.0, 1.0, 1.0), clocks.Timing(1.0, 0.9, 1.2)]
    assert stats.off_thread(timings) == pytest.approx(0.25)
    assert stats.off_thread([]) is None
    assert clocks.primary_clock(torch.device("cpu")) == "cpu"
    assert clocks.primary_clock(torch.device("cuda")) == "wall"


def test_sandwich_runs_the_reference_around_every_block_and_pairs_with_its_neighbours():
    order = []

    def work(name):
        order.append(name)
        return clocks.Timing(len(order), 2.0 * len(order), 0.0)

    timings, paired = schedules.sandwich({"r": "r", "a": "a", "b": "b"}, "r", 2, work)
    assert order == ["r", "a", "r", "b", "r", "b", "r", "a", "r"]
    assert [t.wall for t in timings["r"]] == [1, 3, 5, 7, 9]
    assert [t.wall for t in timings["a"]] == [2, 8] and [t.wall for t in timings["b"]] == [4, 6]
    # each block's reference: the mean of the reference blocks just before and after it, every clock
    assert paired["a"] == [clocks.Timing(2.0, 4.0, 0.0), clocks.Timing(8.0, 16.0, 0.0)]
    assert paired["b"] == [clocks.Timing(4.0, 8.0, 0.0), clocks.Timing(6.0, 12.0, 0.0)]
    assert "r" not in paired


def test_interleave_rotates_the_contenders_and_pairs_by_repetition():
    order = []

    def work(name):
        order.append(name)
        return clocks.Timing(len(order), 0.0, 0.0)

    out = schedules.interleave({"a": "a", "b": "b", "c": "c"}, 2, work)
    assert order == ["a", "b", "c", "b", "c", "a"]
    assert [t.wall for t in out["a"]] == [1, 6] and [t.wall for t in out["b"]] == [2, 4]


def test_speed_results_give_both_clocks_and_the_off_thread_share(speed):
    _, result = speed
    assert result["clock"] == "cpu"
    for section, keys in speed_tables.RATE_KEYS.items():
        for entry in result[section].values():
            for c in entry["contenders"].values():
                if c["status"] != "ok":
                    continue
                assert set(keys.values()) <= set(c)
                assert len(c[keys["cpu"]]["values"]) == len(c[keys["wall"]]["values"])
                assert c["off_thread"] is not None
    text = speed_tables.tables(result)
    assert "× raw, CPU (paired median)" in text and "IQR, wall" in text


def test_the_fast_samplers_get_more_small_step_counts_and_a_plateau_row():
    assert bench_quality.steps_for("heun", [1, 8, 64]) == [1, 8, 64]
    assert bench_quality.steps_for("edm", [1, 8, 64]) == [1, 3, 5, 6, 8, 64]
    assert bench_quality.steps_for("dpm-solver++ (karras)", [1, 4]) == [1, 3, 4]

    def point(steps, evals, distance):
        return {"steps": steps, "network_evals": evals, "distance": distance}

    result = {
        "models": {
            "trained": {
                "simulators": {
                    "heun": [point(4, 8, 0.2), point(64, 128, 0.1)],
                    "dpm-solver++": [point(4, 4, 0.2), point(8, 8, 0.109), point(16, 16, 0.1)],
                    "euler": [point(8, 8, 0.5)],
                }
            }
        }
    }
    text = bench_quality.plateau_summary(result)
    # within 1.1x of Heun's W2 at its most steps (0.1): dpm-solver++ at 8 evaluations, heun at 128
    assert "| trained | dpm-solver++ | 0.1 | 8 | 0.109 | 1.09 |" in text
    assert "| trained | heun | 0.1 | 128 | 0.1 | 1 |" in text
    assert "| trained | euler | 0.1 | not reached | – | – |" in text


def _ddp_args(**sizes: int) -> argparse.Namespace:
    return argparse.Namespace(**{"batch": 16, "steps": 3, "warmup": 1, "reps": 2, "threads": 1, **sizes})


def test_ddp_bench_pairs_each_configuration_with_one_process_in_rotated_order():
    calls: list[tuple[int, int]] = []
    rates = {(1, 1): [10.0, 20.0], (1, 2): [15.0, 20.0], (2, 1): [30.0, 50.0]}

    def measure(nproc: int, threads: int, args: argparse.Namespace) -> float:
        calls.append((nproc, threads))
        return rates[nproc, threads][len([c for c in calls if c == (nproc, threads)]) - 1]

    record = bench_ddp.run_ddp(_ddp_args(), measure=measure, log=lambda message: None)
    json.dumps(record)  # serializable as written
    # Each repetition runs every configuration once, the second starting with the next one.
    assert calls == [(1, 1), (1, 2), (2, 1), (1, 2), (2, 1), (1, 1)]
    one, two = record["results"]["1 proc x 1 thread"], record["results"]["2 procs x 1 thread"]
    assert one == {"steps_per_s": [10.0, 20.0], "median": 15.0, "ratio_to_1x1": 1.0}
    assert two["steps_per_s"] == [30.0, 50.0] and two["median"] == 40.0
    assert two["ratio_to_1x1"] == pytest.approx(statistics.median([30.0 / 10.0, 50.0 / 20.0]))
    threads = record["results"]["1 proc x 2 threads"]
    assert threads["ratio_to_1x1"] == pytest.approx(statistics.median([1.5, 1.0]))
    assert (record["batch"], record["steps"], record["reps"]) == (16, 3, 2)
    text = bench_ddp.report(record)
    assert "global batch 16, 3 steps x 2 reps" in text
    assert "| 2 procs x 1 thread | 40.0 | 2.75 |" in text


@pytest.mark.slow
def test_ddp_bench_measures_two_gloo_ranks_under_torchrun():
    # The one torchrun launch: the worker as two ranks (flowkit's process group, the timing barriers,
    # leaving the group), rank 0's JSON line parsed into steps/s.
    assert bench_ddp.measure(2, 1, _ddp_args()) > 0


class _Counted(torch.nn.Module):
    """A network that records which lockstep contender called it, in call order; ``work`` seconds
    of a stand-in clock pass in each call."""

    def __init__(self, calls: list[str], clock: list[float] | None = None, work: float = 0.0) -> None:
        super().__init__()
        self.calls, self.clock, self.work = calls, clock, work

    def forward(self, name: str) -> None:
        self.calls.append(name)
        if self.clock is not None:
            self.clock[0] += self.work


def test_lockstep_hands_the_turn_over_at_every_network_call_in_rotation():
    calls: list[str] = []
    shared, own = _Counted(calls), _Counted(calls)
    steps = lockstep.Lockstep()
    handles = [steps.attach(shared), steps.attach(own)]

    def contender(name, network, n):
        def work():
            for _ in range(n):
                network(name)
            return name.upper()

        return work

    # "c" calls its network twice only: it leaves the rotation and the others go on in turns
    works = {"a": contender("a", shared, 4), "b": contender("b", own, 4), "c": contender("c", shared, 2)}
    out = steps.run(works)
    assert out == {"a": "A", "b": "B", "c": "C"}
    assert calls == ["a", "b", "c", "a", "b", "c", "a", "b", "a", "b"]
    assert steps.turns == {"a": 4, "b": 4, "c": 2}
    for handle in handles:
        handle.remove()
    shared("main")  # outside a lockstep thread the hook does nothing, and once removed nothing at all
    assert calls[-1] == "main"


def test_lockstep_clocks_count_only_the_turns_a_thread_held(monkeypatch):
    # a stand-in for every clock: it advances only inside the networks' calls (one thread at a time)
    now = [0.0]
    monkeypatch.setattr(clocks, "read_clocks", lambda: clocks.Timing(now[0], now[0], now[0]))
    calls: list[str] = []
    slow, fast = _Counted(calls, now, work=1.0), _Counted(calls, now, work=0.0)
    steps = lockstep.Lockstep()
    steps.attach(slow), steps.attach(fast)

    def work(network, name):
        def block():
            start = clocks.stamp()
            for _ in range(10):
                network(name)
            return clocks.stamp() - start

        return block

    out = steps.run({"slow": work(slow, "slow"), "fast": work(fast, "fast")})
    # "fast" waited through ten turns of "slow" (10 s on the stand-in clock): its seconds leave them
    # out, on every clock; read from outside a lockstep thread, the plain clock has all 10
    assert out == {"slow": clocks.Timing(10.0, 10.0, 10.0), "fast": clocks.Timing(0.0, 0.0, 0.0)}
    assert clocks.stamp() == clocks.Timing(10.0, 10.0, 10.0)


def test_lockstep_raises_a_contenders_error_after_the_others_finish():
    calls: list[str] = []
    network = _Counted(calls)
    steps = lockstep.Lockstep()
    steps.attach(network)

    def fails():
        network("x")
        raise RuntimeError("contender x broke")

    def fine():
        for _ in range(3):
            network("y")

    with pytest.raises(RuntimeError, match="contender x broke"):
        steps.run({"x": fails, "y": fine})
    assert calls == ["x", "y", "y", "y"]


def test_lockstep_hook_survives_a_deep_copy_of_the_network():
    # flowkit's EMA deep-copies the model inside the timed thread: the hook must not copy the lockstep
    calls: list[str] = []
    network = _Counted(calls)
    steps = lockstep.Lockstep()
    steps.attach(network)
    twin = copy.deepcopy(network)
    twin("copy")
    assert twin.calls == ["copy"] and twin._forward_pre_hooks


def test_repetitions_pair_each_contender_with_the_raw_loop_of_the_same_lockstep_run():
    calls: list[str] = []
    networks = {name: _Counted(calls) for name in ("raw", "a", "b")}

    def work(name):
        start = clocks.stamp()
        for _ in range(2):
            networks[name](name)
        return clocks.stamp() - start

    cpu = torch.device("cpu")
    timings, paired = schedules.repetitions(
        {n: n for n in networks}, list(networks.values()), "lockstep", cpu, 3, work, log=lambda message: None
    )
    # each repetition runs all three in turns, the order rotated: raw a b | a b raw | b raw a
    assert calls == ["raw", "a", "b"] * 2 + ["a", "b", "raw"] * 2 + ["b", "raw", "a"] * 2
    assert paired["a"] == timings["raw"] and paired["b"] == timings["raw"] and "raw" not in paired
    assert all(not network._forward_pre_hooks for network in networks.values())  # hooks removed
    # the sandwich schedule: one block after another, each between two raw blocks, no turns taken
    calls.clear()
    _, paired = schedules.repetitions({n: n for n in networks}, [], "sandwich", cpu, 1, work, print)
    assert calls == ["raw"] * 2 + ["a"] * 2 + ["raw"] * 2 + ["b"] * 2 + ["raw"] * 2
    with pytest.raises(ValueError, match="schedule 'fifo': choose one of lockstep, sandwich"):
        schedules.repetitions({}, [], "fifo", cpu, 1, work, print)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_speed_run_is_pinned_to_its_threads_cpus_and_restored(speed):
    _, result = speed
    allowed = sorted(os.sched_getaffinity(0))
    assert result["machine"]["pinned_cpus"] == allowed[-1:]  # one thread: the last CPU
    with machine.pinned(1) as cpus:
        assert cpus == allowed[-1:] and sorted(os.sched_getaffinity(0)) == cpus
    with machine.pinned(1, cpus=allowed[:1]) as cpus:
        assert sorted(os.sched_getaffinity(0)) == allowed[:1]
    assert sorted(os.sched_getaffinity(0)) == allowed  # restored, after the run too


def test_a_run_stopped_after_its_first_repetition_leaves_a_json_that_compares(tmp_path, monkeypatch, capsys):
    out = tmp_path / "speed.json"
    written = []

    def write_then_stop(path, result):  # the first write comes after the first repetition: Ctrl-C there
        harness_report.write_json(path, result)
        written.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_speed, "write_json", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bench_speed.main(["--quick", "--no-peers", "--no-memory", "--out", str(out)])
    assert written == [out] and sorted(p.name for p in tmp_path.iterdir()) == ["speed.json"]  # no temp left
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["complete"] is False and list(result["train"]) == ["32"] and result["sample"] == {}
    flowkit = result["train"]["32"]["contenders"]["flowkit"]["steps_per_cpu_s"]
    assert len(flowkit["values"]) == len(flowkit["ratios"]) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        bench_speed.main(["--compare", str(out), str(out)])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert "| train 32 flowkit | " in printed and "| train 32 flowkit+ema | " in printed
    assert "cpu: largest difference 0.0%" in printed and "0 of 2 rows differ by more than 3%" in printed


def test_compare_reads_the_reference_jsons_as_their_recorded_comparison(capsys):
    reference = BENCHMARKS / "reference"
    runs = [reference / f"speed-2026-12-03-lockstep-cpu{cpu}.json" for cpu in (0, 1)]
    with pytest.raises(SystemExit):
        bench_speed.main(["--compare", *map(str, runs)])
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("| row |") and printed.endswith("0 of 15 rows differ by more than 3%")
    # the same table and summary as the comparison recorded with them
    assert printed in (reference / "speed-2026-12-03-lockstep-compare.md").read_text(encoding="utf-8")


def test_benchmark_files_stay_small_and_no_module_reads_a_log():
    sources = [p for p in BENCHMARKS.rglob("*") if p.suffix in {".py", ".md"}]
    sources = [p for p in sources if not {"reference", "results"} & set(p.relative_to(BENCHMARKS).parts)]
    assert len([p for p in sources if p.suffix == ".py"]) >= 12
    long = {p.name: n for p in sources if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
    # JSON is the one machine-read output: the logs are for people
    reads_log = [p.name for p in sources if p.suffix == ".py" and re.search(r"\.log\b[\"']", p.read_text())]
    assert reads_log == []


def test_the_image_loader_benchmark_trains_the_same_unet_on_the_same_images(tmp_path):
    pytest.importorskip("sklearn")
    import bench_image_loader as bench

    pixels = bench.make_folder(tmp_path / "digits", 8)
    flowkit = bench.Flowkit({"kind": "image-folder", "root": str(tmp_path / "digits")}, 4, 1, tmp_path, "f")
    # the folder decodes to the pixels written (in the split's order), scaled as uint8 images are
    images = flowkit.pipeline.dataset.images
    expected = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)
    rows = lambda x: sorted(row.numpy().tobytes() for row in x)  # noqa: E731
    assert rows(images) == rows(expected)
    raw = bench.Raw(flowkit.pipeline.model, images, 4, 1)
    mine, theirs = flowkit.pipeline.model.state_dict(), raw.net.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert raw.net is not flowkit.pipeline.model
