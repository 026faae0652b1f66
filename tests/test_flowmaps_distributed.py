"""MeanFlow and shortcut models under ``flowkit run --nproc 2``: two gloo ranks train as one process on
the global batch (the comparison of tests/test_distributed.py). MeanFlow differentiates forward
(``torch.func.jvp``), so the loop gives it the plain network and averages the gradients itself; the
shortcut loss evaluates the DDP-wrapped network twice without a gradient before the training pass."""

from __future__ import annotations

import json
import sys

import pytest
from test_distributed import (
    SETTINGS,
    TOLERANCE,
    _launch,
    _losses,
    _model,
    _pipeline_file,
    one_process_reference,
)

from flowkit.testing import make_manager

TWO_TIME = {
    "hidden = [32, 32]": "hidden = [32, 32]\nsecond_time = true",
    'simulator = "euler"\nsteps = 8': 'simulator = "mean-flow-jump"\ndynamics = "mean-flow"\nsteps = 1',
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["meanflow", "shortcut"])
def test_a_flow_map_loss_trains_on_two_ranks_as_one_process_on_the_global_batch(tmp_path, loss):
    file = _pipeline_file(tmp_path)
    text = file.read_text().replace('kind = "cfm"', f'kind = "{loss}"')
    for old, new in TWO_TIME.items():
        assert old in text
        text = text.replace(old, new)
    file.write_text(text)
    out = tmp_path / "runs" / "two"
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    done = _launch(
        [sys.executable, "-m", "flowkit", "run", str(file), *sets, "--out", str(out), "-q", "--nproc", "2"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    means, weights = one_process_reference(file, 2, make_manager(warn=False))
    assert _losses(out) == pytest.approx(means, abs=TOLERANCE, rel=0)
    got = _model(out)
    for which in ("model", "raw"):  # the EMA (what samples) and the raw weights
        worst = max(float((got[which][k] - weights[which][k]).abs().max()) for k in weights[which])
        assert worst <= TOLERANCE, f"{which} weights differ by {worst}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["nfe"] == 1
