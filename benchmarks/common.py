"""What the benchmark scripts share: building flowkit pipelines from TOML, the hand-written baseline
(MLP and moons generator written out by hand), peak-memory probes, the machine's description, and
the medians/ratios/table helpers.

Nothing here is part of flowkit: the scripts use flowkit only through its public entry points
(``flowkit.registry.PluginManager``, ``flowkit.engine.build_pipeline`` and the stage functions).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# ---------------------------------------------------------------------------------------------------
# flowkit through its registry and pipeline files
# ---------------------------------------------------------------------------------------------------


class _FallbackCPU:
    """A CPU device backend for checkouts where ``flowkit_devices`` registers none yet.

    Used only when the installed plugins provide no ``cpu`` device; the JSON records which was used.
    """

    @staticmethod
    def flowkit_register(registry: Any) -> None:
        from flowkit.interfaces import DeviceBackend

        class BenchCPU(DeviceBackend):
            """CPU (benchmark fallback)."""

            @property
            def device(self) -> torch.device:
                return torch.device("cpu")

        registry.add("device", "cpu", BenchCPU)


def make_manager(plugins: Iterable[tuple[str, Any]] = ()) -> tuple[Any, str]:
    """A :class:`flowkit.registry.PluginManager` with the installed plugins plus ``plugins``.

    Returns ``(manager, device_backend)`` where ``device_backend`` says where the ``cpu`` device came
    from ("flowkit_devices" or "benchmark fallback").
    """
    from flowkit import hookimpl
    from flowkit.registry import PluginManager

    plugins = list(plugins)
    manager = PluginManager(plugins=plugins, warn=False)
    if "cpu" in manager.registry.names("device"):
        return manager, "flowkit_devices"
    fallback = type(
        "BenchFallbackCPU", (), {"flowkit_register": staticmethod(hookimpl(_FallbackCPU.flowkit_register))}
    )
    return PluginManager(plugins=[*plugins, ("bench-fallback-cpu", fallback())], warn=False), (
        "benchmark fallback"
    )


def write_pipeline(directory: Path, name: str, tables: dict[str, Any]) -> Path:
    """Write ``tables`` as ``directory/name.toml`` and return its path."""
    import tomli_w

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(tomli_w.dumps(tables), encoding="utf-8")
    return path


def moons_tables(
    device: str = "cpu",
    batch_size: int = 256,
    steps: int = 1000,
    lr: float = 1e-3,
    ema_decay: float = 0.0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    sample: dict[str, Any] | None = None,
    sample_n: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """The benchmark's pipeline: moons, OT path, CFM, MLP 3×256 SiLU; reporters silent."""
    sample_table: dict[str, Any] = {"simulator": "euler", "dynamics": "flow", "steps": 10}
    sample_table.update(sample or {})
    sample_table.setdefault("n", sample_n)
    sample_table.setdefault("trajectories", 0)
    return {
        "run": {"seed": seed, "device": device},
        "data": {"kind": "moons"},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [256, 256, 256], "activation": "silu"},
        "loss": {"kind": "cfm"},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "lr_schedule": lr_schedule,
            "warmup_steps": warmup_steps,
            "ema_decay": ema_decay,
            "log_every": 100,
        },
        "sample": sample_table,
        "evaluate": {"n": min(sample_table["n"], 2000)},
        "report": {"progress": False, "plots": False, "log": False},
    }


def make_run(pipeline: Any, manager: Any, directory: Path) -> Any:
    """A :class:`flowkit.engine.PipelineRun` in ``directory``, prepared as ``run_pipeline`` prepares it."""
    from flowkit.engine import PipelineRun as Run

    directory.mkdir(parents=True, exist_ok=True)
    run = Run(pipeline, directory, manager.hook, quiet=True)
    device = pipeline.device.device
    pipeline.model.to(device)
    for module in pipeline.context.roles.values():
        module.to(device)
    return run


# ---------------------------------------------------------------------------------------------------
# The hand-written baseline
# ---------------------------------------------------------------------------------------------------


class RawMLP(nn.Module):
    """MLP on ``[x, t]``: Linear(3, 256), SiLU, 2 × (Linear(256, 256), SiLU), Linear(256, 2).

    Same layer names as flowkit's ``mlp`` (``net.0`` … ``net.6``), so weights load across.
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x (B, 2)``, ``t (B,)`` -> ``(B, 2)``."""
        return self.net(torch.cat([x, t[:, None]], dim=1))


