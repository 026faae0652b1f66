"""Where flowkit's training step spends its time beyond the raw loop's (``bench_speed.py
--breakdown``): microseconds per call of each piece, and an ablation that swaps flowkit's pieces into
the raw loop one at a time."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from harness.clocks import measure, primary_clock
from harness.schedules import repetitions
from harness.stats import summarize_clocks
from speed_contenders import FlowkitTrainer, RawTrainer, SpeedConfig, _HandWrittenTrainer
from torch import Tensor
from workloads import lr_factor, raw_moons


def _per_call_us(fn: Callable[[], Any], device: torch.device, calls: int, reps: int = 5) -> float:
    """Median over ``reps`` of the mean microseconds per call of ``fn`` (on the primary clock)."""
    fn()
    clock = primary_clock(device)

    def block() -> None:
        for _ in range(calls):
            fn()

    times = [getattr(measure(block, device), clock) / calls * 1e6 for _ in range(reps)]
    return sorted(times)[len(times) // 2]


def step_breakdown(batch: int, cfg: SpeedConfig, workdir: Path, calls: int = 200) -> dict[str, float]:
    """Microseconds per call of each piece of flowkit's training step and of its raw counterpart."""
    from flowkit.engine import WeightAverage, stage_seed

    device = torch.device(cfg.device)
    trainer = FlowkitTrainer(batch, cfg, workdir, ema_decay=0.0)
    pipe, run = trainer.pipeline, trainer.run
    role = pipe.context.roles[pipe.loss.trains]
    network = pipe.model
    data_gen = pipe.device.generator(stage_seed(0, "data"))
    loss_gen = pipe.device.generator(stage_seed(0, "loss"))
    raw = RawTrainer(batch, cfg)
    raw.net.load_state_dict(network.state_dict())
    z = pipe.dataset.sample(batch, generator=data_gen, device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(pipe.train))
    ema = WeightAverage(network, 0.999)  # the training loop's EMA
    x = torch.randn(batch, 2)
    t = torch.rand(batch)
    detached = torch.zeros(())
    running = torch.zeros(())

    def flowkit_loss_only() -> None:
        # the loss's own work: draws, path, targets, without the network (a zero "model")
        pipe.loss(lambda x, t: x, pipe.path, z, generator=loss_gen)

    def raw_loss_only() -> None:
        x0 = torch.randn(z.shape, generator=raw.noise_gen)
        tt = torch.rand(z.shape[0], generator=raw.noise_gen)[:, None]
        ((1 - tt) * x0 + tt * z - (z - x0)).square().mean()

    with torch.no_grad():
        pieces = {
            "data: flowkit dataset.sample": _per_call_us(
                lambda: pipe.dataset.sample(batch, generator=data_gen, device=device), device, calls
            ),
            "data: raw inline moons": _per_call_us(
                lambda: raw_moons(batch, raw.data_gen, device), device, calls
            ),
            "loss without network: flowkit cfm": _per_call_us(flowkit_loss_only, device, calls),
            "loss without network: raw": _per_call_us(raw_loss_only, device, calls),
            "forward: flowkit role(x, t)": _per_call_us(lambda: role(x, t), device, calls),
            "forward: raw net(x, t)": _per_call_us(lambda: raw.net(x, t), device, calls),
        }
    with warnings.catch_warnings():  # stepped alone here, without optimizer.step()
        warnings.simplefilter("ignore", UserWarning)
        pieces["LambdaLR scheduler.step()"] = _per_call_us(scheduler.step, device, calls)
    pieces["hook flowkit_train_step (reporters + clock)"] = _per_call_us(
        lambda: run.hook.flowkit_train_step(run=run, step=1, loss=detached), device, calls
    )
    pieces["running += loss.detach()"] = _per_call_us(lambda: running.add_(detached), device, calls)
    pieces["EMA update (WeightAverage; off in the benchmark)"] = _per_call_us(ema.update, device, calls)
    clock = primary_clock(device)
    pieces["whole step: flowkit (train())"] = getattr(trainer.block(calls), clock) / calls * 1e6
    pieces["whole step: raw"] = getattr(raw.block(calls), clock) / calls * 1e6
    return pieces


class AblationTrainer(_HandWrittenTrainer):
    """The raw loop with flowkit's pieces swapped in one by one (``level`` 1 to 4), to attribute
    flowkit's overhead: 1 the network as flowkit builds it (``NetworkVelocity(MLP)``), 2 plus the
    ``cfm`` loss with the path, 3 plus ``dataset.sample``, 4 plus ``LambdaLR``, the train-step hook
    and the running loss (``train()`` minus its bookkeeping)."""

    LEVELS: ClassVar[dict[int, str]] = {
        1: "raw + flowkit network",
        2: "+ flowkit cfm loss/path",
        3: "+ flowkit dataset.sample",
        4: "+ LambdaLR, hook, running loss",
    }

    def __init__(self, batch: int, cfg: SpeedConfig, workdir: Path, level: int) -> None:
        super().__init__(batch, cfg)
        self.level = level
        self.flowkit = FlowkitTrainer(batch, cfg, workdir / f"ablation-{level}")
        pipe = self.flowkit.pipeline
        self.pipe, self.run = pipe, self.flowkit.run
        self.role = pipe.context.roles[pipe.loss.trains]
        self.network = pipe.model  # what the role calls: the lockstep's turns are at its calls
        self.opt = torch.optim.AdamW(pipe.model.parameters(), lr=1e-3, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(pipe.train))
        self.running = torch.zeros((), device=self.device)
        self.count = 0

    def loss(self, z: Tensor) -> Tensor:
        if self.level >= 2:
            return self.pipe.loss(self.role, self.pipe.path, z, generator=self.noise_gen)
        x0 = torch.randn(z.shape, generator=self.noise_gen, device=self.device)
        t = torch.rand(z.shape[0], generator=self.noise_gen, device=self.device)
        tc = t[:, None]
        return (self.role((1 - tc) * x0 + tc * z, t) - (z - x0)).square().mean()

    def step(self) -> None:
        if self.level >= 3:
            z = self.pipe.dataset.sample(self.batch, generator=self.data_gen, device=self.device)
        else:
            z = raw_moons(self.batch, self.data_gen, self.device)
        loss = self.loss(z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.level >= 4:
            self.scheduler.step()
            detached = loss.detach()
            self.running += detached
            self.count += 1
            self.run.hook.flowkit_train_step(run=self.run, step=self.count, loss=detached)


def ablation(
    batch: int, k: int, cfg: SpeedConfig, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Steps/s of the raw loop, each ablation level and ``train()``, interleaved; ratios to raw."""
    contenders: dict[str, Any] = {"raw": RawTrainer(batch, cfg)}
    for level, label in AblationTrainer.LEVELS.items():
        contenders[label] = AblationTrainer(batch, cfg, workdir, level)
    contenders["flowkit train()"] = FlowkitTrainer(batch, cfg, workdir)
    for contender in contenders.values():
        contender.block(max(2, k // 5))
    networks = [c.network for c in contenders.values()]
    device = torch.device(cfg.device)
    timings, paired = repetitions(
        contenders, networks, cfg.schedule, device, cfg.train_reps, lambda c: c.block(k), log
    )
    clock = primary_clock(device)
    return {name: summarize_clocks(timings[name], paired.get(name), k)[clock] for name in contenders}
