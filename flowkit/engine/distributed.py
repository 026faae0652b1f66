"""Data-parallel training: the process group, the ranks, and what they share.

A run launched by ``torchrun`` (or ``flowkit run --nproc N``, which starts the same launcher) is one
process per rank. torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address;
:func:`start` joins the process group with the ``[run] distributed`` backend (``auto``: NCCL for a
CUDA device, gloo otherwise) and a timeout, so a rank that stops answering ends every rank within
``[run] distributed_timeout`` seconds instead of hanging.

What the ranks share, and how (the rest of the engine asks this module, never ``torch.distributed``):

* ``[train] batch_size`` is the *global* batch: each rank draws ``batch_size / world_size`` points
  (:func:`check_world` refuses one that does not divide, at build time);
* rank ``r``'s data and loss generators are seeded from ``[run] seed``, the stage and ``r``
  (:func:`rank_seed`); rank 0's are those of a one-process run;
* the model is wrapped in ``DistributedDataParallel`` (gradients averaged over ranks), so the
  weights, the optimiser state and the EMA are identical on every rank;
* the logged losses are averaged over the ranks (:func:`mean_over_ranks`): the loss of the global batch;
* only rank 0 writes the run directory, calls the reporters, samples and evaluates.

This module imports nothing of the rest of the engine.
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import attrs
import torch
from torch import Tensor, nn

from flowkit.engine.seeds import stage_seed
from flowkit.errors import ConfigError, FlowkitError
from flowkit.host import launched, launched_size

T = TypeVar("T")

#: ``[run] distributed`` settings: a torch.distributed backend, ``auto``, or ``off``.
BACKENDS = ("auto", "gloo", "nccl", "off")


@attrs.frozen
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its machine,
    and the torch.distributed ``backend`` (``None`` for a one-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether there is a process group (more than one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory, reports, samples and evaluates."""
        return self.rank == 0

    def describe(self) -> str:
        """``rank 1 of 2``: how messages name a process."""
        return f"rank {self.rank} of {self.size}"


_world = World()
# Whether this process has joined a process group of several ranks (it then ends through end_process).
_joined = False


def current_world() -> World:
    """The :class:`World` of this process (one rank of one until :func:`start`)."""
    return _world


def resolve_backend(setting: str, device: torch.device, source: str = "[run]") -> str | None:
    """The torch.distributed backend for ``[run] distributed = setting`` on ``device`` under torchrun
    (``None`` for ``off``): ``auto`` is NCCL for CUDA (one GPU per process), gloo otherwise."""
    if setting == "off":
        return None
    if setting == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if setting == "nccl" and device.type != "cuda":
        raise ConfigError(
            f'{source}: [run] distributed = "nccl" needs a CUDA device, but [run] device is on '
            f'{device.type}; use "gloo" or "auto" (gloo on the CPU, NCCL on CUDA)'
        )
    return setting


def check_world(source: str, batch_size: int | None, setting: str) -> None:
    """Refuse, at build time, a launch the pipeline cannot run: ``[train] batch_size`` (the global
    batch) not divisible by the number of processes, or ``[run] distributed = "off"`` under torchrun."""
    size = launched_size()
    if size <= 1:
        return
    if setting == "off":
        raise ConfigError(
            f'{source}: [run] distributed = "off", but torchrun started {size} processes '
            '(WORLD_SIZE); set [run] distributed = "auto", or run one process'
        )
    if batch_size is not None and batch_size % size:
        lower = batch_size - batch_size % size
        raise ConfigError(
            f"{source}: [train] batch_size = {batch_size} is the global batch and must split evenly "
            f"across the {size} processes (WORLD_SIZE); use a multiple of {size}, e.g. "
            f"{lower or size} or {lower + size}"
        )


def start(setting: str, device: torch.device, timeout_s: float, source: str = "[run]") -> World:
    """Join the process group torchrun set up (a no-op outside torchrun or with one process).

    ``timeout_s`` bounds every collective: a rank that stops answering ends the others with an error
    after at most that long. Under NCCL the process's GPU is ``cuda:LOCAL_RANK``.
    """
    global _world
    found = launched()
    if found is None or found[1] <= 1:
        _world = World()
        return _world
    rank, size, local = found
    backend = resolve_backend(setting, device, source)
    if backend is None:
        raise ConfigError(f'{source}: [run] distributed = "off", but torchrun started {size} processes')
    import torch.distributed as dist

    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        timeout = datetime.timedelta(seconds=timeout_s)
        if backend == "nccl":  # bound to its GPU: NCCL connects eagerly, and barriers use that GPU
            dist.init_process_group(backend, timeout=timeout, device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend, timeout=timeout)
    global _joined
    _joined = True
    _world = World(rank, size, local, backend)
    return _world


def joined() -> bool:
    """Whether this process joined a process group of several ranks (see :func:`end_process`)."""
    return _joined


