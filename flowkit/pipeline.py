"""Build the components a pipeline file describes, and run its stages: train → sample → evaluate.

:func:`build_pipeline` validates the whole file and builds every component (this is all that
``flowkit validate`` does), refusing impossible combinations before any work starts.
:func:`run_pipeline` then trains (if the model is trainable), samples, evaluates, and writes the run
directory. Every random draw comes from a generator seeded from ``[run] seed`` and the stage's name,
so the same file and seed give the same samples on the CPU, and changing one stage (say, the number of
training steps) leaves the draws of the others unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor, nn

import flowkit
from flowkit.config import Location, Structurer, apply_overrides, read_toml, unstructure
from flowkit.errors import CapabilityError, ConfigError, FlowkitError, suggest
from flowkit.interfaces import (
    ODE,
    BuildContext,
    Dataset,
    DeviceBackend,
    Loss,
    Metric,
    Model,
    ProbabilityPath,
    Simulator,
    TimeGrid,
)
from flowkit.params import component, param
from flowkit.registry import PluginManager

_positive = attrs.validators.gt(0)
_non_negative = attrs.validators.ge(0)


# ---------------------------------------------------------------------------------------------------
# The sections of a pipeline file that are not components
# ---------------------------------------------------------------------------------------------------


@attrs.define(frozen=True)
class RunSection:
    """``[run]``: seed, device and run directory."""

    seed: int = param(
        0, doc="Seed of every random draw; the same file and seed give the same samples on the CPU."
    )
    device: DeviceBackend = component("cpu", doc="Device backend (cpu, cuda or auto).")
    out: str = param(
        "runs/{name}",
        doc="Run directory; {name} is the pipeline file's name. An existing "
        "non-empty directory is never overwritten: a numbered sibling is used.",
    )


@attrs.define(frozen=True)
class TrainSection:
    """``[train]``: the optimisation loop (AdamW, learning-rate schedule, EMA of the weights)."""

    steps: int = param(3000, doc="Optimisation steps.", validator=_positive)
    batch_size: int = param(256, doc="Data points per step.", validator=_positive)
    lr: float = param(1e-3, doc="Peak learning rate of AdamW.", validator=_positive)
    lr_schedule: Literal["constant", "cosine"] = param(
        "cosine", doc="Learning-rate schedule after warm-up: constant, or cosine decay to zero."
    )
    warmup_steps: int = param(0, doc="Steps of linear learning-rate warm-up.", validator=_non_negative)
    weight_decay: float = param(0.0, doc="AdamW weight decay.", validator=_non_negative)
    grad_clip: float = param(
        0.0, doc="Clip the gradient norm to this value (0: no clipping).", validator=_non_negative
    )
    ema_decay: float = param(
        0.999,
        doc="Decay of the exponential moving average of the weights used for "
        "sampling (0: sample with the raw weights).",
        validator=[_non_negative, attrs.validators.lt(1)],
    )
    log_every: int = param(100, doc="Steps between logged losses.", validator=_positive)
    checkpoint_every: int = param(
        0, doc="Steps between checkpoints (0: only the final weights).", validator=_non_negative
    )


@attrs.define(frozen=True)
class SampleSection:
    """``[sample]``: how samples are drawn from the model."""

    simulator: Simulator = component("heun", doc="Fixed-step simulator (euler, heun, euler-maruyama).")
    dynamics: ODE = component("flow", doc="What is integrated: flow (the ODE), extension-sde, langevin.")
    grid: TimeGrid = component("uniform", doc="Time grid of the simulator's steps.")
    steps: int = param(50, doc="Simulator steps from t = 0 (noise) to t = 1 (data).", validator=_positive)
    n: int = param(2000, doc="Number of samples drawn.", validator=_positive)
    trajectories: int = param(256, doc="Sample paths recorded for plots (0: none).", validator=_non_negative)


@attrs.define(frozen=True)
class EvaluateSection:
    """``[evaluate]``: the distance between samples and held-out data, and its noise floor."""

    metric: Metric = component("w2", doc="Distance between sample sets (w2, sliced-w2, energy).")
    n: int = param(
        2000,
        doc="Held-out data points compared with as many samples; the noise floor is the "
        "distance between two such draws of data.",
        validator=_positive,
    )
    floor_repeats: int = param(
        3,
        doc="Fresh draws of data whose distances to the held-out set are averaged into the noise floor "
        "(one draw fluctuates by 15-20% at n = 2000).",
        validator=_positive,
    )


@attrs.define(frozen=True)
class ReportSection:
    """``[report]``: what the reporters show and write."""

    progress: bool = param(True, doc="Show progress bars (off with --quiet).")
    plots: bool = param(True, doc="Write PNG plots of samples, trajectories and the vector field (2D).")
    log: bool = param(True, doc="Write metrics.jsonl, one JSON object per logged step.")


@attrs.define(frozen=True)
class FlowkitSection:
    """``[flowkit]``: written into resolved pipelines for the record; ignored when loaded."""

    version: str = param("", doc="flowkit version that wrote the file.")
    plugins: dict[str, str] = param(factory=dict, doc="Plugin name -> 'distribution version'.")
    source: str = param("", doc="Pipeline file the run was started from.")
    command: str = param("", doc="Command line of the run.")


#: Tables of a pipeline file, in build order; component tables name their kind.
TABLES: dict[str, str | type] = {
    "flowkit": FlowkitSection,
    "run": RunSection,
    "data": "dataset",
    "path": "path",
    "model": "model",
    "loss": "loss",
    "train": TrainSection,
    "sample": SampleSection,
    "evaluate": EvaluateSection,
    "report": ReportSection,
}


@attrs.define
class Pipeline:
    """Every built component and section of a pipeline file."""

    source: str
    run: RunSection
    dataset: Dataset
    path: ProbabilityPath
    model: Model
    loss: Loss | None
    train: TrainSection | None
    sample: SampleSection
    evaluate: EvaluateSection
    report: ReportSection
    context: BuildContext

    @property
    def device(self) -> DeviceBackend:
        return self.run.device

    def resolved(self, manager: PluginManager | None = None, command: str = "") -> dict[str, Any]:
        """The pipeline with every default filled in, as TOML-ready data."""
        plugins = (
            {}
            if manager is None
            else {p.name: f"{p.dist} {p.version}".strip() for p in manager.plugins.values()}
        )
        data: dict[str, Any] = {
            "flowkit": {
                "version": flowkit.__version__,
                "plugins": plugins,
                "source": self.source,
                "command": command,
            }
        }
        for table in ("run", "data", "path", "model", "loss", "train", "sample", "evaluate", "report"):
            value = getattr(self, {"data": "dataset"}.get(table, table))
            if value is not None:
                data[table] = unstructure(value)
        return data


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed for ``stage`` derived from the run seed (independent streams per stage)."""
    return int(hashlib.sha256(f"{seed}:{stage}".encode()).hexdigest()[:15], 16)


