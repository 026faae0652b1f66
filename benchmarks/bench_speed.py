"""Training and sampling speed of flowkit against a hand-written PyTorch loop and peer libraries.

Run from the repository root::

    python benchmarks/bench_speed.py                 # the full benchmark (a few minutes on 2 cores)
    python benchmarks/bench_speed.py --quick         # tiny sizes, to check that it runs
    python benchmarks/bench_speed.py --breakdown     # also time the pieces of flowkit's training step

Contenders do the same work in one process. On the CPU every repetition runs all of a workload's
contenders at once, in lockstep: each in its own thread, taking turns at every call of its network
(:class:`common.Lockstep`), so each contender's step k runs beside every other's step k and the
machine's changes of speed from one second to the next affect all of them alike. The table reports
medians over repetitions and the median of the per-repetition ratios to the raw loop of the same
repetition. ``--schedule sandwich`` (always on a GPU) runs one block after another instead, each
paired with the raw blocks just before and after it.

* **flowkit** is the real code path: the components come from a pipeline file through the registry
  (``flowkit.engine.build_pipeline``) and the timed code is ``flowkit.engine.train.train`` and
  ``flowkit.engine.sample.sample`` themselves. ``train`` is called once per block with ``steps = warm +
  K``; a plugin's ``flowkit_train_step`` hook reads the clock at step ``warm`` and at step ``warm +
  K``, so the figure is the steady-state loop (its own hook calls included) without the per-call
  set-up (optimizer creation, weight saving). EMA is off (``ema_decay = 0``) and the learning rate
  constant, like the raw loop; the row "flowkit+ema" has the default EMA (0.999) for reference.
* **raw**: a minimal CFM loop written by hand (MLP 3×256 SiLU on ``[x, t]``, AdamW,
  ``x_t = (1 - t) x_0 + t z``, target ``z - x_0``, moons generator inlined).
* **torchcfm** (``ConditionalFlowMatcher(sigma=0)``) and **flow_matching** (``AffineProbPath`` with
  ``CondOTScheduler``, ``ODESolver``) train the same hand-written MLP; **torchdiffeq** integrates it
  with ``odeint`` on the same fixed grid (``euler``; ``heun2`` is Heun's method). No peer has an
  Euler–Maruyama sampler (torchcfm samples through torchdyn, which is not used here).

Peak memory is measured after the timings (see :class:`common.PeakMemory`), on shortened sampling
runs (``--memory-steps``): the peak of a fixed-step sampler does not grow with the number of steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RESULTS,
    Lockstep,
    PeakMemory,
    RawMLP,
    Timing,
    fix_malloc_for_memory_probe,
    format_table,
    lockstep,
    machine_description,
    make_manager,
    make_run,
    measure,
    moons_tables,
    off_thread,
    optional_import,
    pinned,
    primary_clock,
    raw_moons,
    sandwich,
    stamp,
    steady_malloc,
    summarize,
    summarize_clocks,
    synchronize,
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
    #: On the CPU, run on the last ``threads`` CPUs only (:func:`common.pinned`).
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
    """A flowkit plugin: reads the clocks (:func:`common.stamp`: wall-clock, this thread's and the
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

        from flowkit.engine.train import train

        first, last = self.warm, self.warm + k
        self.pipeline.train = attrs.evolve(self.section, steps=last)
        self.clock.arm(first, last)
        train(self.run)
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

        from flowkit.engine.sample import sample

        if steps != self.section.steps:
            self.pipeline.sample = attrs.evolve(self.section, steps=steps)
        try:
            return sample(self.run).samples
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


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------


def _train_contenders(batch: int, cfg: SpeedConfig, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
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


def _sample_contenders(
    simulator: str, cfg: SpeedConfig, workdir: Path
) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.nn.Module]]:
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


#: How the repetitions of a workload are scheduled (see :func:`repetitions`).
SCHEDULES = ("lockstep", "sandwich")


