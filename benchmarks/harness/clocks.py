"""The clocks every benchmark reads: the wall-clock, the timing thread's CPU time and the process's.

Every contender runs on one torch thread, and on the CPU with one intra-op thread all of torch's work
runs on the calling thread. That thread's CPU time (``time.thread_time``) then counts the work done
and not the time the thread waited for a core another process held, which is what load adds to the
wall-clock. The process's CPU time is read too: where it grows faster than the thread's, some work
ran on another thread and the thread clock would miss it (``off_thread`` in the results). On a GPU
the work is not the calling thread's: there the wall-clock, synchronized, is the figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch


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


def read_clocks() -> Timing:
    """Every clock's plain reading now (:func:`stamp` is what timing code calls)."""
    return Timing(time.perf_counter(), time.thread_time(), time.process_time())


#: The calling thread's place in a :class:`lockstep.Lockstep` (its lockstep, name and held clocks),
#: set by the lockstep on its own threads; empty on every other thread.
LOCKSTEP_THREAD = threading.local()


def stamp() -> Timing:
    """Every clock's reading now (subtract two stamps for the seconds between them).

    In a thread of a :class:`lockstep.Lockstep` the readings count only the time the thread held its turn,
    so a block's seconds leave out the turns of the other contenders."""
    lockstep = getattr(LOCKSTEP_THREAD, "lockstep", None)
    return read_clocks() if lockstep is None else lockstep.held()


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


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
