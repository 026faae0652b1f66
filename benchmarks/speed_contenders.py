"""The contenders of ``bench_speed.py``: the same training and sampling work through flowkit, a
hand-written loop and the peer libraries, and the configuration they are built from.

* Training contenders have ``block(k)``: run ``k`` steps, return their :class:`~harness.clocks.Timing`.
* Sampling contenders are called with a number of steps and return ``cfg.sample_n`` samples.
* Every contender has ``network``, the module whose calls a lockstep takes its turns at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from harness.clocks import Timing, measure, stamp, synchronize
from harness.machine import optional_import
from torch import Tensor
from workloads import (
    RawMLP,
    make_manager,
    make_run,
    moons_tables,
    raw_moons,
    sample_stage,
    train_stage,
    write_pipeline,
)

from flowkit import hookimpl
from flowkit.engine import stage_seed

#: The sampling workloads: flowkit's ``[sample]`` table for each, and the steps.
SIMULATORS: dict[str, dict[str, Any]] = {
    "euler": {"simulator": "euler", "dynamics": "flow", "steps": 100},
    "heun": {"simulator": "heun", "dynamics": "flow", "steps": 50},
    "euler-maruyama": {
        "simulator": "euler-maruyama",
        "dynamics": {"kind": "extension-sde", "sigma": 1.0, "sigma_schedule": "linear-decay"},
        "steps": 100,
    },
}
#: torchdiffeq's name for each fixed-step method (``None``: it has no such solver).
TORCHDIFFEQ_METHOD = {"euler": "euler", "heun": "heun2", "euler-maruyama": None}


@dataclass
class SpeedConfig:
    """What to run; the defaults are the issue's workloads."""

    device: str = "cpu"
    threads: int = 1
    batches: list[int] = field(default_factory=lambda: [256, 4096])
    block_steps: list[int] = field(default_factory=lambda: [100, 30])
    train_reps: int = 25
    warm_steps: int = 3
    sample_n: int = 10_000
    sample_reps: int = 15
    simulators: list[str] = field(default_factory=lambda: list(SIMULATORS))
    sample_steps: dict[str, int] = field(
        default_factory=lambda: {k: v["steps"] for k, v in SIMULATORS.items()}
    )
    memory: bool = True
    memory_steps: int = 10
    peers: bool = True
    ema_row: bool = True
    breakdown: bool = False
    steady_malloc: bool = True
    #: "lockstep" (every contender at once, in turns at each network call; the CPU default) or
    #: "sandwich" (one block after another, each between two raw blocks; always on a GPU).
    schedule: str = "lockstep"
    #: On the CPU, run on the last ``threads`` CPUs only (:func:`harness.machine.pinned`).
    pin: bool = True
    seed: int = 0


def device_table(cfg: SpeedConfig) -> dict[str, Any]:
    """flowkit's ``[run] device`` for the benchmark: on the CPU with ``cfg.threads`` threads. The CPU
    backend sets torch's (process-wide) thread count when it is built; with its default (half the cores)
    every contender built after flowkit's pipeline ran on one thread whatever ``--threads`` said."""
    if cfg.device == "cpu":
        return {"kind": "cpu", "threads": cfg.threads}
    return {"kind": cfg.device}


# ---------------------------------------------------------------------------------------------------
# Training contenders: ``block(k)`` runs k steps and returns the seconds they took
# ---------------------------------------------------------------------------------------------------


