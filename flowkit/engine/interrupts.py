"""SIGINT and SIGTERM during a run: finish the training step, save, and say how to continue.

While training, the first signal is *deferred*: the handler only records it, the loop completes the
step it is in (so the saved state is consistent) and writes a resumable checkpoint before leaving with
:class:`Interrupted`. A second signal, or one in any other stage, raises :class:`Interrupted` at once
(sampling and evaluation change nothing that needs saving). The CLI exits with ``128 + signal``
(130 for SIGINT, 143 for SIGTERM), as a shell does for a process a signal ended.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from flowkit.errors import FlowkitError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(FlowkitError):
    """The run was stopped by a signal; ``exit_code`` is ``128 + signum``."""

    def __init__(self, message: str, signum: int, recorded: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        #: Whether the run's status and the message already say how to continue.
        self.recorded = recorded

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class SignalGuard:
    """Context manager that turns SIGINT/SIGTERM into :class:`Interrupted` (deferred while
    ``deferring``); outside the main thread, where handlers cannot be set, it does nothing."""

    def __init__(self) -> None:
        self.deferring = False
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and self.requested is None:
            self.requested = signum
            return
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
