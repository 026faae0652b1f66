"""benchmarks/bench_unet_images.py compares like with like: every contender computes the same loss of
the same network on the same batch and draws (so a ratio compares the cost of one piece of work), and
the quick run pairs every contender with the raw loop. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("sklearn")  # the folder is written from scikit-learn's digits

import bench_unet_images as bench  # noqa: E402
import unet_contenders as contenders  # noqa: E402
from bench_image_loader import make_folder  # noqa: E402
from harness.machine import optional_import  # noqa: E402


@pytest.fixture
def flowkit(tmp_path):
    make_folder(tmp_path / "digits-8", 8)
    data = contenders.flowkit_data_tables("folder", tmp_path / "digits-8", tmp_path / "none.npy", 0)
    made = contenders.FlowkitUNet(data, 4, 1, tmp_path, "f")
    # the U-Net's last convolution starts at zero (its output too): perturb every weight, so that the
    # loss depends on the network, its input x_t and its time t, not only on the target
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for parameter in made.network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return made


def test_the_raw_loop_computes_flowkits_loss_on_the_same_batch_and_draws(flowkit):
    z = flowkit.pipeline.dataset.sample(4, generator=torch.Generator().manual_seed(0))
    raw = contenders.RawUNet(flowkit.network, flowkit.pipeline.dataset.images, 4, 1)
    assert raw.net is not flowkit.network
    mine = flowkit.loss(z, torch.Generator().manual_seed(7))
    theirs = raw.loss(z, torch.Generator().manual_seed(7))
    assert mine.item() > 0.05  # the perturbed network's loss, not zero
    torch.testing.assert_close(theirs, mine, rtol=1e-6, atol=0)


@pytest.mark.parametrize("peer", [name for name, _, _ in contenders.PEERS])
def test_each_peer_computes_the_raw_loss_given_the_same_times_and_noise(flowkit, peer):
    module, cls = next((m, c) for name, m, c in contenders.PEERS if name == peer)
    if optional_import(module) is None:
        pytest.skip(f"{module} is not installed (a peer of the bench extra)")
    images = flowkit.pipeline.dataset.images
    z = images[:4]
    raw = contenders.RawUNet(flowkit.network, images, 4, 1)
    theirs = cls(flowkit.network, images, 4, 1)
    generator = torch.Generator().manual_seed(11)
    t = torch.rand(4, generator=generator) * contenders.T_END
    x0 = torch.randn(z.shape, generator=generator)
    expected = raw.loss(z, torch.Generator().manual_seed(11))
    torch.testing.assert_close(theirs.loss(z, t, x0), expected, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_the_quick_run_pairs_every_contender_with_the_raw_loop(tmp_path):
    out = tmp_path / "unet.json"
    result = bench.main(["--quick", "--no-pin", "--out", str(out), "--probe-workers", "0"])
    headline = next(w for w in result["workloads"] if w["batch"] == result["config"]["headline_batch"])
    rows = headline["contenders"]
    expected = {"raw", "raw (fused AdamW)", "flowkit", "flowkit-mmap (1 workers)", "torchcfm"}
    assert expected | {"flow_matching"} <= set(rows)
    for name, row in rows.items():
        if name != "raw" and row["status"] == "ok":
            assert len(row["steps_per_cpu_s"]["ratios"]) == result["config"]["reps"]
    assert set(result["loader_probe"]["8"]) == {"0"}
    assert out.exists() and "| 8x8 | flowkit |" in out.with_suffix(".md").read_text(encoding="utf-8")
