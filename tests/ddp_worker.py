"""``flowkit`` as torchrun runs it (``-m flowkit``), with a failure injected for the tests.

``FLOWKIT_TEST_FAIL="RANK:STEP"`` makes that rank raise at that training step (an exception in its
own code, as a bug or a bad batch would); ``FLOWKIT_TEST_HANG="RANK:STEP"`` makes it stop answering
there (sleep), so tests/test_distributed.py can check that every rank ends either way. The hung rank
dies at once when torchrun stops it (SIGTERM), as it would at torchrun's SIGKILL 30 s later: the test
checks the other rank, not torchrun's grace period.
"""

from __future__ import annotations

import os
import signal
import threading

from flowkit.cli import launched_main
from flowkit.engine.distributed import current_world
from flowkit.engine.loop import TrainLoop

_fail = os.environ.get("FLOWKIT_TEST_FAIL") or os.environ.get("FLOWKIT_TEST_HANG")
if _fail:
    _rank, _step = (int(part) for part in _fail.split(":"))
    _hang = "FLOWKIT_TEST_HANG" in os.environ
    _original = TrainLoop.step

    def _failing_step(self: TrainLoop, *args, **kwargs):  # type: ignore[no-untyped-def]
        if current_world().rank == _rank and self.current_step + 1 == _step:
            if _hang:
                signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
                threading.Event().wait(3600)
            raise RuntimeError(f"injected failure at step {_step}")
        return _original(self, *args, **kwargs)

    TrainLoop.step = _failing_step  # type: ignore[method-assign]

if __name__ == "__main__":
    launched_main()
