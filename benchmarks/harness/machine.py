"""The machine under the benchmarks: what it is (:func:`machine_description`), and the settings that
steady it during the timings (:func:`pinned`, :func:`steady_malloc`) and for the memory probe
(:func:`fix_malloc_for_memory_probe`, :class:`PeakMemory`)."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch


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
    :class:`lockstep.Lockstep` then reuse the buffers each other freed a moment before, as one thread running
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


@contextlib.contextmanager
def pinned(count: int, cpus: Sequence[int] | None = None) -> Iterator[list[int] | None]:
    """Run the calling thread, and the threads it starts, on ``cpus`` (default: the last ``count`` of
    the CPUs it may use); restores the previous set on exit. Yields the CPUs, or ``None`` where the
    platform cannot pin (no ``os.sched_setaffinity``).

    Why: each of this VM's CPUs changes speed on its own. The threads of a :class:`lockstep.Lockstep` spread
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