class _StepClock:
    """A flowkit plugin: reads the clocks (:func:`harness.clocks.stamp`: wall-clock, this thread's and the
    process's CPU time) when ``flowkit_train_step`` reports chosen steps. The hook runs on the thread
    that runs ``train()``, so the thread clock is that of the training loop."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: dict[int, Timing | None] = {}

    def arm(self, *steps: int) -> None:
        self.marks = dict.fromkeys(steps)

    @hookimpl
    def flowkit_train_step(self, run: Any, step: int, loss: Tensor) -> None:
        if step in self.marks:
            synchronize(self.device)
            self.marks[step] = stamp()

    def elapsed(self, first: int, last: int) -> Timing:
        start, end = self.marks.get(first), self.marks.get(last)
        if start is None or end is None:
            raise RuntimeError(f"flowkit.engine.train.train did not report steps {first} and {last}")
        return end - start


class FlowkitTrainer:
    """``flowkit.engine.train.train`` on the benchmark pipeline (built from TOML through the registry)."""

    def __init__(self, batch: int, cfg: SpeedConfig, workdir: Path, ema_decay: float = 0.0) -> None:
        from flowkit.engine import build_pipeline

        self.device = torch.device(cfg.device)
        self.clock = _StepClock(self.device)
        manager, self.device_backend = make_manager([("bench-clock", self.clock)])
        name = f"train-{batch}-ema{ema_decay:g}"
        tables = moons_tables(cfg.device, batch, ema_decay=ema_decay, seed=cfg.seed)
        tables["run"]["device"] = device_table(cfg)
        self.pipeline = build_pipeline(write_pipeline(workdir, name, tables), manager=manager)
        self.run = make_run(self.pipeline, manager, workdir / name)
        self.section = self.pipeline.train
        self.warm = cfg.warm_steps
        self.network = self.pipeline.model

    def block(self, k: int) -> Timing:
        import attrs

        first, last = self.warm, self.warm + k
        self.pipeline.train = attrs.evolve(self.section, steps=last)
        self.clock.arm(first, last)
        train_stage(self.run)
        return self.clock.elapsed(first, last)


class _HandWrittenTrainer:
    """Shared set-up of the loops that use the hand-written MLP and moons generator."""

    def __init__(self, batch: int, cfg: SpeedConfig) -> None:
        self.device = torch.device(cfg.device)
        self.batch = batch
        torch.manual_seed(cfg.seed)
        self.net = self.network = RawMLP().to(self.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=0.0)
        self.data_gen = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.seed + 2)
        self.warm = cfg.warm_steps

    def loss(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self) -> None:
        z = raw_moons(self.batch, self.data_gen, self.device)
        loss = self.loss(z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, k: int) -> Timing:
        def steps() -> None:
            for _ in range(k):
                self.step()

        # untimed steps first, as flowkit's block has: in lockstep the timed steps then line up
        for _ in range(self.warm):
            self.step()
        return measure(steps, self.device)


class RawTrainer(_HandWrittenTrainer):
    """The hand-written CFM loop on the OT path."""

    def loss(self, z: Tensor) -> Tensor:
        x0 = torch.randn(z.shape, generator=self.noise_gen, device=self.device)
        t = torch.rand(z.shape[0], generator=self.noise_gen, device=self.device)
        tc = t[:, None]
        x = (1 - tc) * x0 + tc * z
        return (self.net(x, t) - (z - x0)).square().mean()


class TorchCFMTrainer(_HandWrittenTrainer):
    """torchcfm's ``ConditionalFlowMatcher(sigma=0)`` (independent coupling, OT path)."""

    def __init__(self, batch: int, cfg: SpeedConfig) -> None:
        super().__init__(batch, cfg)
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        self.matcher = ConditionalFlowMatcher(sigma=0.0)

    def loss(self, z: Tensor) -> Tensor:
        x0 = torch.randn_like(z)
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, z)
        return torch.mean((self.net(xt, t) - ut) ** 2)


class FlowMatchingTrainer(_HandWrittenTrainer):
    """flow_matching's ``AffineProbPath(CondOTScheduler())``."""

    def __init__(self, batch: int, cfg: SpeedConfig) -> None:
        super().__init__(batch, cfg)
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        self.path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(self, z: Tensor) -> Tensor:
        x0 = torch.randn_like(z)
        t = torch.rand(z.shape[0], device=self.device)
        sample = self.path.sample(t=t, x_0=x0, x_1=z)
        return torch.pow(self.net(sample.x_t, sample.t) - sample.dx_t, 2).mean()


# ---------------------------------------------------------------------------------------------------
# Sampling contenders: ``__call__(steps)`` draws cfg.sample_n samples
# ---------------------------------------------------------------------------------------------------


class FlowkitSampler:
    """``flowkit.engine.sample.sample`` with the simulator and dynamics of a ``[sample]`` table."""

    def __init__(self, simulator: str, cfg: SpeedConfig, workdir: Path) -> None:
        from flowkit.engine import build_pipeline

        manager, self.device_backend = make_manager()
        table = {**SIMULATORS[simulator], "steps": cfg.sample_steps[simulator], "n": cfg.sample_n}
        name = f"sample-{simulator}"
        tables = moons_tables(cfg.device, sample=table, seed=cfg.seed)
        tables["run"]["device"] = device_table(cfg)
        self.pipeline = build_pipeline(write_pipeline(workdir, name, tables), manager=manager)
        self.run = make_run(self.pipeline, manager, workdir / name)
        self.section = self.pipeline.sample
        self.network = self.pipeline.model

    def __call__(self, steps: int) -> Tensor:
        import attrs

        if steps != self.section.steps:
            self.pipeline.sample = attrs.evolve(self.section, steps=steps)
        try:
            return sample_stage(self.run).samples
        finally:
            self.pipeline.sample = self.section


class _HandWrittenSampler:
    def __init__(self, simulator: str, cfg: SpeedConfig, network: torch.nn.Module, t_end: float) -> None:
        self.simulator = simulator
        self.device = torch.device(cfg.device)
        self.n = cfg.sample_n
        self.network = network
        self.t_end = t_end
        self.seed = cfg.seed

    def prior(self) -> tuple[Tensor, torch.Generator]:
        # flowkit's sampling seed, so every contender starts from the same x_0 (and EM draws the
        # same noise): the samples must agree, which the benchmark checks and records.
        generator = torch.Generator(self.device).manual_seed(stage_seed(self.seed, "sample"))
        return torch.randn((self.n, 2), generator=generator, device=self.device), generator

    def grid(self, steps: int) -> list[float]:
        return [self.t_end * i / steps for i in range(steps + 1)]


