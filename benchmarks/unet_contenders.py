"""The contenders of ``bench_unet_images.py``: one U-Net's CFM training step through flowkit's engine, a
raw PyTorch loop fed by a plain ``DataLoader``, torchcfm and flow_matching, each ``block(k)`` timing
``k`` steps and the seconds of those steps spent waiting for data.

Every contender trains a copy of the same network (flowkit's ``unet``, the same initial weights) with
AdamW at the same learning rate on the same batch size; the OT path with ``sigma_min = 0`` (noise at
``t = 0``, data at ``t = 1``). The peers are fed by the raw loop's ``DataLoader``, so that they differ
from it only by their library's step: drawing ``t`` and the noise, the interpolant and the target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from harness.clocks import Timing, stamp
from torch import Tensor
from workloads import make_manager, make_run, train_stage, write_pipeline

from flowkit import hookimpl

#: The network every contender trains: flowkit's ``[model]`` table (16 and 8 pixels wide at 16x16;
#: 32 and 16 at 32x32), no attention but the middle's.
UNET: dict[str, Any] = {"kind": "unet", "channels": 16, "channel_mults": [1, 2], "blocks": 1, "attention": []}
#: The learning rate of every contender (constant: no scheduler in any loop).
LR = 1e-3
#: The end of the OT path's time range with ``sigma_min = 0``: flowkit's path stops 1e-5 short of
#: ``t = 1``, where ``beta_t = 0``; the raw loop draws its ``t`` on the same range, so both compute
#: the same loss on the same draws (the peers draw on ``[0, 1]``, as their examples do).
T_END = 1.0 - 1e-5
NO_TIMING = Timing(0.0, 0.0, 0.0)


class DataWait:
    """The clocks' seconds spent fetching batches (wrapped by :meth:`wrap`) since :meth:`reset`."""

    def __init__(self) -> None:
        self.seconds = NO_TIMING

    def reset(self) -> None:
        self.seconds = NO_TIMING

    def wrap(self, fetch: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = stamp()
            try:
                return fetch(*args, **kwargs)
            finally:
                self.seconds = self.seconds + (stamp() - start)

        return timed


class _StepClock:
    """A flowkit plugin: reads the clocks, and the data wait so far, when ``flowkit_train_step`` reports
    the first and the last timed step of a block (the data wait is counted from the first)."""

    def __init__(self, wait: DataWait) -> None:
        self.wait = wait
        self.marks: dict[int, Timing | None] = {}
        self.waited = NO_TIMING

    @hookimpl
    def flowkit_train_step(self, run: Any, step: int, loss: Tensor) -> None:
        if step not in self.marks:
            return
        self.marks[step] = stamp()
        if step == min(self.marks):
            self.wait.reset()
        else:
            self.waited = self.wait.seconds


def flowkit_data_tables(kind: str, folder: Path, npy: Path, workers: int) -> dict[str, Any]:
    """flowkit's ``[data]`` table for the decoded folder (``kind = "folder"``) or the memory-mapped
    ``.npy`` of the same images read by ``workers`` processes (``kind = "mmap"``); no held-out part."""
    if kind == "folder":
        return {"kind": "image-folder", "root": str(folder), "held_out": 0.0}
    return {"kind": "images", "path": str(npy), "mmap": True, "workers": workers, "held_out": 0.0}


class FlowkitUNet:
    """``flowkit.engine.train.train`` on a pipeline built from TOML through the registry: the data
    table given, the ``unet``, CFM on the OT path; EMA off, constant learning rate, one torch thread.
    The data wait is the time in ``dataset.sample`` (the loader, where the data has workers)."""

    def __init__(self, data: dict[str, Any], batch: int, warm: int, workdir: Path, name: str) -> None:
        from flowkit.engine import build_pipeline

        self.wait = DataWait()
        self.clock = _StepClock(self.wait)
        manager, _ = make_manager([("bench-clock", self.clock)])
        tables = {
            "run": {"seed": 0, "device": {"kind": "cpu", "threads": 1}},
            "data": data,
            "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
            "model": UNET,
            "loss": {"kind": "cfm"},
            "train": {"steps": warm + 1, "batch_size": batch, "lr": LR, "ema_decay": 0.0, "log_every": 10**6},
        }
        self.pipeline = build_pipeline(write_pipeline(workdir, name, tables), manager=manager)
        self.run = make_run(self.pipeline, manager, workdir / name)
        self.network = self.pipeline.model
        self.warm = warm
        dataset = self.pipeline.dataset
        dataset.sample = self.wait.wrap(dataset.sample)  # the batch producer's one call for data

    def loss(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """flowkit's CFM loss of this network on ``z``, drawing from ``generator`` as a step does."""
        pipe = self.pipeline
        return pipe.loss(pipe.context.roles[pipe.loss.trains], pipe.path, z, generator=generator)

    def block(self, k: int) -> tuple[Timing, Timing]:
        """``warm`` untimed steps then ``k`` timed ones; their clocks and the data wait within them."""
        first, last = self.warm, self.warm + k
        self.pipeline.train = attrs.evolve(self.pipeline.train, steps=last)
        self.clock.marks = dict.fromkeys((first, last))
        train_stage(self.run)
        start, end = self.clock.marks[first], self.clock.marks[last]
        assert start is not None and end is not None
        return end - start, self.clock.waited


class RawUNet:
    """The loop a user writes: a copy of the network, ``torch.optim.AdamW`` with its defaults but the
    rate, batches from ``DataLoader(TensorDataset(images), batch_size=B, sampler=RandomSampler(...,
    replacement=True), num_workers=workers)``, and the OT-path CFM loss written out. ``fused``: AdamW's
    fused kernel, as flowkit's loop uses it (the stricter baseline: flowkit's step less its optimizer's
    advantage)."""

    def __init__(
        self,
        network: torch.nn.Module,
        images: Tensor,
        batch: int,
        warm: int,
        workers: int = 0,
        fused: bool = False,
    ) -> None:
        from torch.utils.data import DataLoader, RandomSampler, TensorDataset

        self.net = self.network = copy.deepcopy(network)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=LR, fused=fused or None)
        data = TensorDataset(images)
        sampler = RandomSampler(data, replacement=True, num_samples=10**8)
        loader = DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers)
        self.batches = iter(loader)
        self.wait = DataWait()
        self.fetch = self.wait.wrap(lambda: next(self.batches)[0])
        self.noise = torch.Generator().manual_seed(1)
        self.warm = warm

    def loss(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``|| net(x_t, t) - (z - x0) ||^2`` with ``t`` then ``x0`` drawn from ``generator``."""
        t = torch.rand(z.shape[0], generator=generator or self.noise) * T_END
        x0 = torch.randn(z.shape, generator=generator or self.noise)
        tc = t[:, None, None, None]
        return (self.net((1 - tc) * x0 + tc * z, t) - (z - x0)).square().mean()

    def step(self) -> None:
        loss = self.loss(self.fetch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, k: int) -> tuple[Timing, Timing]:
        # untimed steps first, as flowkit's block has: in lockstep the timed steps then line up
        for _ in range(self.warm):
            self.step()
        self.wait.reset()
        start = stamp()
        for _ in range(k):
            self.step()
        return stamp() - start, self.wait.seconds


class TorchCFMUNet(RawUNet):
    """torchcfm's ``ConditionalFlowMatcher(sigma=0)`` step (its README's loop) on the raw loop's data."""

    def __init__(self, network: torch.nn.Module, images: Tensor, batch: int, warm: int) -> None:
        super().__init__(network, images, batch, warm)
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        self.matcher = ConditionalFlowMatcher(sigma=0.0)

    def loss(self, z: Tensor, t: Tensor | None = None, x0: Tensor | None = None) -> Tensor:  # type: ignore[override]
        x0 = torch.randn_like(z) if x0 is None else x0
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, z, t)
        return torch.mean((self.net(xt, t) - ut) ** 2)


class FlowMatchingUNet(RawUNet):
    """flow_matching's ``AffineProbPath(CondOTScheduler())`` step (its examples' loop) on the raw
    loop's data."""

    def __init__(self, network: torch.nn.Module, images: Tensor, batch: int, warm: int) -> None:
        super().__init__(network, images, batch, warm)
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        self.path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(self, z: Tensor, t: Tensor | None = None, x0: Tensor | None = None) -> Tensor:  # type: ignore[override]
        x0 = torch.randn_like(z) if x0 is None else x0
        t = torch.rand(z.shape[0]) if t is None else t
        sample = self.path.sample(t=t, x_0=x0, x_1=z)
        return torch.pow(self.net(sample.x_t, sample.t) - sample.dx_t, 2).mean()


#: The peers: contender name, the module it needs, its class.
PEERS = (("torchcfm", "torchcfm", TorchCFMUNet), ("flow_matching", "flow_matching", FlowMatchingUNet))
