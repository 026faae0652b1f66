"""Device backends: where tensors live and how the hot loops run.

* ``cpu``: plain eager PyTorch on the CPU, by default with one thread per two usable CPUs.
* ``cuda``: one GPU, with a precision mode (fp32, bf16 autocast, TF32 matmuls), opt-in
  ``torch.compile`` of the model, and fixed-step sampling captured as a CUDA graph (default on).
* ``auto``: ``cuda`` when a GPU is available, else ``cpu``; it takes the parameters of both.

Every backend checks its device when it is built, so a run fails before any work starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Literal, cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitError
from flowkit.host import cpu_memory_available, local_rank
from flowkit.interfaces import BuildContext, DeviceBackend
from flowkit.params import param

Precision = Literal["fp32", "bf16", "tf32"]
PRECISIONS = ("fp32", "bf16", "tf32")

_NONNEGATIVE = attrs.validators.ge(0)


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False, in words (for error messages)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"torch {torch.__version__} is built with CUDA {torch.version.cuda} but no GPU is visible{hint}"


def default_threads() -> int:
    """flowkit's intra-op thread count (``threads = 0``): half the CPUs this process may use, at least 1.

    "May use" is ``os.sched_getaffinity(0)`` (taskset, cgroups' cpusets), else ``os.cpu_count()``. A
    thread per CPU is fastest on an idle machine, but then any other busy process stalls every parallel
    region, so half the CPUs leaves room for one such process (the measurements behind this choice:
    ``benchmarks/reference/threads.md``).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


#: More intra-op threads than this is a typo, not a machine (torch would overflow or stall).
MAX_THREADS = 1024


def _thread_count(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value <= MAX_THREADS:
        raise ValueError(
            f"threads must be between 0 (half the usable CPUs) and {MAX_THREADS}; this machine has "
            f"{os.cpu_count()} CPUs"
        )


class CPUBackend(DeviceBackend):
    """Eager PyTorch on the CPU, with ``torch.set_num_threads`` called when built.

    ``threads = K > 0`` sets ``K`` intra-op threads. ``threads = 0`` (the default) sets flowkit's
    default, :func:`default_threads`: half the CPUs this process may use, at least 1, which keeps
    training fast when another process competes for the CPUs; where ``OMP_NUM_THREADS`` is set,
    torch's own setting (which follows it) is kept instead.
    """

    @attrs.define(frozen=True)
    class Params:
        threads: int = param(
            0,
            doc="Intra-op CPU threads (0: half the usable CPUs, at least 1, unless OMP_NUM_THREADS is set).",
            validator=_thread_count,
        )

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        threads = self.params.threads
        if threads == 0 and not os.environ.get("OMP_NUM_THREADS"):
            threads = default_threads()
        if threads > 0:
            torch.set_num_threads(threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def memory_available(self) -> int | None:
        return cpu_memory_available()


def enable_tf32(backends: Any = None) -> dict[str, object]:
    """Let float32 matmuls (cuBLAS) and cuDNN convolutions use TF32, process-wide; returns what it set.

    torch >= 2.9 has the precision API: ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` and
    ``torch.backends.cudnn.conv.fp32_precision = "tf32"`` (the old ``allow_tf32`` flags are deprecated,
    and mixing both APIs is an error). Older torch has only ``torch.backends.cuda.matmul.allow_tf32``
    and ``torch.backends.cudnn.allow_tf32``; each setting takes the newest form the installed torch
    has. ``backends`` is ``torch.backends`` (another namespace of the same layout in tests). The
    result maps each attribute's dotted name under ``torch.backends`` to the value it was given.
    """
    backends = torch.backends if backends is None else backends
    matmul, cudnn = backends.cuda.matmul, backends.cudnn
    conv = getattr(cudnn, "conv", None)
    settings: dict[str, object] = {}
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32"
        settings["cuda.matmul.fp32_precision"] = "tf32"
    else:
        matmul.allow_tf32 = True
        settings["cuda.matmul.allow_tf32"] = True
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32"
        settings["cudnn.conv.fp32_precision"] = "tf32"
    else:
        cudnn.allow_tf32 = True
        settings["cudnn.allow_tf32"] = True
    return settings


class CUDABackend(DeviceBackend):
    """One CUDA GPU.

    Built only where ``torch.cuda.is_available()`` (else a :class:`FlowkitError` says why and what to
    use instead). ``precision = "tf32"`` lets float32 matmuls and cuDNN convolutions use TF32
    (process-wide) when built, through :func:`enable_tf32`; ``"bf16"`` makes :meth:`autocast`
    run the forward pass under ``torch.autocast("cuda", dtype=torch.bfloat16)``; ``"fp32"`` changes
    nothing. ``compile = true`` wraps the model in ``torch.compile`` in :meth:`prepare_module`.
    ``cuda_graph = true`` captures fixed-step sampling as a CUDA graph in :meth:`compile_sampler`.
    """

    @attrs.define(frozen=True)
    class Params:
        index: int = param(
            0,
            doc="GPU index (as in cuda:INDEX); under torchrun each process adds its LOCAL_RANK "
            "(one GPU per process).",
            validator=_NONNEGATIVE,
        )
        precision: Precision = param(
            "fp32",
            doc="fp32, bf16 (autocast of the training forward) or tf32.",
            validator=attrs.validators.in_(PRECISIONS),
        )
        compile: bool = param(False, doc="torch.compile the model (slow first steps, faster later ones).")
        cuda_graph: bool = param(True, doc="Capture fixed-step sampling as a CUDA graph and replay it.")

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        if not torch.cuda.is_available():
            raise FlowkitError(
                f"device 'cuda' was requested but torch.cuda.is_available() is False "
                f'({cuda_unavailable_reason()}); use device = "cpu" or "auto"'
            )
        count = torch.cuda.device_count()
        index = p.index + local_rank()  # data-parallel: process LOCAL_RANK drives the next GPU
        if index >= count:
            ranked = f" + LOCAL_RANK {local_rank()}" if local_rank() else ""
            raise FlowkitError(
                f"device 'cuda' index {p.index}{ranked} was requested but only {count} GPU(s) are visible "
                f"(indices 0 to {count - 1}); set index to one of those"
                + (", or start fewer processes per node" if ranked else "")
            )
        self._device = torch.device("cuda", index)
        if p.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise FlowkitError(
                f'precision "bf16" was requested but {torch.cuda.get_device_name(self._device)} does not '
                'support bfloat16; use precision = "fp32" or "tf32"'
            )
        if p.precision == "tf32":
            enable_tf32()
        # Generators made by generator() are registered with every captured graph, so a sampler may
        # draw its noise from them inside the graph.
        self._generators: list[torch.Generator] = []

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> CUDABackend:
        """Build; raises :class:`FlowkitError` when no usable GPU is there."""
        return cls(params)

    @property
    def device(self) -> torch.device:
        return self._device

    def generator(self, seed: int) -> torch.Generator:
        """A CUDA generator seeded with ``seed``; samplers captured later may draw noise from it."""
        generator = torch.Generator(device=self._device).manual_seed(seed)
        self._generators.append(generator)
        return generator

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the GPU; with ``compile = true`` return ``torch.compile(module)``.

        The compiled wrapper shares the module's parameters, so an optimizer of either trains both.
        """
        module = module.to(self._device)
        if self.params.compile:
            module = cast(nn.Module, torch.compile(module))  # an OptimizedModule, sharing the parameters
        return module

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """``torch.autocast("cuda", dtype=torch.bfloat16)`` for ``precision = "bf16"``, else a no-op."""
        if self.params.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self._device)

    def memory_available(self) -> int | None:
        free, _total = torch.cuda.mem_get_info(self._device)
        return int(free)

    @property
    def captures_samplers(self) -> bool:
        """``cuda_graph``: the engine then captures every ``capturable`` simulator."""
        return bool(self.params.cuda_graph)

    def compile_sampler(self, fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
        """Capture ``fn(x0) -> x1`` as a CUDA graph (``cuda_graph = true``), else return ``fn``.

        The returned callable copies its input into a static buffer, replays the graph and returns a
        clone of the static output. A graph is captured per input shape and dtype: for ``example``'s
        now, for any other the first time it is seen. Before each capture ``fn`` runs three times
        eagerly on a side stream (warm-up: lazy initialisation, cuBLAS workspaces, autotuning), then
        once under capture. ``fn`` runs under
        ``torch.no_grad()`` and must be capturable: fixed shapes, no host synchronisation
        (``.item()``, printing tensors), no CPU-to-GPU copies (keep the time grid on the GPU), no
        data-dependent control flow.

        Noise of an SDE sampler: draw it inside ``fn`` with ``torch.randn(..., generator=g)``, where
        ``g`` is the default CUDA generator or one made by this backend's :meth:`generator` (before
        the capture). Those
        generators are registered with the graph (``CUDAGraph.register_generator_state``;
        ``torch.cuda.graph`` registers the default one itself). The captured kernels then read the
        Philox seed and offset from the generator at each replay, and each replay advances the offset
        by the whole graph's draws, so every replay gets fresh noise, and re-seeding the generator
        (``g.manual_seed(seed)``) reproduces the same sequence of replays. Any other generator is not
        registered with the graph and cannot be used inside it; pre-drawn noise can instead be fed
        as part of the input.
        """
        if not self.params.cuda_graph:
            return fn
        graphs: dict[tuple[tuple[int, ...], torch.dtype], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

        def replay(x: Tensor) -> Tensor:
            key = (tuple(x.shape), x.dtype)
            entry = graphs.get(key)
            if entry is None:
                entry = graphs[key] = self._capture(fn, x)
            graph, static_input, static_output = entry
            static_input.copy_(x)
            graph.replay()
            return static_output.clone()

        graphs[(tuple(example.shape), example.dtype)] = self._capture(fn, example)
        return replay

    def _capture(
        self, fn: Callable[[Tensor], Tensor], example: Tensor
    ) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        """Warm ``fn`` up on a side stream, then capture it on a static copy of ``example``."""
        device = self._device
        static_input = example.detach().to(device).clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                fn(static_input.clone())  # a clone: fn may update its input in place
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for generator in self._generators:
            graph.register_generator_state(generator)
        try:
            with torch.no_grad(), torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
                static_output = fn(static_input)
        except Exception as error:  # the capture rejects many operations; say what to do instead
            raise FlowkitError(
                f"the sampler could not be captured as a CUDA graph ({type(error).__name__}: {error}); "
                "set cuda_graph = false in the device's parameters to sample eagerly"
            ) from error
        return graph, static_input, static_output


class AutoBackend(DeviceBackend):
    """``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; delegates everything to that backend.

    Takes the parameters of both (each backend reads its own). ``backend`` is the chosen one.
    """

    @attrs.define(frozen=True)
    class Params:
        index: int = param(0, doc="GPU index, when a GPU is used.", validator=_NONNEGATIVE)
        precision: Precision = param(
            "fp32", doc="fp32, bf16 or tf32, when a GPU is used.", validator=attrs.validators.in_(PRECISIONS)
        )
        compile: bool = param(False, doc="torch.compile the model, when a GPU is used.")
        cuda_graph: bool = param(True, doc="Capture fixed-step sampling as a CUDA graph, when a GPU is used.")
        threads: int = param(
            0,
            doc="Intra-op CPU threads on the CPU (0: half the usable CPUs, at least 1; as for cpu).",
            validator=_thread_count,
        )

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        if torch.cuda.is_available():
            self.backend: DeviceBackend = CUDABackend(
                CUDABackend.Params(
                    index=p.index, precision=p.precision, compile=p.compile, cuda_graph=p.cuda_graph
                )
            )
        else:
            self.backend = CPUBackend(CPUBackend.Params(threads=p.threads))

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def generator(self, seed: int) -> torch.Generator:
        return self.backend.generator(seed)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        return self.backend.prepare_module(module)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.backend.autocast()

    @property
    def captures_samplers(self) -> bool:
        return self.backend.captures_samplers

    def compile_sampler(self, fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
        return self.backend.compile_sampler(fn, example)

    def synchronize(self) -> None:
        self.backend.synchronize()

    def memory_available(self) -> int | None:
        return self.backend.memory_available()