class RawSampler(_HandWrittenSampler):
    """Euler, Heun and Euler–Maruyama written by hand (the extension SDE of the OT path for EM:
    score ``(t u - x) / (1 - t)`` from the same velocity evaluation, ``sigma_t = 1 - t``)."""

    @torch.no_grad()
    def __call__(self, steps: int) -> Tensor:
        net, (x, generator), ts = self.network, self.prior(), self.grid(steps)
        n = x.shape[0]
        for i in range(steps):
            t, h = ts[i], ts[i + 1] - ts[i]
            u = net(x, x.new_full((n,), t))
            if self.simulator == "euler":
                x = x + h * u
            elif self.simulator == "heun":
                x_pred = x + h * u
                x = x + (0.5 * h) * (u + net(x_pred, x.new_full((n,), t + h)))
            else:
                sigma = 1.0 - t
                drift = u + (0.5 * sigma * sigma / (1.0 - t)) * (t * u - x)
                noise = torch.randn(x.shape, generator=generator, device=x.device)
                x = x + h * drift + (sigma * math.sqrt(h)) * noise
        return x


class TorchdiffeqSampler(_HandWrittenSampler):
    """``torchdiffeq.odeint`` on the same fixed grid (``grid_constructor``)."""

    @torch.no_grad()
    def __call__(self, steps: int) -> Tensor:
        from torchdiffeq import odeint

        x0, _ = self.prior()
        grid = torch.tensor(self.grid(steps), device=self.device)
        n, net = x0.shape[0], self.network
        return odeint(
            lambda t, x: net(x, t.expand(n)),
            x0,
            grid[[0, -1]],
            method=TORCHDIFFEQ_METHOD[self.simulator],
            options={"grid_constructor": lambda func, y0, t: grid},
        )[-1]


class FlowMatchingSampler(_HandWrittenSampler):
    """flow_matching's ``ODESolver.sample`` (torchdiffeq underneath) with ``step_size = 1 / steps``."""

    @torch.no_grad()
    def __call__(self, steps: int) -> Tensor:
        from flow_matching.solver import ODESolver

        x0, _ = self.prior()
        net = self.network
        solver = ODESolver(velocity_model=lambda x, t: net(x, t.expand(x.shape[0])))
        return solver.sample(
            x_init=x0,
            step_size=1.0 / steps,
            method=TORCHDIFFEQ_METHOD[self.simulator],
            time_grid=torch.tensor([0.0, 1.0], device=self.device),
        )


def count_network_calls(network: torch.nn.Module, fn: Callable[[], Any]) -> int:
    """How many times ``fn()`` calls ``network`` (a forward pre-hook counts)."""
    calls = [0]

    def count(module: Any, inputs: Any) -> None:
        calls[0] += 1

    handle = network.register_forward_pre_hook(count)
    try:
        fn()
    finally:
        handle.remove()
    return calls[0]


def train_contenders(batch: int, cfg: SpeedConfig, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A training workload's contenders by name, and why each missing peer is missing."""
    contenders: dict[str, Any] = {
        "raw": RawTrainer(batch, cfg),
        "flowkit": FlowkitTrainer(batch, cfg, workdir),
    }
    if cfg.ema_row:
        contenders["flowkit+ema"] = FlowkitTrainer(batch, cfg, workdir, ema_decay=0.999)
    missing: dict[str, str] = {}
    if cfg.peers:
        for name, module, cls in (
            ("torchcfm", "torchcfm", TorchCFMTrainer),
            ("flow_matching", "flow_matching", FlowMatchingTrainer),
        ):
            if optional_import(module) is None:
                missing[name] = "not installed"
            else:
                contenders[name] = cls(batch, cfg)
    return contenders, missing


def sample_contenders(
    simulator: str, cfg: SpeedConfig, workdir: Path
) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.nn.Module]]:
    """A sampling workload's contenders by name, why each missing peer is missing, and each one's
    network (the peers share the raw loop's, loaded with flowkit's weights)."""
    flowkit = FlowkitSampler(simulator, cfg, workdir)
    raw_net = RawMLP().to(torch.device(cfg.device))
    raw_net.load_state_dict(flowkit.network.state_dict())  # the same (random, seeded) weights
    raw_net.eval()
    t_end = flowkit.pipeline.path.t_range[1]
    contenders: dict[str, Any] = {"raw": RawSampler(simulator, cfg, raw_net, t_end), "flowkit": flowkit}
    networks = {"raw": raw_net, "flowkit": flowkit.network}
    missing: dict[str, str] = {}
    if cfg.peers:
        for name, module, cls in (
            ("torchdiffeq", "torchdiffeq", TorchdiffeqSampler),
            ("flow_matching", "flow_matching", FlowMatchingSampler),
        ):
            if TORCHDIFFEQ_METHOD[simulator] is None:
                missing[name] = "no such solver"
            elif optional_import(module) is None:
                missing[name] = "not installed"
            else:
                contenders[name] = cls(simulator, cfg, raw_net, t_end)
                networks[name] = raw_net
        missing.setdefault("torchcfm", "no sampler (torchcfm samples through torchdyn)")
    return contenders, missing, networks
