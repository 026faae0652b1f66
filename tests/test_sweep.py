"""``flowkit sweep`` and ``flowkit compare``: the grid and its plan, the summary table's exact contents
(mean ± sample std over seeds per cell), and a sweep killed mid-way that, started again, keeps its
finished runs bitwise and resumes the killed one to the samples of an uninterrupted run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner
from conftest import tiny_file

from flowkit.cli import main
from flowkit.engine import compare, sweep
from flowkit.errors import ConfigError


def test_a_list_value_is_an_axis_and_other_values_are_fixed():
    fixed, axes = sweep.split_overrides(
        [
            "train.steps=500",
            "train.lr=[1e-3, 2e-3]",
            "loss.coupling=[independent,exact-ot]",
            'data.kind=["a,b"]',
        ]
    )
    assert fixed == ["train.steps=500"]
    assert axes == [
        sweep.Axis("train.lr", ("1e-3", "2e-3")),
        sweep.Axis("loss.coupling", ("independent", "exact-ot")),
        sweep.Axis("data.kind", ('"a,b"',)),
    ]
    assert sweep.split_list("[[64, 64], [128, 128], { kind = 'vp', a = 1 }]") == [
        "[64, 64]",
        "[128, 128]",
        "{ kind = 'vp', a = 1 }",
    ]
    runs = sweep.plan_runs(fixed, axes[:2], [0, 1])
    assert [r.name for r in runs] == [f"{i:03d}" for i in range(1, 9)]
    assert runs[0].overrides == (
        "train.steps=500",
        "train.lr=1e-3",
        "loss.coupling=independent",
        "run.seed=0",
    )
    assert runs[3].overrides == ("train.steps=500", "train.lr=1e-3", "loss.coupling=exact-ot", "run.seed=1")
    assert runs[7].overrides == ("train.steps=500", "train.lr=2e-3", "loss.coupling=exact-ot", "run.seed=1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr=[1e-3,1e-3]", "--set train.lr=[1e-3,1e-3]: a value appears twice in the axis"),
        ("train.lr=[]", "--set train.lr=[]: an axis needs at least one value"),
        ("train=[1,2]", "--set train=[1,2]: 'train' names no table; expected TABLE.KEY=VALUE"),
    ],
)
def test_a_bad_axis_is_one_line_naming_it(text, message):
    with pytest.raises(ConfigError) as err:
        sweep.split_overrides([text])
    assert str(err.value).startswith(message)


def _finished(
    root: Path, name: str, lr: float, coupling: str, seed: int, distance: float, loss: float
) -> Path:
    """A run directory as far as compare reads it: a resolved pipeline and metrics.json."""
    directory = root / name
    directory.mkdir(parents=True)
    tables = {
        "run": {"seed": seed, "out": str(directory)},
        "train": {"lr": lr, "steps": 500},
        "loss": {
            "kind": "cfm",
            "coupling": {"kind": coupling, **({"reg": 0.05} if coupling == "sinkhorn" else {})},
        },
        "flowkit": {"version": "0.1.0", "command": f"flowkit run {name}"},
    }
    (directory / "pipeline.toml").write_text(tomli_w.dumps(tables))
    metrics = {"metric": "w2", "distance": distance, "ratio_to_floor": distance / 0.1, "final_loss": loss}
    (directory / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 10.0 + seed}))
    return directory


def test_compare_groups_by_what_differs_and_averages_over_seeds(tmp_path):
    distances = {
        ("independent", 0): 0.12,
        ("independent", 1): 0.14,
        ("sinkhorn", 0): 0.10,
        ("sinkhorn", 1): 0.11,
    }
    runs = [
        _finished(tmp_path, f"{coupling}-{seed}", 2e-3, coupling, seed, d, 1.0 + seed)
        for (coupling, seed), d in distances.items()
    ]
    runs.append(_finished(tmp_path, "slow-0", 1e-3, "independent", 0, 0.2, 1.5))
    records = [compare.load_finished(r) for r in runs]
    # sinkhorn's own parameter (reg) is no cell key: the coupling's kind names the cell
    assert compare.cell_keys(records) == ["train.lr", "loss.coupling.kind"]
    std = statistics.stdev([0.12, 0.14])
    assert f"{std:.4f}" == "0.0141"
    assert compare.markdown_table(records) == (
        "| train.lr | loss.coupling.kind | runs | w2 | ratio to floor | final loss | train s |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 0.002 | independent | 2 | 0.1300 ± 0.0141 | 1.300 ± 0.141 | 1.5000 ± 0.7071 | 10.5 |\n"
        "| 0.002 | sinkhorn | 2 | 0.1050 ± 0.0071 | 1.050 ± 0.071 | 1.5000 ± 0.7071 | 10.5 |\n"
        "| 0.001 | independent | 1 | 0.2000 | 2.000 | 1.5000 | 10.0 |\n"
    )
    rows = compare.csv_table(records).splitlines()
    assert rows[0] == (
        "train.lr,loss.coupling.kind,runs,distance_mean,distance_std,ratio_to_floor_mean,ratio_to_floor_std,"
        "final_loss_mean,final_loss_std,train_seconds_mean"
    )
    assert rows[1].split(",")[:5] == [
        "0.002",
        "independent",
        "2",
        repr(statistics.fmean([0.12, 0.14])),
        repr(std),
    ]
    assert rows[3].split(",")[3:5] == ["0.2", ""]  # one run: no standard deviation
    result = CliRunner().invoke(main, ["compare", *map(str, runs)])
    assert result.exit_code == 0 and result.output == compare.markdown_table(records)
    result = CliRunner().invoke(main, ["compare", str(runs[0]), str(tmp_path / "missing")])
    assert result.exit_code == 1
    missing = tmp_path / "missing"
    why = "not a finished run directory (no metrics.json and pipeline.toml)"
    assert result.stderr == f"Error: {missing}: {why}\n"


KILLER = """
import os, signal
from flowkit import hookimpl