def end_process(code: int) -> NoReturn:
    """End a rank that joined a process group: flush its output, then ``os._exit(code)``.

    Its work is done and written by then (every file flowkit writes is fsynced). Skipping the
    interpreter's teardown matters because a gloo process group can outlive
    ``destroy_process_group`` while Python objects still hold it (DDP's reducer does): freed during
    interpreter finalisation, its C++ threads can abort the process (SIGABRT, "terminate called
    without an active exception"), which torchrun reports as a failed run after a finished one
    (how often: ``benchmarks/reference/engine-notes.md``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leave_together() -> None:
    """Every rank leaves the process group at the same point: a barrier (bounded by ``[run]
    distributed_timeout``, like every collective), then ``destroy_process_group`` on each rank.

    The engine calls it on every rank at the end of training, where the ranks are in step anyway (the
    final checkpoint gathered their generators), before rank 0 samples and evaluates alone. So no rank
    tears the group down while another still holds its end of the connections (gloo's background
    threads then meet a peer that is gone), and no rank waits through sampling, which may take longer
    than any collective timeout. :func:`current_world` still names this rank (messages,
    ``world_size``); a collective after this fails loudly (no process group)."""
    if not _world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def stop() -> None:
    """Leave the process group where :func:`leave_together` did not (each rank on its own: no
    collective, so a failing rank never waits for the others), and forget this process's rank."""
    global _world
    if _world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _world = World()


def rank_seed(seed: int, stage: str, rank: int, resumed_at: int | None = None) -> int:
    """The seed of rank ``rank``'s generator for ``stage``: rank 0's is the one-process run's
    (:func:`~flowkit.engine.seeds.stage_seed`), every other rank's an independent stream.

    ``resumed_at = k``: a fresh stream for a rank whose saved state cannot be used because the run was
    resumed at step ``k`` with another number of processes (see ``docs/math.md``)."""
    name = stage if rank == 0 else f"{stage}:rank{rank}"
    if resumed_at is not None:
        name += f":resumed-at-{resumed_at}"
    return stage_seed(seed, name)


def per_rank_batch(batch_size: int, world: World) -> int:
    """The points each rank draws per step: the global batch over the number of processes."""
    return batch_size // world.size


def wrap_model(network: nn.Module, world: World) -> nn.Module:
    """``network`` in ``DistributedDataParallel`` (gradients averaged over the ranks in buckets during
    the backward pass), or ``network`` itself for one process. The wrapper shares its parameters."""
    if not world.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    params = list(network.parameters())
    ids = [params[0].device.index] if params and params[0].device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def average_gradients(params: Sequence[Tensor], world: World) -> None:
    """Replace each gradient of ``params`` by its mean over the ranks, as DDP's backward does (each
    rank's gradients divided by the number of processes, then summed: one all-reduce of the flattened
    gradients). For a loss that DDP's wrapper cannot run (forward-mode AD): one step on ``W`` ranks is
    then the step of one process on the concatenated batch. Every rank must hold gradients for the
    same parameters (those left ``None`` are skipped)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads]).div_(world.size)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(averaged.view_as(grad))


def mean_over_ranks(values: Tensor, world: World) -> Tensor:
    """``values (K,)`` averaged element-wise over the ranks, ``(K,)`` on every rank; itself for one."""
    if not world.distributed:
        return values
    import torch.distributed as dist

    summed = values.detach().clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed / world.size


def any_rank(flag: bool, device: torch.device, world: World) -> bool:
    """Whether ``flag`` is true on some rank (every rank gets the answer): one tiny all-reduce."""
    if not world.distributed:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_to_main(obj: T, world: World) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the others.

    An all-gather rather than a gather: NCCL has no object gather in every torch version, and the
    objects (generator states, a few KiB a rank) make the difference immaterial."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    found: list[Any] = [None] * world.size
    dist.all_gather_object(found, obj)
    return found if world.is_main else None


def from_main(make: Callable[[], T], world: World) -> T:
    """``make()`` run on rank 0 and its result sent to every rank (pickled).

    A :class:`FlowkitError` raised by ``make`` on rank 0 is raised on every rank with the same
    message, so the others end at once instead of waiting for a result that never comes."""
    if not world.distributed:
        return make()
    import torch.distributed as dist

    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = ("ok", make())
        except FlowkitError as exc:
            box[0] = ("error", str(exc))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise FlowkitError(f"{value} (reported by rank 0)")
    return value


def failure_message(exc: BaseException, world: World) -> str:
    """What a rank says when it fails: its rank and the cause; a broken collective (a peer that died
    or stopped answering) is named as such."""
    text = str(exc) if isinstance(exc, FlowkitError) else f"{type(exc).__name__}: {exc}"
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if not isinstance(exc, FlowkitError) and _is_collective_failure(exc):
        text = text if len(text) <= 160 else text[:157] + "..."
        text = (
            "lost contact with another process (it failed, was killed or stopped answering within "
            f"[run] distributed_timeout); torchrun names the first failure. ({text})"
        )
    return f"{world.describe()}: {text}"


def _is_collective_failure(exc: BaseException) -> bool:
    words = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in words) or type(exc).__name__ == "DistBackendError"


# ---------------------------------------------------------------------------------------------------
# Launching: `flowkit run FILE --nproc N`
# ---------------------------------------------------------------------------------------------------


def launcher_command(nproc: int, args: Sequence[str], python: str | None = None) -> list[str]:
    """The torchrun command that runs ``flowkit ARGS`` as ``nproc`` processes on this machine:
    ``python -m torch.distributed.run --standalone --nproc-per-node N -m flowkit ARGS``."""
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "flowkit",
        *args,
    ]


def launch(nproc: int, args: Sequence[str]) -> None:
    """Replace this process with torchrun running ``flowkit ARGS`` in ``nproc`` processes (its exit
    status is the run's; signals sent to this process reach torchrun, which forwards them)."""
    if launched() is not None:
        raise FlowkitError(
            f"--nproc {nproc}: this process was itself started by torchrun (WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}); drop --nproc, or start it without torchrun"
        )
    command = launcher_command(nproc, args)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError as exc:
        raise FlowkitError(f"cannot start torchrun ({shlex.join(command)}): {exc}") from None
