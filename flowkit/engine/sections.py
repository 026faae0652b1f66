"""The tables of a pipeline file that are not components, and the order of all of them.

:data:`TABLES` is the one statement of the table order: build order, the order of a resolved
``pipeline.toml``, and of the docs. A component table names its kind; the others are attrs classes.
Plugins add tables of their own (``registry.add_table``); those follow these in a resolved file.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from flowkit.interfaces import ODE, DeviceBackend, Guider, Metric, Simulator, TimeGrid
from flowkit.params import component, param

_positive = attrs.validators.gt(0)
_non_negative = attrs.validators.ge(0)
_at_most_1e9 = attrs.validators.le(10**9)
#: What torch.manual_seed and numpy's generators accept: a plugin may pass the run seed on to either.
_seed_range = [attrs.validators.ge(0), attrs.validators.lt(2**64)]


@attrs.define(frozen=True)
class RunSection:
    """``[run]``: seed, device and run directory."""

    seed: int = param(
        0,
        doc="Seed of every random draw (0 <= seed < 2^64); the same file and seed give the same samples "
        "on the CPU.",
        validator=_seed_range,
    )
    device: DeviceBackend = component("cpu", doc="Device backend (cpu, cuda or auto).")
    out: str = param(
        "runs/{name}",
        doc="Run directory; {name} is the pipeline file's name. An existing "
        "non-empty directory is never overwritten: a numbered sibling is used.",
    )
    distributed: Literal["auto", "gloo", "nccl", "off"] = param(
        "auto",
        doc="Process-group backend under torchrun: auto (NCCL on CUDA, gloo otherwise), gloo, nccl, or "
        "off (refuse more than one process). One process needs none.",
    )
    distributed_timeout: float = param(
        300.0,
        doc="Seconds a process waits for the others in a collective before the run fails (bounds a hang "
        "when a rank stops answering).",
        validator=_positive,
    )


@attrs.define(frozen=True)
class GuideSection:
    """``[train] guide``: a weaker model of the same task trained alongside the model, on the same
    batches with its own optimiser, loss draws and weight average: the guide of autoguidance
    (``[sample] guidance = { kind = "auto", guide = "alongside" }``; docs/math.md, "Autoguidance")."""

    model: dict[str, Any] = param(
        factory=dict,
        doc="Keys of [model] the guide changes, e.g. { hidden = [32, 32] } for a smaller network (with "
        "kind: a table of its own); empty: the same network.",
    )
    steps: int | None = param(
        None,
        doc="Steps the guide trains, on the first batches of the run; then it is kept as it is "
        "(default: all of [train] steps).",
        validator=attrs.validators.optional([_positive, _at_most_1e9]),
    )
    lr: float | None = param(
        None,
        doc="Peak learning rate of the guide's AdamW, on [train]'s schedule over the guide's steps "
        "(default: [train] lr).",
        validator=attrs.validators.optional(_positive),
    )
    ema_decay: float | None = param(
        None,
        doc="Decay of the guide's weight average, whose weights guide the samples (0: the raw weights; "
        "default: [train] ema_decay).",
        validator=attrs.validators.optional([_non_negative, attrs.validators.lt(1)]),
    )


@attrs.define(frozen=True)
class TrainSection:
    """``[train]``: the optimisation loop (AdamW, learning-rate schedule, EMA of the weights)."""

    steps: int = param(3000, doc="Optimisation steps (at most 10^9).", validator=[_positive, _at_most_1e9])
    batch_size: int = param(
        256,
        doc="Data points per step: the global batch, split evenly across torchrun's processes.",
        validator=_positive,
    )
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
        0,
        doc="Steps between checkpoints of the whole training state (0: only the final one). "
        "SIGINT/SIGTERM also write one; `flowkit resume` continues from the newest.",
        validator=_non_negative,
    )
    keep_checkpoints: int = param(
        3, doc="Checkpoints kept: older ones are deleted (0: keep every one).", validator=_non_negative
    )
    label_dropout: float = param(
        0.1,
        doc="Conditional models: probability of training a sample with the null label instead of its "
        "class, which trains the unconditional model that classifier-free guidance needs "
        "(unlabelled data: unused).",
        validator=[_non_negative, attrs.validators.lt(1)],
    )
    init: str = param(
        "",
        doc="A finished run (relative to the pipeline file) whose sampling weights the network starts "
        "from, e.g. a reflow student from its teacher (empty: a fresh initialisation).",
    )
    guide: GuideSection | None = param(
        None,
        doc="A weaker model trained alongside, the guide of autoguidance: { model = { hidden = [32] }, "
        "steps = 500 } (none when absent).",
    )


@attrs.define(frozen=True)
class SampleSection:
    """``[sample]``: how samples are drawn from the model."""

    simulator: Simulator = component(
        "heun", doc="Simulator (euler, heun, midpoint, rk4, euler-maruyama, dopri5, dpm-solver++, edm)."
    )
    dynamics: ODE = component("flow", doc="What is integrated: flow (the ODE), extension-sde, langevin.")
    grid: TimeGrid = component(
        "uniform",
        doc="Time grid (uniform, power, karras): the steps of a fixed-step simulator (an adaptive one "
        "reports there).",
    )
    steps: int = param(
        50, doc="Simulator steps from t = 0 (noise) to t = 1 (data).", validator=[_positive, _at_most_1e9]
    )
    n: int = param(2000, doc="Number of samples drawn.", validator=_positive)
    trajectories: int = param(256, doc="Sample paths recorded for plots (0: none).", validator=_non_negative)
    guidance: Guider | None = component(
        None,
        doc="Conditional models: the guider, { kind = ..., scale = w, classes = ... } (kind: cfg when "
        "absent; cfg, interval, apg, cfg-zero-star, cfg++, rescale); without it, every class, unguided.",
    )


def _above_low(instance: DequantizeSection, attribute: attrs.Attribute, value: float) -> None:
    if not value > instance.low:
        raise ValueError(f"high = {value} must be above low = {instance.low}")


@attrs.define(frozen=True)
class DequantizeSection:
    """``[evaluate] likelihood.dequantize``: data on discrete levels, dequantised with uniform noise.

    The data's values are ``bins`` equally spaced levels from ``low`` to ``high`` (8-bit images scaled
    as ``k / 127.5 - 1``: ``bins = 256``, ``[-1, 1]``). Each value ``k`` becomes ``low + (k + u) w`` with
    ``u ~ U[0, 1)`` and bin width ``w = (high - low) / bins``, and bits per dimension count the bins:
    ``(nll - D log w) / (D log 2)`` (docs/math.md, "Dequantisation").
    """

    bins: int = param(
        256, doc="Number of levels of the data (256 for 8-bit images).", validator=attrs.validators.ge(2)
    )
    low: float = param(-1.0, doc="Value of the lowest level.")
    high: float = param(1.0, doc="Value of the highest level.", validator=_above_low)


@attrs.define(frozen=True)
class LikelihoodSection:
    """``[evaluate] likelihood``: log-likelihood of held-out data by the change of variables.

    The ODE (``dynamics``, the probability-flow ODE of a score model) is integrated from the data
    (``t = 1``) back to the prior (``t = 0``) with ``simulator`` (over ``steps`` of ``grid`` for a
    fixed-step one; an adaptive one takes its tolerances in its own table, e.g.
    ``simulator = { kind = "dopri5", rtol = 1e-4, atol = 1e-4 }``), accumulating the exact divergence
    or Hutchinson's estimate of it (docs/math.md, "Likelihood").
    """

    estimator: Literal["exact", "hutchinson"] = param(
        "exact", doc="Divergence: exact (one vector-Jacobian product per dimension) or hutchinson."
    )
    probes: int = param(
        1, doc="Hutchinson probes per point, fixed along each trajectory.", validator=_positive
    )
    noise: Literal["rademacher", "gaussian"] = param(
        "rademacher", doc="Distribution of Hutchinson's probes (rademacher has the smaller variance)."
    )
    simulator: Simulator = component(
        "rk4", doc="ODE simulator of the augmented state (any, fixed-step or adaptive)."
    )
    steps: int = param(
        15, doc="Steps of a fixed-step simulator from t = 1 back to t = 0.", validator=_positive
    )
    grid: TimeGrid = component(
        "uniform", doc="Time grid of the steps (mirrored: it runs from the data back)."
    )
    dynamics: ODE = component(
        "flow", doc="The ODE whose likelihood is computed (flow: the model's velocity)."
    )
    n: int = param(
        1000, doc="Held-out data points (drawn from the dataset with the run's seed).", validator=_positive
    )
    batch_size: int = param(
        1000,
        doc="Points integrated together (bounds the memory of the autograd graphs).",
        validator=_positive,
    )
    dequantize: DequantizeSection | None = param(
        None, doc="Data on discrete levels: { bins = 256, low = -1.0, high = 1.0 } (off when absent)."
    )


@attrs.define(frozen=True)
class EvaluateSection:
    """``[evaluate]``: the distance between samples and held-out data, and its noise floor."""

    metric: Metric = component(
        "w2", doc="Distance between sample sets (w2, sliced-w2, energy; images: fid, kid)."
    )
    n: int = param(
        2000,
        doc="Held-out data points compared with as many samples; the noise floor is the "
        "distance between two such draws of data.",
        validator=_positive,
    )
    floor_repeats: int = param(
        3,
        doc="Fresh draws of data whose distances to the held-out set are averaged into the noise floor "
        "(one draw fluctuates; more draws give a steadier floor; at most 100).",
        validator=[_positive, attrs.validators.le(100)],
    )
    likelihood: LikelihoodSection | None = param(
        None, doc="Log-likelihood of held-out data (nll, bits_per_dim): a table of settings; off when absent."
    )


@attrs.define(frozen=True)
class FlowkitSection:
    """``[flowkit]``: written into resolved pipelines for the record; ignored when loaded."""

    version: str = param("", doc="flowkit version that wrote the file.")
    plugins: dict[str, str] = param(factory=dict, doc="Plugin name -> 'distribution version'.")
    source: str = param("", doc="Pipeline file the run was started from.")
    command: str = param("", doc="Command line of the run.")
    history: list[str] = param(
        factory=list, doc="Each `flowkit resume` of the run: the step it continued from and its command."
    )


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
}

#: Component tables a pipeline file must have.
REQUIRED = ("data", "path", "model")
