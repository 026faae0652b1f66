"""``flowkit run`` (or any flowkit command) in a process that kills itself with SIGKILL at one chosen
point of one chosen write: the fault-injection suite's child (tests/test_fault_injection.py).

Every write of a run directory goes through ``flowkit.files.write_atomic`` (whole files) or
``flowkit.files.append_text`` (metrics.jsonl): both are wrapped before any other flowkit module is
imported, so every module that imports them gets the wrapper. Each call is an event, numbered from 0
and logged to ``$FAULT_LOG`` as ``index function name``. At event ``$FAULT_EVENT`` the process kills
itself, at ``$FAULT_PHASE``:

* ``during``: after ``$FAULT_FRACTION`` of the bytes were written (and made durable): a cut file;
* ``before-replace``: the whole temporary file written and synced, not yet renamed over the old one;
* ``after``: the write done (renamed, the directory synced), before the next one.

Usage: ``python fault_worker.py flowkit-args...`` (``$FAULT_EVENT = -1``: log only, never kill).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

import flowkit.files as files

EVENT = int(os.environ.get("FAULT_EVENT", "-1"))
PHASE = os.environ.get("FAULT_PHASE", "after")
FRACTION = float(os.environ.get("FAULT_FRACTION", "0.5"))
LOG = os.environ.get("FAULT_LOG")
_count = 0
_original_write_atomic = files.write_atomic
_original_append_text = files.append_text


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _event(function: str, path: Path) -> bool:
    """Log the event; whether it is the one to cut."""
    global _count
    index, _count = _count, _count + 1
    if LOG:
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{index} {function} {path.name}\n")
    return index == EVENT


class _Cutting:
    """A file handle that writes ``FRACTION`` of its first write, makes it durable, and dies."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.raw.write(data[: int(len(data) * FRACTION)])
        self.raw.flush()
        os.fsync(self.raw.fileno())
        _kill()
        return len(data)  # never reached

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def write_atomic(path: Path, write: Any) -> Path:
    if not _event("write_atomic", path):
        return _original_write_atomic(path, write)
    if PHASE == "during":
        return _original_write_atomic(path, lambda handle: write(_Cutting(handle)))
    if PHASE == "before-replace":

        def write_then_die(handle: Any) -> None:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            _kill()

        return _original_write_atomic(path, write_then_die)
    written = _original_write_atomic(path, write)
    _kill()
    return written


def append_text(path: Path, text: str) -> None:
    if not _event("append_text", path):
        return _original_append_text(path, text)
    if PHASE == "during":
        _original_append_text(path, text[: int(len(text) * FRACTION)])
    else:
        _original_append_text(path, text)
    _kill()


files.write_atomic = write_atomic  # type: ignore[assignment]
files.append_text = append_text

if __name__ == "__main__":
    from flowkit.cli import main

    main(sys.argv[1:], prog_name="flowkit")
