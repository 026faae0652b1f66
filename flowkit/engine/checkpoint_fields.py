"""Every field of a checkpoint checked against the pipeline before anything of it is loaded.

A checkpoint that passed its digest (:mod:`flowkit.engine.manifest`) was written by flowkit, but maybe
by another pipeline (a run directory copied over, a ``[model]`` changed by hand in an older run), and
a run of an older flowkit has no digest at all. :func:`check_fields` says, in one line, which field of
the checkpoint does not fit — the step, a tensor's shape, a generator's state, the optimiser's — so
that resume skips it as it skips a damaged file, instead of failing with a traceback half-way through
:meth:`~flowkit.engine.loop.TrainLoop.load_state_dict` (or, worse, loading a step of −50).
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowkit.engine.optim import adamw
from flowkit.errors import FlowkitError

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline

_STEP = re.compile(r"checkpoint-(\d+)\.pt")
#: AdamW's per-parameter state: the moments have the parameter's shape, ``step`` is a count.
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_fields(state: dict[str, Any], path: Path, pipeline: Pipeline) -> None:
    """Raise a one-line :class:`FlowkitError` ``"PATH: WHAT"`` naming the first field of the checkpoint
    ``state`` (read from ``path``) that ``pipeline``'s training loop could not continue from."""
    why = _first_problem(state, path, pipeline)
    if why is not None:
        raise FlowkitError(f"{path}: {why}")


def _first_problem(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    for check in (_step, _weights, _optimizer, _generators, _rest):
        why = check(state, path, pipeline)
        if why is not None:
            return why
    return None


def _step(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        return f"its step is {_describe(step)}, not an integer"
    named = _STEP.fullmatch(path.name)
    if step < 0:
        return f"its step is {step}, below 0"
    if named is not None and int(named.group(1)) != step:
        return f"its step is {step}, but its name says step {int(named.group(1))}"
    return None


def _weights(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    expected = {name: tuple(t.shape) for name, t in pipeline.model.state_dict().items()}
    parts = ["raw"]
    if pipeline.train is not None and pipeline.train.ema_decay > 0:
        parts.append("model")
    for part in parts:
        weights = state.get(part)
        if not isinstance(weights, dict):
            return f"its '{part}' weights are {_describe(weights)}, not a dict of tensors"
        missing = [name for name in expected if name not in weights]
        extra = [name for name in weights if name not in expected]
        if missing or extra:
            names = ", ".join(map(str, (missing or extra)[:3]))
            return (
                f"its '{part}' weights {'lack' if missing else 'have unknown'} {names}; they do not fit "
                "the pipeline's [model]"
            )
        for name, shape in expected.items():
            got = weights[name]
            if not isinstance(got, Tensor) or tuple(got.shape) != shape:
                return (
                    f"its '{part}' weight {name} is {_describe(got)}; the pipeline's [model] has shape "
                    f"{list(shape)}"
                )
    return None


def _optimizer(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    saved = state["optimizer"]
    params = [p for p in pipeline.model.parameters() if p.requires_grad]
    assert pipeline.train is not None
    template = adamw([torch.nn.Parameter(torch.empty(0)) for _ in params], pipeline.train).state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        return "its optimizer state is not an AdamW state (no list of param_groups)"
    if not isinstance(saved.get("state"), dict):
        return "its optimizer state is not an AdamW state (no per-parameter state)"
    groups = saved["param_groups"]
    indices: list[object] = []
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return "its optimizer state has a param group that is not a dict with a list of params"
        want = template["param_groups"][0]
        for key, value in want.items():  # a key the saving torch did not have yet is not checked
            if key != "params" and key in group and not _same_kind(group[key], value):
                return f"its optimizer's param group has {key} = {_describe(group[key])}"
        indices.extend(group["params"])
    if indices != list(range(len(params))):
        return (
            f"its optimizer state covers {len(indices)} parameters; the pipeline's [model] has {len(params)}"
        )
    for index, per_param in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            return f"its optimizer state names parameter {_describe(index)}, which the model has not"
        why = _moments(per_param, tuple(params[index].shape))
        if why is not None:
            return f"its optimizer state of parameter {index} {why}"
    return None


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _same_kind(value: object, like: object) -> bool:
    if like is None or isinstance(like, bool):  # flags: torch saves some as None (unset)
        return value is None or isinstance(value, bool)
    if isinstance(like, numbers.Real):
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(like, tuple | list):
        return (
            isinstance(value, tuple | list)
            and len(value) == len(like)
            and all(_same_kind(v, w) for v, w in zip(value, like, strict=True))
        )
    return isinstance(value, type(like))


def _moments(per_param: object, shape: tuple[int, ...]) -> str | None:
    if not isinstance(per_param, dict):
        return f"is {_describe(per_param)}, not a dict"
    for key, value in per_param.items():
        if key in _MOMENTS:
            if not isinstance(value, Tensor) or tuple(value.shape) != shape or not value.is_floating_point():
                return f"has {key} {_describe(value)}; the parameter has shape {list(shape)}"
        elif key == "step":
            count = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            if isinstance(count, bool) or not isinstance(count, int | float) or not count >= 0:
                return f"has step {_describe(value)}, not a count"
        else:
            return f"has an unknown entry {key!r}"
    return None


def _generators(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    size = pipeline.device.generator(0).get_state().numel()
    every = state.get("rank_generators") or [state["generators"]]
    if not isinstance(every, list):
        return f"its rank_generators are {_describe(every)}, not a list"
    coupled = pipeline.loss is not None and pipeline.loss.coupling is not None
    for rank, streams in enumerate(every):
        if not isinstance(streams, dict):
            return f"its generator states (rank {rank}) are {_describe(streams)}, not a dict"
        names = ["data", "loss", *(["noise"] if coupled and "noise" in streams else [])]
        for name in names:
            value = streams.get(name, _MISSING)
            if not (isinstance(value, Tensor) and value.dtype == torch.uint8 and value.shape == (size,)):
                return (
                    f"its '{name}' generator state (rank {rank}) is {_describe(value)}; a generator of "
                    f"{pipeline.device.device.type} takes a uint8 tensor of shape [{size}]"
                )
    return None


def _rest(state: dict[str, Any], path: Path, pipeline: Pipeline) -> str | None:
    updates = state.get("ema_updates", 0)
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        return f"its ema_updates is {_describe(updates)}, not a count"
    window = state.get("window")
    if window is not None and not (isinstance(window, Tensor) and window.dim() == 1):
        return f"its window of losses is {_describe(window)}, not a 1-d tensor"
    scalars = state.get("scalar_window")
    if scalars is not None and not (
        isinstance(scalars, dict)
        and all(isinstance(k, str) and isinstance(v, Tensor) and v.dim() == 1 for k, v in scalars.items())
    ):
        return "its scalar_window is not a dict of 1-d tensors"
    logged = state.get("last_logged")
    if logged is not None and (isinstance(logged, bool) or not isinstance(logged, numbers.Real)):
        return f"its last_logged is {_describe(logged)}, not a number"
    scheduler = state.get("scheduler")
    if scheduler is not None and not (
        isinstance(scheduler, dict) and isinstance(scheduler.get("last_epoch", 0), int)
    ):
        return "its scheduler state is not a learning-rate schedule's state"
    return None


def _describe(value: object) -> str:
    """What a field holds, for a message: a tensor's dtype and shape, else the value's type (and value)."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if value is _MISSING or value is None:
        return "missing"
    if isinstance(value, int | float | str | bool):
        return f"{type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"