def repetitions(
    contenders: dict[str, Any],
    networks: list[torch.nn.Module],
    cfg: SpeedConfig,
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None],
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """``reps`` repetitions of ``work`` for every contender, each paired with the raw loop's, on the
    configured schedule: :func:`common.lockstep` on the CPU (turns at every call of ``networks``),
    :func:`common.sandwich` on a GPU or when ``cfg.schedule`` says so. Returns ``(timings, paired)``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule {cfg.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if cfg.schedule == "sandwich" or torch.device(cfg.device).type != "cpu":
        return sandwich(contenders, "raw", reps, work, log)
    steps = Lockstep()
    handles = [steps.attach(network) for network in {id(n): n for n in networks}.values()]
    try:
        timings, paired = lockstep(contenders, "raw", reps, work, steps, log)
    finally:
        for handle in handles:
            handle.remove()
    if len(set(steps.turns.values())) > 1:  # the segments did not line up: say so, never hide it
        log(f"  note: the contenders took unequal turns (network calls): {steps.turns}")
    return timings, paired


def run_speed(
    cfg: SpeedConfig,
    log: Callable[[str], None] = print,
    partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the results (what the JSON holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_speed(cfg, log, partial or (lambda result: None))
    finally:
        torch.set_num_threads(threads)


def _run_speed(
    cfg: SpeedConfig, log: Callable[[str], None], partial: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    device = torch.device(cfg.device)
    result: dict[str, Any] = {
        "machine": machine_description(cfg.threads, device),
        "config": asdict(cfg),
        "clock": primary_clock(device),
        "train": {},
        "sample": {},
    }
    if len(cfg.block_steps) != len(cfg.batches):
        raise ValueError(f"block_steps {cfg.block_steps} must give one block length per batch {cfg.batches}")
    pin = device.type == "cpu" and cfg.pin
    with (
        tempfile.TemporaryDirectory(prefix="flowkit-bench-") as tmp,
        pinned(cfg.threads) if pin else contextlib.nullcontext() as cpus,
    ):
        result["machine"]["pinned_cpus"] = cpus
        workdir = Path(tmp)
        memory_jobs: list[Callable[[], None]] = []
        if cfg.steady_malloc and device.type == "cpu":
            result["machine"]["steady_malloc"] = steady_malloc()
        # -- training ------------------------------------------------------------------------------
        for batch, k in zip(cfg.batches, cfg.block_steps, strict=True):
            log(f"train, batch {batch}: {cfg.train_reps} blocks of {k} steps per contender")
            contenders, missing = _train_contenders(batch, cfg, workdir)
            result["machine"]["device_backend"] = contenders["flowkit"].device_backend
            for contender in contenders.values():  # warm-up
                contender.block(max(2, k // 5))
            timings, paired = repetitions(
                contenders,
                [c.network for c in contenders.values()],
                cfg,
                cfg.train_reps,
                lambda c, k=k: c.block(k),
                log,
            )
            entry: dict[str, Any] = {"block_steps": k, "contenders": {}}
            for name in contenders:
                rates = summarize_clocks(timings[name], paired.get(name), k)
                entry["contenders"][name] = {
                    "status": "ok",
                    "steps_per_s": rates["wall"],
                    "steps_per_cpu_s": rates["cpu"],
                    "off_thread": off_thread(timings[name]),
                }
            for name, why in missing.items():
                entry["contenders"][name] = {"status": why}
            result["train"][str(batch)] = entry
            partial(result)  # what is measured so far survives a run stopped later
            if cfg.memory:
                for name, contender in contenders.items():
                    memory_jobs.append(
                        lambda c=contender, e=entry["contenders"][name], k=k: _peak(c.block, k, e, device)
                    )
        # -- sampling ------------------------------------------------------------------------------
        for simulator in cfg.simulators:
            steps = cfg.sample_steps[simulator]
            log(f"sample, {simulator} {steps} steps, n = {cfg.sample_n}: {cfg.sample_reps} runs each")
            contenders, missing, networks = _sample_contenders(simulator, cfg, workdir)
            entry = {"steps": steps, "n": cfg.sample_n, "contenders": {}}
            calls, outputs = {}, {}
            for name, c in contenders.items():  # doubles as the warm-up
                calls[name] = count_network_calls(
                    networks[name], lambda c=c, name=name, out=outputs, s=steps: out.__setitem__(name, c(s))
                )
            timings, paired = repetitions(
                contenders,
                list(networks.values()),
                cfg,
                cfg.sample_reps,
                lambda c, s=steps: measure(lambda: c(s), device),
                log,
            )
            for name in contenders:
                rates = summarize_clocks(timings[name], paired.get(name), cfg.sample_n)
                entry["contenders"][name] = {
                    "status": "ok",
                    "network_evals": calls[name],
                    "max_abs_diff_vs_raw": float((outputs[name].cpu() - outputs["raw"].cpu()).abs().max()),
                    "seconds": summarize([t.wall for t in timings[name]], None),
                    "cpu_seconds": summarize([t.cpu for t in timings[name]], None),
                    "samples_per_s": rates["wall"],
                    "samples_per_cpu_s": rates["cpu"],
                    "off_thread": off_thread(timings[name]),
                }
            for name, why in missing.items():
                entry["contenders"][name] = {"status": why}
            result["sample"][simulator] = entry
            partial(result)
            if cfg.memory:
                for name, contender in contenders.items():
                    memory_jobs.append(
                        lambda c=contender, e=entry["contenders"][name]: _peak(c, cfg.memory_steps, e, device)
                    )
        # -- memory, after every timing (the probe changes the allocator) -----------------------------
        if cfg.memory:
            log("peak memory")
            result["machine"]["malloc_fixed_threshold"] = (
                fix_malloc_for_memory_probe() if device.type == "cpu" else None
            )
            for job in memory_jobs:
                job()
        if cfg.breakdown:
            log("breakdown of flowkit's training step")
            result["breakdown"] = {str(b): step_breakdown(b, cfg, workdir) for b in cfg.batches}
            result["ablation"] = {
                str(b): ablation(b, k, cfg, workdir, log)
                for b, k in zip(cfg.batches, cfg.block_steps, strict=True)
            }
    result["machine"]["load_average_after"] = list(os.getloadavg())
    return result


def _peak(work: Callable[[int], Any], k: int, entry: dict[str, Any], device: torch.device) -> None:
    with PeakMemory(device) as probe:
        work(k)
    entry["peak_mib"] = probe.mib
    entry["peak_method"] = probe.method


# ---------------------------------------------------------------------------------------------------
# Where flowkit's training step spends its time beyond the raw loop's
# ---------------------------------------------------------------------------------------------------


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
    from flowkit.engine.optim import lr_factor as _lr_lambda

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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(pipe.train))
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
        from flowkit.engine.optim import lr_factor as _lr_lambda

        self.level = level
        self.flowkit = FlowkitTrainer(batch, cfg, workdir / f"ablation-{level}")
        pipe = self.flowkit.pipeline
        self.pipe, self.run = pipe, self.flowkit.run
        self.role = pipe.context.roles[pipe.loss.trains]
        self.network = pipe.model  # what the role calls: the lockstep's turns are at its calls
        self.opt = torch.optim.AdamW(pipe.model.parameters(), lr=1e-3, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(pipe.train))
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
    timings, paired = repetitions(contenders, networks, cfg, cfg.train_reps, lambda c: c.block(k), log)
    clock = primary_clock(torch.device(cfg.device))
    return {name: summarize_clocks(timings[name], paired.get(name), k)[clock] for name in contenders}


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------


#: The rate keys of each section, by clock.
RATE_KEYS = {
    "train": {"wall": "steps_per_s", "cpu": "steps_per_cpu_s"},
    "sample": {"wall": "samples_per_s", "cpu": "samples_per_cpu_s"},
}


def _rate(c: dict[str, Any], section: str, clock: str) -> dict[str, Any] | None:
    return c.get(RATE_KEYS[section][clock])


def tables(result: dict[str, Any]) -> str:
    """The markdown tables: per contender the rate and the paired ratio to raw with its IQR, on the
    thread's CPU time (the headline on the CPU) and on the wall-clock beside it."""

    def ratio_cells(c: dict[str, Any], section: str) -> list[Any]:
        cells: list[Any] = []
        for clock in ("cpu", "wall"):
            s = _rate(c, section, clock)
            if s is None:  # a result written before the CPU clock was read
                cells += [None, None]
            else:
                cells += [s.get("ratio", 1.0), _iqr(s)]
        return cells

    def off(c: dict[str, Any]) -> str | None:
        share = c.get("off_thread")
        return None if share is None else f"{100 * share:.1f}%"

    rows = []
    for batch, entry in result["train"].items():
        for name, c in entry["contenders"].items():
            if c["status"] != "ok":
                rows.append([batch, name, c["status"], *[None] * 7])
                continue
            cpu = _rate(c, "train", "cpu")
            rows.append(
                [
                    batch,
                    name,
                    cpu["median"] if cpu else None,
                    c["steps_per_s"]["median"],
                    *ratio_cells(c, "train"),
                    c.get("peak_mib"),
                    off(c),
                ]
            )
    train = format_table(
        [
            "batch",
            "contender",
            "steps per CPU s (median)",
            "steps per wall s (median)",
            "× raw, CPU (paired median)",
            "IQR, CPU",
            "× raw, wall (paired median)",
            "IQR, wall",
            "peak MiB",
            "CPU off thread (max)",
        ],
        rows,
    )
    rows = []
    for simulator, entry in result["sample"].items():
        for name, c in entry["contenders"].items():
            label = f"{simulator} ({entry['steps']} steps)"
            if c["status"] != "ok":
                rows.append([label, name, c["status"], *[None] * 9])
                continue
            cpu = c.get("cpu_seconds")
            rows.append(
                [
                    label,
                    name,
                    cpu["median"] if cpu else None,
                    c["seconds"]["median"],
                    c["network_evals"],
                    *ratio_cells(c, "sample"),
                    c.get("peak_mib"),
                    f"{c['max_abs_diff_vs_raw']:.1e}",
                    off(c),
                ]
            )
    n = next(iter(result["sample"].values()))["n"] if result["sample"] else 0
    sample = format_table(
        [
            "simulator",
            "contender",
            f"CPU s for {n} samples (median)",
            "wall s (median)",
            "network evals",
            "speed × raw, CPU (paired median)",
            "IQR, CPU",
            "speed × raw, wall (paired median)",
            "IQR, wall",
            "peak MiB",
            "max |x - x_raw|",
            "CPU off thread (max)",
        ],
        rows,
    )
    machine = result.get("machine", {})
    load = machine.get("load_average_1_5_15"), machine.get("load_average_after")
    text = ""
    if all(load):
        text += (
            f"Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load[0])}; "
            f"at the end {', '.join(f'{v:.2f}' for v in load[1])}. Headline clock: "
            f"{result.get('clock', 'wall')}.\n\n"
        )
    text += f"### Training (CFM, OT path, MLP 3×256)\n\n{train}\n\n### Sampling\n\n{sample}\n"
    for batch, levels in result.get("ablation", {}).items():
        text += f"\n### Where flowkit's training overhead comes from, batch {batch}\n\n"
        text += (
            format_table(
                ["variant", "steps/s (median)", "× raw (paired median)", "IQR"],
                [[name, v["median"], v.get("ratio", 1.0), _iqr(v)] for name, v in levels.items()],
            )
            + "\n"
        )
    if "breakdown" in result:
        for batch, pieces in result["breakdown"].items():
            text += f"\n### flowkit training step, batch {batch}: µs per call\n\n"
            text += format_table(["piece", "µs"], [[k, v] for k, v in pieces.items()]) + "\n"
    return text


