"""benchmarks/bench_flowmaps.py: the hand-written MeanFlow step computes flowkit's loss (so the speed
ratio compares the same work), and the quality rows are drawn beside bench_quality's."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from flowkit_flowmaps.meanflow import InstantVelocity, MeanFlowLoss
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import OTSchedule
from flowkit_nets.mlp import MLP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_flowmaps
from quality_plot import plot


def test_the_hand_written_loss_is_flowkit_s_meanflow_loss():
    torch.manual_seed(0)
    net = MLP(MLP.Params(hidden=[32, 32], second_time=True), data_shape=(2,))
    g = torch.Generator().manual_seed(1)
    z = bench_flowmaps.moons(128, g)
    t, r = torch.rand(128, generator=g), torch.rand(128, generator=g)
    t, r = torch.minimum(t, r), torch.maximum(t, r)
    r = torch.where(torch.rand(128, generator=g) < 0.75, t, r)  # both kinds of rows, interleaved
    noise = torch.randn(128, 2, generator=g)
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    ours = MeanFlowLoss(MeanFlowLoss.Params(weight_power=0.5)).loss_at(
        InstantVelocity(net), path, z, t, r, noise
    )
    (g_ours,) = torch.autograd.grad(ours.loss, net.net[0].weight)
    for whole_batch in (False, True):
        raw = bench_flowmaps.raw_loss(net, z, t, r, noise, power=0.5, whole_batch=whole_batch)
        assert torch.allclose(ours.loss, raw, rtol=1e-6, atol=0)
        (g_raw,) = torch.autograd.grad(raw, net.net[0].weight)
        assert torch.allclose(g_ours, g_raw, rtol=1e-5, atol=1e-7)


def test_the_few_step_rows_are_drawn_in_the_trained_panel(tmp_path):
    floor = {"mean": 0.116, "std": 0.026}
    point = {"network_evals": 1, "distance": 1.37}
    result = {
        "config": {"n": 2000},
        "models": {"trained": {"data": "moons", "noise_floor": floor, "simulators": {"euler": [point]}}},
    }
    few = {"rows": {"moons-reflow": [{"network_evals": 1, "distance": 0.136}]}}
    png = plot(result, tmp_path / "q.png", few)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
