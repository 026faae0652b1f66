"""The built-in reporters (plugin ``report``): progress bars, metrics.jsonl, the PNGs of a 2D run,
``--quiet`` and the ``[report]`` switches, and that a failing plot never breaks a run."""

from __future__ import annotations

import json
import sys
import types

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from flowkit_report import plots

import flowkit
from flowkit.cli import main
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.testing import build_component, make_manager

PNGS = {"samples.png", "trajectories.png", "vector_field.png"}

ORACLE = """
[run]
seed = 5

[data]
kind = "gaussian-mixture"
{data}

[path]
kind = "gaussian"
schedule = "ot"

[model]
kind = "mixture-oracle"

[sample]
simulator = "heun"
steps = 16
n = 600
trajectories = 200

[evaluate]
n = 600
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _files(directory):
    return {p.name for p in directory.iterdir()}


def _coloured_pixels(path, colour: str) -> int:
    """Pixels of a PNG close to a matplotlib colour, allowing for alpha blending on white."""
    from matplotlib.colors import to_rgb

    image = matplotlib.image.imread(path)[..., :3]
    target = np.array(to_rgb(colour))
    # A point drawn with alpha a over white is a * target + (1 - a): on the segment to white.
    blended = [a * target + (1 - a) for a in np.linspace(0.4, 1.0, 7)]
    close = np.zeros(image.shape[:2], dtype=bool)
    for shade in blended:
        close |= np.abs(image - shade).max(axis=-1) < 0.06
    return int(close.sum())


@pytest.mark.slow
def test_a_2d_run_writes_the_log_and_plots_and_shows_progress(tiny_pipeline, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", tiny_pipeline, "--out", out)
    assert result.exit_code == 0, result.output
    # Progress bars go to stderr and finish at the number of training and sampling steps.
    assert "train: 100%" in result.stderr and "60/60" in result.stderr
    assert "sample: 100%" in result.stderr and "8/8" in result.stderr
    assert _files(out) >= PNGS and "report-errors.log" not in _files(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [20, 40, 60]
    assert all(set(row) == {"step", "loss", "lr"} and np.isfinite(row["loss"]) for row in rows)
    assert rows[-1]["loss"] == pytest.approx(json.loads((out / "metrics.json").read_text())["final_loss"])
    # samples.png shows held-out data (blue) beside the samples (orange); trajectories.png noise
    # (grey) and samples (orange); the vector field has four panels side by side.
    assert _coloured_pixels(out / "samples.png", "tab:blue") > 300
    assert _coloured_pixels(out / "samples.png", "tab:orange") > 300
    assert _coloured_pixels(out / "trajectories.png", "tab:gray") > 50
    assert _coloured_pixels(out / "trajectories.png", "tab:orange") > 50
    height, width = matplotlib.image.imread(out / "vector_field.png").shape[:2]
    assert width > 3.5 * height


@pytest.mark.slow
def test_quiet_is_silent_and_the_report_switches_turn_each_part_off(tiny_pipeline, tmp_path):
    quiet = invoke("run", tiny_pipeline, "--out", tmp_path / "quiet", "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert quiet.stdout == f"run directory: {tmp_path / 'quiet'}\n"
    assert PNGS | {"metrics.jsonl"} <= _files(tmp_path / "quiet")  # quiet silences, it does not skip

    off = tmp_path / "off"
    switches = ("report.progress=false", "report.plots=false", "report.log=false")
    result = invoke("run", tiny_pipeline, "--out", off, *[a for s in switches for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "w2 = " in result.stdout  # the result line is the CLI's, not a reporter's
    assert not (PNGS | {"metrics.jsonl"}) & _files(off)
    assert {"metrics.json", "samples.npy", "model.pt"} <= _files(off)


def test_blocking_the_reporters_leaves_the_run_intact(write_pipeline, tmp_path):
    pipeline = write_pipeline(ORACLE.format(data=""), "oracle.toml")
    out = tmp_path / "blocked"
    result = invoke("-p", "no:report", "run", pipeline, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert _files(out) == {
        "pipeline.toml",
        "status.json",
        "samples.npy",
        "metrics.json",
        "run.lock",
        "manifest.json",
    }


class Capture:
    """A plugin that keeps what the samples_ready hook receives."""

    def __init__(self) -> None:
        self.seen: dict = {}

    @flowkit.hookimpl
    def flowkit_samples_ready(self, run, samples, reference, trajectory):
        self.seen.update(samples=samples, reference=reference, trajectory=trajectory, run=run)


def test_trajectories_go_from_noise_to_data_and_the_plotted_field_is_the_models(write_pipeline, tmp_path):
    capture = Capture()
    manager = make_manager(plugins=[("capture", capture)])
    pipeline = build_pipeline(write_pipeline(ORACLE.format(data=""), "oracle.toml"), [], manager)
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert _files(run.directory) >= PNGS
    trajectory, reference = capture.seen["trajectory"], capture.seen["reference"]
    assert trajectory.shape == (17, 200, 2)
    # t = 0 is the N(0, I) prior; t = 1 the data (the oracle's exact velocity, Heun with 16 steps).
    assert trajectory[0].mean(0).abs().max() < 0.35 and (trajectory[0].std(0) - 1).abs().max() < 0.25
    w2 = build_component(manager, "metric", "w2")
    end, start = w2(trajectory[-1], reference[:200]), w2(trajectory[0], reference[:200])
    floor = w2(pipeline.dataset.sample(200, generator=torch.Generator().manual_seed(1)), reference[:200])
    assert end < 1.2 * floor and start > 2.5 * floor, (end, floor, start)

    # What vector_field.png draws at t = 0 is u_0(x) = E[z] - x for the OT path (x_0 = noise).
    velocity = pipeline.context.role("velocity", needed_by="test")
    gx, gy, u, v = plots.velocity_on_grid(velocity, 0.0, (-3.0, 3.0), (-2.0, 2.0), resolution=7)
    mean = torch.tensor([0.5 * -2.0 + 0.3 * 2.0 + 0.2 * 0.0, 0.5 * -1.0 + 0.3 * -1.0 + 0.2 * 2.0])
    torch.testing.assert_close(u, mean[0] - gx, atol=1e-4, rtol=0)
    torch.testing.assert_close(v, mean[1] - gy, atol=1e-4, rtol=0)
    assert gx[0].tolist() == pytest.approx(np.linspace(-3, 3, 7).tolist())
    assert plots.field_times((0.0, 0.9)) == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_a_failing_plot_is_reported_and_the_run_goes_on(write_pipeline, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "vector_field_png", broken)
    pipeline = write_pipeline(ORACLE.format(data=""), "oracle.toml")
    with pytest.warns(plots.ReportWarning, match="could not write vector_field.png: RuntimeError: no fonts"):
        result = invoke("run", pipeline, "--out", tmp_path / "loud")
    assert result.exit_code == 0, result.output
    assert {"samples.png", "trajectories.png", "metrics.json"} <= _files(tmp_path / "loud")
    assert "vector_field.png" not in _files(tmp_path / "loud")

    quiet = invoke("run", pipeline, "--out", tmp_path / "quiet", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    log = (tmp_path / "quiet" / "report-errors.log").read_text()
    assert log.startswith("flowkit_report: could not write vector_field.png: RuntimeError: no fonts today")


def test_data_that_is_not_2d_gets_no_plots(write_pipeline, tmp_path):
    data = "means = [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]\nstds = [0.3]"
    pipeline = write_pipeline(ORACLE.format(data=data), "oracle3d.toml")
    result = invoke("run", pipeline, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert not PNGS & _files(tmp_path / "run")
    assert not (tmp_path / "run" / "report-errors.log").exists()


def test_importing_the_reporters_is_cheap():
    """Listing plugins imports flowkit_report; matplotlib and tqdm load only when used."""
    import subprocess

    code = "import sys, flowkit_report; print('matplotlib' in sys.modules, 'tqdm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert isinstance(plots, types.ModuleType)