def _iqr(summary: dict[str, Any]) -> str | None:
    iqr = summary.get("ratio_iqr")
    return f"{iqr[0]:.3f}–{iqr[1]:.3f}" if iqr else None


def ratios(result: dict[str, Any], clock: str = "cpu") -> dict[str, float]:
    """Every paired-median ratio of a result on ``clock`` ("cpu" or "wall"), by row:
    ``"train 256 flowkit"``, ``"sample euler flowkit"``. A result without CPU figures has none."""
    out = {}
    for section in ("train", "sample"):
        for row, entry in result.get(section, {}).items():
            for name, c in entry["contenders"].items():
                s = _rate(c, section, clock) if c["status"] == "ok" else None
                if s is not None and "ratio" in s:
                    out[f"{section} {row} {name}"] = s["ratio"]
    return out


_LOG_BLOCK = re.compile(r"(\S+) ([\d.e+-]+)/([\d.e+-]+) \(([\d.e+-]+)/([\d.e+-]+)\)")


def result_from_log(text: str) -> dict[str, Any]:
    """The ratios of a run from its log (what it prints per repetition: each block's CPU and wall
    seconds, and the mean of the raw blocks around it), for a run stopped before it wrote its JSON.
    Per block only, so the rates are blocks per second; the ratios are the JSON's to the 4 digits
    logged."""
    times: dict[str, dict[str, dict[str, list[tuple[float, ...]]]]] = {"train": {}, "sample": {}}
    rows: dict[str, dict[str, list[tuple[float, ...]]]] | None = None
    for line in text.splitlines():
        if line.startswith("train, batch "):
            rows = times["train"].setdefault(line.split()[2].rstrip(":"), {})
        elif line.startswith("sample, "):
            rows = times["sample"].setdefault(line.split()[1], {})
        elif not line.startswith("  rep "):
            rows = None  # another part (the breakdown's ablation has names with spaces)
        elif rows is not None:
            for match in _LOG_BLOCK.finditer(line.split("): ", 1)[1]):
                rows.setdefault(match.group(1), []).append(tuple(map(float, match.group(2, 3, 4, 5))))
    result: dict[str, Any] = {"train": {}, "sample": {}}
    for section, entries in times.items():
        for row, blocks in entries.items():
            contenders: dict[str, Any] = {}
            for name, values in blocks.items():
                contenders[name] = {"status": "ok"}
                for clock, i in (("cpu", 0), ("wall", 1)):
                    rates = [1 / v[i] for v in values]
                    contenders[name][RATE_KEYS[section][clock]] = summarize(
                        rates, [1 / v[i + 2] for v in values]
                    )
            result[section][row] = {"contenders": contenders}
    return result


