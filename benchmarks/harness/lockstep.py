"""Contenders run at once, in turns at every call of their network: :class:`Lockstep`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch import nn

from harness import clocks
from harness.clocks import LOCKSTEP_THREAD, Timing

# The clocks are read as ``clocks.read_clocks()`` (looked up at each call), so a test can replace the
# one clock source that :func:`clocks.stamp` and the held-time accounting here both read.


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
    (standard deviation) of 5–7% (:func:`schedules.sandwich`). In lockstep both see the same moments.

    :func:`clocks.stamp` called in a lockstep thread reads the clocks as this thread's held time only
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
            if getattr(LOCKSTEP_THREAD, "lockstep", None) is self:
                self._hand_over(LOCKSTEP_THREAD.name)

        return network.register_forward_pre_hook(pass_turn)

    def held(self) -> Timing:
        """The calling lockstep thread's clocks: the seconds it has held its turn so far."""
        local = LOCKSTEP_THREAD
        return local.held + (clocks.read_clocks() - local.since)

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
            local = LOCKSTEP_THREAD  # this thread's: its lockstep, name and held clocks
            local.lockstep, local.name = self, name
            self._turns[name].acquire()
            local.held, local.since = Timing(0.0, 0.0, 0.0), clocks.read_clocks()
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
        local = LOCKSTEP_THREAD
        local.held = local.held + (clocks.read_clocks() - local.since)
        self.turns[name] += 1
        with self._lock:
            following = self._following(name)
        if following != name:
            self._turns[following].release()
            self._turns[name].acquire()
        local.since = clocks.read_clocks()