def build_pipeline(
    file: str | Path, overrides: Sequence[str] = (), manager: PluginManager | None = None
) -> Pipeline:
    """Read, validate and build a pipeline file (with ``--set`` overrides). Trains nothing."""
    manager = manager or PluginManager()
    source = str(file)
    raw, overridden = apply_overrides(read_toml(file), overrides, source)
    top = Location(source, (), overridden)
    for table in raw:
        if table not in TABLES:
            raise ConfigError(
                f"{source}: unknown table [{table}].{suggest(table, TABLES)} "
                f"Valid tables: {', '.join(TABLES)}"
            )
    for table in ("data", "path", "model"):
        if table not in raw:
            kind = TABLES[table]
            raise ConfigError(
                f"{source}: missing table [{table}]; add one naming a registered {kind}, e.g. "
                f'[{table}] kind = "{_first(manager, kind)}" '
                f"(known: {', '.join(manager.registry.names(kind))})"
            )
    context = BuildContext(source=source)
    build = Structurer(manager.registry, context)
    # The sections' own tables are validated before anything is built, so a typo fails fast.
    run = build.structure(RunSection, raw.get("run", {}), top.child("run"))
    context.device = run.device
    context.dataset = build.build("dataset", raw["data"], top.child("data"))
    context.path = build.build("path", raw["path"], top.child("path"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(run.seed, "init"))  # the initial weights depend on the seed only
        model = context.model = build.build("model", raw["model"], top.child("model"))
    loss = train = None
    if model.trainable:
        if "loss" not in raw:
            raise ConfigError(
                f"{source}: missing table [loss]; model '{model.registered_name}' is trained, so "
                f"name a loss (known: {', '.join(manager.registry.names('loss'))})"
            )
        loss = build.build("loss", raw["loss"], top.child("loss"))
        _locate(lambda: loss.check(context.path), source, "[loss]")
        train = build.structure(TrainSection, raw.get("train", {}), top.child("train"))
        context.roles = {loss.trains: loss.model_role(model, context.path)}
    else:
        for table in ("loss", "train"):
            if table in raw:
                raise ConfigError(
                    f"{source}: [{table}] is set, but model '{model.registered_name}' is exact "
                    f"and is not trained; remove [{table}]"
                )
        context.roles = dict(model.roles())  # type: ignore[attr-defined]
    sample = build.structure(SampleSection, raw.get("sample", {}), top.child("sample"))
    _locate(lambda: sample.simulator.check(sample.dynamics), source, "[sample]")
    evaluate = build.structure(EvaluateSection, raw.get("evaluate", {}), top.child("evaluate"))
    if evaluate.n > sample.n:
        raise (
            top.child("evaluate")
            .child("n")
            .error(
                f"{evaluate.n} held-out points need as many samples, but [sample] n = {sample.n}; "
                f"raise [sample] n or lower [evaluate] n"
            )
        )
    report = build.structure(ReportSection, raw.get("report", {}), top.child("report"))
    build.structure(FlowkitSection, raw.get("flowkit", {}), top.child("flowkit"))
    return Pipeline(
        source, run, context.dataset, context.path, model, loss, train, sample, evaluate, report, context
    )


def _first(manager: PluginManager, kind: str) -> str:
    names = manager.registry.names(kind)
    return names[0] if names else "NAME"


def _locate(check: Any, source: str, table: str) -> None:
    try:
        check()
    except CapabilityError as exc:
        raise CapabilityError(f"{source}: {table}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------


@attrs.define
class Run:
    """A pipeline being run: what the lifecycle hooks receive."""

    pipeline: Pipeline
    directory: Path
    hook: Any
    quiet: bool = False
    metrics: dict[str, Any] = attrs.Factory(dict)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device.device


def run_directory(pipeline: Pipeline, out: str | None = None) -> Path:
    """The run directory: ``--out`` or ``[run] out``, never an existing non-empty one."""
    name = Path(pipeline.source).stem
    base = Path(out if out is not None else pipeline.run.out.replace("{name}", name))
    if not base.name:  # "." or "": number a sibling of the folder it names
        base = base.resolve()
    candidate, i = base, 1
    while not _claim(candidate):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def _claim(directory: Path) -> bool:
    """Make ``directory`` ours: a new one, or an empty one nobody else has claimed (atomic).

    Two runs started together must never share a directory: creating the directory, or the marker
    file in an existing empty one, succeeds for exactly one of them.
    """
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        if not directory.is_dir() or any(directory.iterdir()):
            return False
    try:
        with open(directory / "pipeline.toml", "x", encoding="utf-8"):
            return True
    except FileExistsError:
        return False


def run_pipeline(
    pipeline: Pipeline,
    manager: PluginManager,
    out: str | None = None,
    quiet: bool = False,
    command: str | None = None,
) -> Run:
    """Train (if the model is trainable), sample and evaluate; write the run directory.

    The directory holds ``pipeline.toml`` (resolved, with versions and seed), ``model.pt`` (weights only),
    ``samples.npy``, ``metrics.json`` and what the reporter plugins write (plots, logs).
    """
    directory = run_directory(pipeline, out)
    run = Run(pipeline, directory, manager.hook, quiet=quiet)
    command = command if command is not None else shlex.join(["flowkit", *sys.argv[1:]])
    _write_toml(directory / "pipeline.toml", pipeline.resolved(manager, command))
    backend = pipeline.device
    pipeline.model.to(backend.device)
    for module in pipeline.context.roles.values():
        module.to(backend.device)
    run.hook.flowkit_run_start(run=run)
    if pipeline.model.trainable:
        with _stage(run, "train"):
            train(run)
    with _stage(run, "sample"):
        samples, trajectory = sample(run)
    with _stage(run, "evaluate"):
        evaluate(run, samples, trajectory)
    _write_json(run.directory / "metrics.json", run.metrics)  # after the stage: with its own timing
    run.hook.flowkit_run_end(run=run, metrics=run.metrics)
    return run


@contextlib.contextmanager
def _stage(run: Run, name: str) -> Iterator[None]:
    run.hook.flowkit_stage(run=run, stage=name, state="start")
    started = time.perf_counter()
    try:
        yield
        run.pipeline.device.synchronize()
        run.metrics[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    finally:  # reporters close what they opened (progress bars) even when the stage fails
        run.hook.flowkit_stage(run=run, stage=name, state="end")


def _lr_lambda(cfg: TrainSection) -> Any:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class WeightAverage:
    """Exponential moving average of a network's parameters: ``avg <- d_k avg + (1 - d_k) param``.

    The decay warms up, ``d_k = min(decay, (1 + k) / (10 + k))`` at update ``k``: with a fixed 0.999
    the average would still hold 37% of the random initial weights after 1,000 steps (5% after
    3,000). One fused ``_foreach_lerp_`` per step over preallocated copies (``AveragedModel`` also
    rebuilds parameter lists on every update, which costs more than the lerp itself).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network = network
        self.decay = decay
        self.updates = 0
        self.names = [name for name, _ in network.named_parameters()]
        self.params = [p for _, p in network.named_parameters()]
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current parameters."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(self.averages, self.params, 1.0 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The network's state dict with the averaged parameters (buffers as they are)."""
        state = dict(self.network.state_dict())
        state.update({name: avg.clone() for name, avg in zip(self.names, self.averages, strict=True)})
        return state


def _adamw(params: list[nn.Parameter], cfg: TrainSection) -> torch.optim.Optimizer:
    """AdamW with its fused kernel where the device has one (CPU and CUDA in torch >= 2.4): the same
    update in one kernel, about 3x faster than the default per-tensor loop for an MLP on the CPU."""
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device without a fused implementation
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class TrainLoop:
    """The optimisation of a pipeline's network: AdamW, a learning-rate schedule and an EMA of the weights.

    :meth:`step` is one optimisation step — draw a batch, the loss, backward, update — exactly what
    ``flowkit run`` does per step (benchmarks time it). The data and loss draws come from generators
    seeded from ``[run] seed``.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        cfg, loss = pipeline.train, pipeline.loss
        if cfg is None or loss is None:
            raise CapabilityError(
                f"{pipeline.source}: model '{pipeline.model.registered_name}' is not trained"
            )
        self.pipeline, self.cfg, self.loss_fn = pipeline, cfg, loss
        self.backend = pipeline.device
        self.device = self.backend.device
        self.network = pipeline.model
        self.role = pipeline.context.roles[loss.trains]
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        if not self.params:
            raise CapabilityError(
                f"{pipeline.source}: [model]: model '{self.network.registered_name}' has "
                "no trainable parameters"
            )
        self.optimizer = _adamw(self.params, cfg)
        # A constant rate needs no scheduler: skipping it keeps the hot loop as lean as a hand-written one.
        scheduled = cfg.lr_schedule != "constant" or cfg.warmup_steps > 0
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg)) if scheduled else None
        )
        self.ema = WeightAverage(self.network, cfg.ema_decay) if cfg.ema_decay > 0 else None
        seed = pipeline.run.seed
        self.data_gen = self.backend.generator(stage_seed(seed, "data"))
        self.loss_gen = self.backend.generator(stage_seed(seed, "loss"))
        self.network.train()

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> Tensor:
        """One optimisation step; returns the loss as a detached scalar tensor (no device sync)."""
        z = self.pipeline.dataset.sample(self.cfg.batch_size, generator=self.data_gen, device=self.device)
        with self.backend.autocast():
            loss = self.loss_fn(self.role, self.pipeline.path, z, generator=self.loss_gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return loss.detach()

    def weights(self, step: int) -> dict[str, Any]:
        """Weights-only state: ``model`` (what sampling uses: the EMA where enabled) and ``raw``."""
        if self.ema is None:
            return {"step": step, "model": self.network.state_dict()}
        return {"step": step, "model": self.ema.state_dict(), "raw": self.network.state_dict()}

    def finish(self) -> None:
        """Put the weights sampling should use (the EMA, where enabled) into the network."""
        if self.ema is not None:
            self.network.load_state_dict(self.ema.state_dict())
        self.network.eval()


def train(run: Run) -> None:
    """Run the :class:`TrainLoop` for ``[train] steps``, logging, checkpointing and calling the hooks."""
    pipe = run.pipeline
    loop = TrainLoop(pipe)
    cfg, hook = loop.cfg, run.hook
    window: list[Tensor] = []  # losses since the last log; summed then, so no per-step device sync
    step = 0
    try:
        for step in range(1, cfg.steps + 1):
            loss = loop.step()
            window.append(loss)
            hook.flowkit_train_step(run=run, step=step, loss=loss)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean_loss = float(torch.stack(window).mean())
                window.clear()
                if not math.isfinite(mean_loss):
                    saved = _save_weights(run, loop.weights(step), "model-diverged.pt")
                    raise FlowkitError(
                        f"{pipe.source}: training diverged at step {step} (loss {mean_loss}); "
                        f"lower [train] lr (now {cfg.lr}) or set [train] grad_clip. "
                        f"The weights are in {saved}"
                    )
                hook.flowkit_log(run=run, step=step, metrics={"loss": mean_loss, "lr": loop.lr})
                run.metrics["final_loss"] = mean_loss
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_weights(run, loop.weights(step), f"checkpoint-{step:07d}.pt")
    except KeyboardInterrupt:
        saved = _save_weights(run, loop.weights(step), "model-interrupted.pt")
        raise FlowkitError(
            f"interrupted at training step {step}; the weights so far are in {saved}"
        ) from None
    _save_weights(run, loop.weights(cfg.steps), "model.pt")
    loop.finish()
    run.metrics["train_steps"] = cfg.steps


def _save_weights(run: Run, state: dict[str, Any], name: str) -> Path:
    """Write weights only (loadable with ``torch.load(weights_only=True)``), atomically."""
    target = run.directory / name
    tmp = target.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)  # a crash mid-write never leaves a truncated checkpoint under the real name
    run.hook.flowkit_checkpoint(run=run, step=state["step"], path=str(target))
    return target


@torch.no_grad()
def sample(run: Run) -> tuple[Tensor, Tensor | None]:
    """Draw ``[sample] n`` samples from ``p_init`` through the simulator; returns them on the CPU,
    with the trajectories of the first ``[sample] trajectories`` of them ``(T + 1, K, *D)``."""
    pipe = run.pipeline
    cfg, backend = pipe.sample, pipe.device
    t_start, t_end = pipe.path.t_range
    ts = cfg.grid(cfg.steps, t_start, t_end).to(run.device)
    generator = backend.generator(stage_seed(pipe.run.seed, "sample"))
    shape = (cfg.n, *pipe.dataset.shape)
    x0 = pipe.path.sample_prior(shape, generator=generator, device=run.device)

    def progress(done: int, total: int) -> None:
        run.hook.flowkit_sampling_progress(run=run, done=done, total=total)

    def draw(x: Tensor) -> Tensor:
        return cfg.simulator.simulate(cfg.dynamics, x, ts, generator=generator)

    # A backend may capture the whole fixed-step sampler (a CUDA graph); per-step hooks cannot run
    # inside a replay, so progress is then reported once, at the end.
    captured = backend.compile_sampler(draw, x0)
    if captured is draw:
        samples = cfg.simulator.simulate(cfg.dynamics, x0, ts, generator=generator, progress=progress)
    else:
        samples = captured(x0)
        progress(cfg.steps, cfg.steps)
    run.metrics["nfe"] = cfg.simulator.last_nfe
    run.metrics["sample_steps"] = cfg.steps
    trajectory = None
    if cfg.trajectories:
        traj_gen = backend.generator(stage_seed(pipe.run.seed, "trajectory"))
        trajectory = cfg.simulator.simulate_trajectory(
            cfg.dynamics, x0[: cfg.trajectories], ts, generator=traj_gen
        ).cpu()
    samples = samples.float().cpu()
    np.save(run.directory / "samples.npy", samples.numpy())
    return samples, trajectory


def evaluate(run: Run, samples: Tensor, trajectory: Tensor | None) -> None:
    """Distance between samples and held-out data, and the noise floor, into ``run.metrics``.

    ``run_pipeline`` writes ``metrics.json`` after this stage; non-finite samples write it here,
    before the error, so the record of a failed run is kept.
    """
    pipe = run.pipeline
    cfg = pipe.evaluate
    generator = torch.Generator().manual_seed(stage_seed(pipe.run.seed, "evaluate"))
    reference = pipe.dataset.sample(cfg.n, generator=generator).float().cpu()
    fresh = [pipe.dataset.sample(cfg.n, generator=generator).float().cpu() for _ in range(cfg.floor_repeats)]
    finite = torch.isfinite(samples.flatten(1)).all(dim=1)
    metrics = run.metrics
    metrics.update(
        {
            "metric": cfg.metric.registered_name,
            "n_evaluated": cfg.n,
            "seed": pipe.run.seed,
            # float reductions depend on the thread count: same seed and threads, same samples
            "torch_threads": torch.get_num_threads(),
        }
    )
    if not bool(finite.all()):
        bad = int((~finite).sum())
        metrics.update({"distance": None, "noise_floor": None, "non_finite_samples": bad})
        _write_json(run.directory / "metrics.json", metrics)
        raise FlowkitError(
            f"{pipe.source}: sampling produced {bad} non-finite samples of {len(samples)} "
            f"(saved in {run.directory / 'samples.npy'}); try more [sample] steps, a smaller "
            f"[sample] dynamics sigma, or check the training loss"
        )
    distance = cfg.metric(samples[: cfg.n], reference)
    floors = torch.tensor([cfg.metric(data, reference) for data in fresh], dtype=torch.float64)
    floor = float(floors.mean())
    metrics.update(
        {
            "noise_floor_std": float(floors.std()) if len(floors) > 1 else 0.0,
            "noise_floor_repeats": len(floors),
            "distance": distance,
            "noise_floor": floor,
            "ratio_to_floor": distance / floor if floor > 0 else None,
        }
    )
    run.hook.flowkit_samples_ready(run=run, samples=samples, reference=reference, trajectory=trajectory)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_toml(path: Path, data: dict[str, Any]) -> None:
    import tomli_w

    path.write_text(tomli_w.dumps(data), encoding="utf-8")


def load_weights(path: str | Path, network: nn.Module, which: str = "model") -> int:
    """Load a run's weights into ``network``; ``which``: ``"model"`` (EMA) or ``"raw"``. Returns the step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if which not in state:
        raise FlowkitError(
            f"{path}: no '{which}' weights (has: {', '.join(k for k in state if k != 'step')})"
        )
    network.load_state_dict(state[which])
    return int(state.get("step", 0))