def load_result(path: Path) -> dict[str, Any]:
    """A run's results from its JSON, or from its log (``.log``, see :func:`result_from_log`)."""
    text = path.read_text(encoding="utf-8")
    return result_from_log(text) if path.suffix == ".log" else json.loads(text)


def compare(first: dict[str, Any], second: dict[str, Any], tolerance: float = 0.03) -> str:
    """Markdown: each ratio of two runs side by side and their relative difference, on the thread's
    CPU time and on the wall-clock (the stability check), then the largest difference per clock and
    how many rows differ by more than ``tolerance``."""
    rows, worst = [], {}
    cpu = ratios(first, "cpu"), ratios(second, "cpu")
    wall = ratios(first, "wall"), ratios(second, "wall")
    for row in wall[0]:
        if row not in wall[1]:
            continue
        cells: list[Any] = [row]
        for clock, (a, b) in (("cpu", cpu), ("wall", wall)):
            if row in a and row in b:
                diff = b[row] / a[row] - 1
                worst.setdefault(clock, []).append((abs(diff), row))
                cells += [a[row], b[row], f"{100 * diff:+.1f}%"]
            else:
                cells += [None, None, None]
        rows.append(cells)
    headers = ["row", "run 1 × raw, CPU", "run 2 × raw, CPU", "difference, CPU"]
    headers += ["run 1 × raw, wall", "run 2 × raw, wall", "difference, wall"]
    text = format_table(headers, rows) + "\n"
    for clock, diffs in worst.items():
        largest, row = max(diffs)
        over = sum(d > tolerance for d, _ in diffs)
        text += (
            f"\n{clock}: largest difference {100 * largest:.1f}% ({row}); "
            f"{over} of {len(diffs)} rows differ by more than {100 * tolerance:g}%"
        )
    return text + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[SpeedConfig, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="1 (flowkit's CPU default on 2 cores): robust to load"
    )
    p.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--block-steps", type=int, nargs="+", default=[100, 30], help="steps per block, per batch")
    p.add_argument("--train-reps", type=int, default=25)
    p.add_argument("--sample-n", type=int, default=10_000)
    p.add_argument("--sample-reps", type=int, default=15)
    p.add_argument("--memory-steps", type=int, default=10)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as they are during the timings (page faults come and go)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="lockstep",
        help="lockstep: contenders at once, in turns at every network call (CPU); sandwich: one block "
        "after another, each between two raw blocks (always on a GPU)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="let the threads run on any CPU (by default the run is pinned to the last --threads CPUs)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    p.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar="JSON",
        help="print two runs' ratios side by side and exit (a .log: the ratios its repetitions logged)",
    )
    a = p.parse_args(argv)
    if a.compare:
        first, second = (load_result(f) for f in a.compare)
        print(compare(first, second))
        raise SystemExit(0)
    cfg = SpeedConfig(
        device=a.device,
        threads=a.threads,
        batches=a.batches,
        block_steps=a.block_steps,
        train_reps=a.train_reps,
        sample_n=a.sample_n,
        sample_reps=a.sample_reps,
        memory=not a.no_memory,
        memory_steps=a.memory_steps,
        peers=not a.no_peers,
        breakdown=a.breakdown,
        steady_malloc=not a.default_malloc,
        schedule=a.schedule,
        pin=not a.no_pin,
    )
    if a.quick:
        cfg = quick_config(cfg)
    return cfg, a.out


def quick_config(cfg: SpeedConfig | None = None) -> SpeedConfig:
    """Tiny sizes (seconds): for the smoke test and for checking an installation."""
    cfg = cfg or SpeedConfig()
    cfg.batches, cfg.block_steps, cfg.train_reps = [32, 64], [3, 2], 2
    cfg.sample_n, cfg.sample_reps, cfg.memory_steps = 64, 2, 2
    cfg.sample_steps = {"euler": 4, "heun": 2, "euler-maruyama": 4}
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, out = parse_args(argv)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict[str, Any]) -> None:
        result["machine"]["load_average_now"] = list(os.getloadavg())
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(tables(result), encoding="utf-8")

    # written after every workload too: under heavy load a run may be stopped before the end
    result = run_speed(cfg, log=lambda m: print(m, flush=True), partial=write)
    write(result)
    print("\n" + tables(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