# The moons generator, inlined by hand (same maths as flowkit_data.toy.Moons, noise 0.1).
_MOONS_SCALE = 1.0 / math.sqrt((0.75 + ((0.5 + (0.75 - 2.0 / math.pi)) / 2.0 - 0.0625)) / 2.0)


def raw_moons(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` standardised two-moons points with noise 0.1, shape ``(n, 2)``."""
    angle = math.pi * torch.rand(n, generator=generator, device=device)
    inner = torch.rand(n, generator=generator, device=device) < 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = torch.where(inner, 1.0 - cos, cos) - 0.5
    y = torch.where(inner, 0.5 - sin, sin) - 0.25
    points = _MOONS_SCALE * torch.stack([x, y], dim=1)
    return points + 0.1 * torch.randn(points.shape, generator=generator, device=device)


# ---------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optional_import(name: str) -> Any | None:
    """The module ``name``, or ``None`` when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


#: glibc's ``mallopt`` parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def steady_malloc() -> bool:
    """Keep freed memory in glibc's heap during the timings, so no block pays page faults for memory
    that an earlier block (its own or another contender's) returned to the OS.

    By default glibc serves large blocks from ``mmap`` below a threshold it adjusts as blocks are
    freed, and trims the top of the heap when enough of it is free: whether a training step's
    tensors come back as fresh (faulting, zero-filled) pages depends on the heap's layout, which the
    interleaving changes. At batch 4096 one block of 15 steps took 0 to 35,000 minor page faults,
    by luck, for any contender (raw and flowkit alike); fixing the mmap threshold at 32 MiB (glibc's
    maximum) and never trimming leaves a steady state with none.

    It also keeps every thread on glibc's one main heap (``M_ARENA_MAX`` 1): the threads of a
    :class:`Lockstep` then reuse the buffers each other freed a moment before, as one thread running
    the contenders one after another does. With an arena per thread each contender kept its own
    pages, and a run's luck with them persisted: two copies of the raw loop differed by 0.94–0.99
    (2026-12-03, six runs), against 0.96–1.04 either way on one heap. Returns whether it took effect
    (glibc only); :func:`fix_malloc_for_memory_probe` replaces the settings for the memory probe.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20))
        trim = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
        arenas = bool(libc.mallopt(_M_ARENA_MAX, 1))
        return mmap and trim and arenas
    except (OSError, AttributeError):
        return False


def fix_malloc_for_memory_probe() -> bool:
    """Make glibc return every block of 128 KiB or more to the OS when it is freed.

    By default glibc raises its mmap threshold after large frees and then keeps freed tensors in the
    heap, so the resident set stops tracking what is live. With a fixed threshold (``mallopt``) every
    tensor of 32 Ki floats or more is its own mapping, and the peak resident set measures the peak
    of live tensor memory (plus small-object heap growth). Slows allocation, so it is called only
    after the timings. Returns whether it took effect (glibc only).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)) and ok  # glibc's default (steady_malloc)
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak memory of a block of work, in MiB above what was in use when it started.

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor memory
      only, exact).
    * CPU (Linux): the resident set's high-water mark ``VmHWM``, reset through
      ``/proc/self/clear_refs`` (Linux >= 4.0) just before the block; its increase over the resident
      set at the start. Counts every page the process touches (tensors, allocator caches, Python),
      at page resolution. Where it cannot be reset, ``None`` (never a wrong number).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "unavailable"
        self.mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self._start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = _status_kib("VmHWM") is not None
        except OSError:
            reset = False
        self.method = "VmHWM-VmRSS (/proc, reset via clear_refs)" if reset else "unavailable"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self.method != "unavailable" and self._start is not None:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else max(0, peak - self._start) / 1024


# ---------------------------------------------------------------------------------------------------
# Statistics and reporting
# ---------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    """Median of ``values`` (``None`` when empty)."""
    return statistics.median(values) if values else None


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repetition ratios ``numerator[i] / denominator[i]`` (same repetition, so load drifts cancel)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need as many values: {len(numerator)} vs {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]


def summarize(values: Sequence[float], reference: Sequence[float] | None) -> dict[str, Any]:
    """Median, spread and ratios to ``reference`` (both lists are per-repetition, higher is better).

    ``ratio``: median of the per-repetition ratios; ``ratio_of_medians``: ratio of the two medians.
    """
    values = list(values)
    out: dict[str, Any] = {
        "values": values,
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }
    if reference is not None and values:
        ratios = paired_ratios(values, reference)
        ref_median = median(reference)
        out["ratio"] = median(ratios)
        out["ratio_of_medians"] = out["median"] / ref_median if ref_median else None
        out["ratios"] = ratios
        out["ratio_iqr"] = ratio_iqr(ratios)
    return out


def ratio_iqr(ratios: Sequence[float]) -> list[float] | None:
    """The interquartile range ``[q1, q3]`` of the paired ratios (``None`` for fewer than two): the
    spread of one run's figure, which two runs' medians should agree well within."""
    if len(ratios) < 2:
        return None
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return [q1, q3]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description(threads: int, device: torch.device) -> dict[str, Any]:
    """CPU model, cores, load, library versions: what a reader needs to judge the numbers."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("torch", "numpy", "flowkit", "torchcfm", "flow_matching", "torchdiffeq"):
        module = optional_import(name)
        versions[name] = getattr(module, "__version__", "installed") if module else "not installed"
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated left by ``by`` (each repetition starts with a different contender)."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


# ---------------------------------------------------------------------------------------------------
# Clocks: wall-clock and the timing thread's CPU time
# ---------------------------------------------------------------------------------------------------
#
# Every contender runs on one torch thread, and on the CPU with one intra-op thread all of torch's work
# runs on the calling thread. That thread's CPU time (``time.thread_time``) then counts the work done
# and not the time the thread waited for a core another process held, which is what load adds to the
# wall-clock. The process's CPU time is read too: where it grows faster than the thread's, some work
# ran on another thread and the thread clock would miss it (``off_thread`` in the results). On a GPU
# the work is not the calling thread's: there the wall-clock, synchronized, is the figure.


class Timing(NamedTuple):
    """Seconds on each clock: ``wall`` (``perf_counter``), ``cpu`` (this thread's, ``thread_time``),
    ``process_cpu`` (every thread's, ``process_time``). :func:`stamp` gives the readings at one
    instant; ``stamp() - start`` the seconds since ``start``."""

    wall: float
    cpu: float
    process_cpu: float

    def __sub__(self, earlier: tuple[float, ...]) -> Timing:  # type: ignore[override]
        return Timing(self.wall - earlier[0], self.cpu - earlier[1], self.process_cpu - earlier[2])

    def __add__(self, other: tuple[float, ...]) -> Timing:  # type: ignore[override]
        return Timing(self.wall + other[0], self.cpu + other[1], self.process_cpu + other[2])

    def scaled(self, factor: float) -> Timing:
        """Every clock times ``factor`` (e.g. per call)."""
        return Timing(self.wall * factor, self.cpu * factor, self.process_cpu * factor)


def _clocks() -> Timing:
    return Timing(time.perf_counter(), time.thread_time(), time.process_time())


def stamp() -> Timing:
    """Every clock's reading now (subtract two stamps for the seconds between them).

    In a thread of a :class:`Lockstep` the readings count only the time the thread held its turn,
    so a block's seconds leave out the turns of the other contenders."""
    lockstep = getattr(_LOCKSTEP_THREAD, "lockstep", None)
    return _clocks() if lockstep is None else lockstep.held()


def primary_clock(device: torch.device) -> str:
    """The clock whose ratios are the headline: the thread's CPU time on the CPU (robust to other
    processes' load), the synchronized wall-clock on an accelerator (whose work no CPU clock sees)."""
    return "cpu" if device.type == "cpu" else "wall"


def measure(fn: Callable[[], Any], device: torch.device) -> Timing:
    """Every clock's seconds for ``fn()``, with the device synchronized before and after."""
    synchronize(device)
    start = stamp()
    fn()
    synchronize(device)
    return stamp() - start


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds ``fn()`` takes, with the device synchronized before and after."""
    return measure(fn, device).wall


def interleave(
    contenders: dict[str, Any],
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, list[Timing]]:
    """Per-contender lists of ``work(contender)``, one per repetition, each repetition starting with
    another contender (:func:`rotate`): the paired-repetition loop every benchmark shares."""
    names = list(contenders)
    out: dict[str, list[Timing]] = {name: [] for name in names}
    for rep in range(reps):
        for name in rotate(names, rep):
            out[name].append(work(contenders[name]))
        log(
            f"  rep {rep + 1}/{reps} (cpu s / wall s): "
            + ", ".join(f"{n} {out[n][-1].cpu:.4g}/{out[n][-1].wall:.4g}" for n in names)
        )
    return out


def sandwich(
    contenders: dict[str, Any],
    reference: str,
    reps: int,
    work: Callable[[Any], Timing],
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """Like :func:`interleave`, but every other contender's block runs between two blocks of
    ``reference``: one repetition is ``ref, A, ref, B, ref, C, ref`` (``A, B, C`` rotated from one
    repetition to the next), and each block is paired with the mean of the reference blocks just
    before and after it. Load that drifts over a repetition (other processes start and stop within
    seconds) then cancels to first order in the paired ratio, where with one reference block per
    repetition it was compared with a block run several blocks earlier or later. The last reference
    block of a repetition is the first of the next.

    Returns ``(timings, paired)``: ``timings[name]`` one :class:`Timing` per repetition
    (``reps * (len(contenders) - 1) + 1`` for ``reference``), ``paired[name]`` the reference's
    timing paired with each (none for ``reference`` itself).
    """
    others = [name for name in contenders if name != reference]
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    paired: dict[str, list[Timing]] = {name: [] for name in others}
    before = None
    for rep in range(reps):
        if before is None:  # the first; then the block after one repetition starts the next
            before = work(contenders[reference])
            timings[reference].append(before)
        for name in rotate(others, rep):
            timings[name].append(work(contenders[name]))
            after = work(contenders[reference])
            timings[reference].append(after)
            paired[name].append((before + after).scaled(0.5))
            before = after
        log(_paired_line(rep, reps, f"{reference}: mean of the blocks around each", timings, paired))
    return timings, paired


def _paired_line(
    rep: int, reps: int, pairing: str, timings: dict[str, list[Timing]], paired: dict[str, list[Timing]]
) -> str:
    """The log line of one paired repetition: each contender's last CPU and wall seconds, and its
    reference's in brackets (what :func:`bench_speed.result_from_log` reads back)."""
    blocks = [(n, timings[n][-1], paired[n][-1]) for n in paired]
    return f"  rep {rep + 1}/{reps} (cpu s / wall s; {pairing}): " + ", ".join(
        f"{n} {t.cpu:.4g}/{t.wall:.4g} ({r.cpu:.4g}/{r.wall:.4g})" for n, t, r in blocks
    )


_LOCKSTEP_THREAD = threading.local()


class Lockstep:
    """Runs contenders at once, each in its own thread, taking turns at every call of a network: the
    thread that calls one of the networks passed to :meth:`attach` hands the turn to the next
    contender and waits for its own. Only one thread runs at a time, so a contender's segment
    (its work from one network call to the next: a sampling step's evaluation and arithmetic, or a
    training step) runs within one turn of every other contender's matching segment.

    Why: this VM's speed changes by ±20% from one second to the next (the mean time of one forward
    pass of the benchmark's network, per second: 38–60 ms on a quiet machine, 2026-12-03), on a
    pinned core as on either. Blocks of several seconds, one contender after another, then compare
    a contender with a raw loop that ran at another speed: per-repetition ratios had a spread
    (standard deviation) of 5–7% (:func:`sandwich`). In lockstep both see the same moments.

    :func:`stamp` called in a lockstep thread reads the clocks as this thread's held time only
    (:meth:`held`), so the contenders' own timing code (``measure``, a step hook) is unchanged. The
    wall-clock then counts a thread's turns, not its waits. On a GPU the turns would not order the
    device's work: lockstep is for the CPU.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[str, threading.Semaphore] = {}
        self._order: list[str] = []
        #: How many turns each contender of the last :meth:`run` handed over (network calls).
        self.turns: dict[str, int] = {}

    def attach(self, network: nn.Module) -> Any:
        """Pass the turn at every call of ``network`` from a lockstep thread (calls from any other
        thread are unaffected); returns the hook's handle. The hook is a plain function, so a deep
        copy of ``network`` (an EMA copy) shares it instead of copying this object."""

        def pass_turn(module: nn.Module, inputs: Any) -> None:
            if getattr(_LOCKSTEP_THREAD, "lockstep", None) is self:
                self._hand_over(_LOCKSTEP_THREAD.name)

        return network.register_forward_pre_hook(pass_turn)

    def held(self) -> Timing:
        """The calling lockstep thread's clocks: the seconds it has held its turn so far."""
        local = _LOCKSTEP_THREAD
        return local.held + (_clocks() - local.since)

    def run(self, works: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run every ``works[name]()`` in its own thread, in turns in the order of ``works``; returns
        each one's result. An exception in one is raised here after all have finished (the failed
        one leaves the rotation, so the others go on)."""
        self._order = list(works)
        self._turns = {name: threading.Semaphore(0) for name in works}
        self.turns = dict.fromkeys(works, 0)
        results: dict[str, Any] = {}
        errors: list[BaseException] = []

        def body(name: str) -> None:
            local = _LOCKSTEP_THREAD  # this thread's: its lockstep, name and held clocks
            local.lockstep, local.name = self, name
            self._turns[name].acquire()
            local.held, local.since = Timing(0.0, 0.0, 0.0), _clocks()
            try:
                results[name] = works[name]()
            except BaseException as error:  # re-raised on the calling thread
                errors.append(error)
            finally:
                with self._lock:
                    following = self._following(name)
                    self._order.remove(name)
                if following != name:
                    self._turns[following].release()

        # daemon: an interrupted run (Ctrl-C in join) exits without finishing the repetition
        threads = [
            threading.Thread(target=body, args=(name,), name=f"lockstep-{name}", daemon=True)
            for name in works
        ]
        for thread in threads:
            thread.start()
        if works:
            self._turns[self._order[0]].release()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def _following(self, name: str) -> str:
        return self._order[(self._order.index(name) + 1) % len(self._order)]

    def _hand_over(self, name: str) -> None:
        local = _LOCKSTEP_THREAD
        local.held = local.held + (_clocks() - local.since)
        self.turns[name] += 1
        with self._lock:
            following = self._following(name)
        if following != name:
            self._turns[following].release()
            self._turns[name].acquire()
        local.since = _clocks()


@contextlib.contextmanager
def pinned(count: int, cpus: Sequence[int] | None = None) -> Iterator[list[int] | None]:
    """Run the calling thread, and the threads it starts, on ``cpus`` (default: the last ``count`` of
    the CPUs it may use); restores the previous set on exit. Yields the CPUs, or ``None`` where the
    platform cannot pin (no ``os.sched_setaffinity``).

    Why: each of this VM's CPUs changes speed on its own. The threads of a :class:`Lockstep` spread
    over two CPUs saw different speeds, and the ratio of two copies of the raw loop (Heun, 10,000
    points) had a spread of 2.7% from one repetition to the next; on one CPU, 0.8% (2026-12-03)."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    chosen = sorted(cpus) if cpus is not None else sorted(before)[-count:]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)


def lockstep(
    contenders: dict[str, Any],
    reference: str,
    reps: int,
    work: Callable[[Any], Timing],
    steps: Lockstep,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict[str, list[Timing]], dict[str, list[Timing]]]:
    """:func:`sandwich`'s results from repetitions in which every contender runs at once, in turns
    (``steps``, a :class:`Lockstep` attached to every contender's network): each contender's timing
    is paired with ``reference``'s in the same repetition. The order of turns is rotated from one
    repetition to the next (:func:`rotate`), so no contender always follows the same one."""
    names = list(contenders)
    others = [name for name in names if name != reference]
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    paired: dict[str, list[Timing]] = {name: [] for name in others}
    for rep in range(reps):
        order = rotate(names, rep)
        out = steps.run({name: (lambda c=contenders[name]: work(c)) for name in order})
        for name in names:
            timings[name].append(out[name])
        for name in others:
            paired[name].append(out[reference])
        log(_paired_line(rep, reps, f"{reference}: the same repetition, in turns", timings, paired))
    return timings, paired


def off_thread(timings: Iterable[Timing]) -> float | None:
    """The largest share of a block's process CPU time that ran off the timing thread,
    ``max((process_cpu - cpu) / process_cpu)`` (``None`` without timings): near 0 where the thread
    clock sees all the work."""
    shares = [(t.process_cpu - t.cpu) / t.process_cpu for t in timings if t.process_cpu > 0]
    return max(shares) if shares else None


def summarize_clocks(
    timings: Sequence[Timing],
    reference: Sequence[Timing] | None,
    amount: float,
) -> dict[str, dict[str, Any]]:
    """:func:`summarize` of the rate ``amount / seconds`` on the wall-clock (``"wall"``) and on the
    thread's CPU time (``"cpu"``), paired with ``reference``'s rates repetition by repetition."""
    out = {}
    for clock in ("wall", "cpu"):
        rates = [amount / getattr(t, clock) for t in timings]
        ref = None if reference is None else [amount / getattr(t, clock) for t in reference]
        out[clock] = summarize(rates, ref)
        if ref is not None:
            out[clock]["reference_values"] = ref
    return out