@hookimpl
def flowkit_train_step(run, step, loss):
    if run.directory.name == "002" and step == 30 and run.resumed_from is None:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_killed_sweep_keeps_its_finished_runs_bitwise_and_resumes_the_others(
    tmp_path, make_distribution, monkeypatch
):
    make_distribution("sweep-killer", "1.0", {"killer": "sweep_killer"}, {"sweep_killer": KILLER})
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    )
    file = tiny_file(tmp_path)
    out = tmp_path / "sweep"
    args = ["sweep", str(file), "--out", str(out), "--seeds", "2", "--jobs", "2"]
    args += ["--set", "train.checkpoint_every=20", "--set", "train.lr=[1e-3,2e-3]"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1
    assert (
        f"Error: {out}: 1 of 4 runs did not finish: 002 (status -9); their logs are in {out / 'logs'}."
        in first.stderr
    )
    assert json.loads((out / "002" / "status.json").read_text())["state"] == "running"  # killed
    assert not (out / "summary.md").exists()
    kept = {name: _files(out / name) for name in ("001", "003", "004")}

    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert {name: _files(out / name) for name in kept} == kept  # not touched, not even rewritten
    assert "002: resume" in second.stderr
    # the resumed run is bitwise the run never killed (one torch thread, as in the sweep)
    reference = tmp_path / "reference"
    command = [
        sys.executable,
        "-m",
        "flowkit",
        "-p",
        "no:killer",
        "run",
        str(file),
        "--out",
        str(reference),
        "-q",
    ]
    command += ["--set", "train.checkpoint_every=20", "--set", "train.lr=1e-3", "--set", "run.seed=4"]
    subprocess.run(command, check=True, env=sweep.one_thread_environment(), capture_output=True)
    assert (out / "002" / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()
    records = [compare.load_finished(out / name) for name in ("001", "002", "003", "004")]
    assert (out / "summary.md").read_text() == compare.markdown_table(records)
    assert second.stdout.startswith(compare.markdown_table(records))
    assert [r.metrics["seed"] for r in records] == [3, 4, 3, 4]
    timing = json.loads((out / "timing.json").read_text())["invocations"]
    assert [sorted(t["kept"]) for t in timing] == [[], ["001", "003", "004"]]
    assert np.load(out / "002" / "samples.npy").shape == (200, 2)
