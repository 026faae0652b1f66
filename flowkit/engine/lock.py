"""One process owns a run directory at a time: an advisory lock on its ``run.lock``.

``flowkit run``, ``flowkit resume``, and ``flowkit sample`` / ``evaluate`` / ``likelihood --save``
writing into a run take the lock (``fcntl.flock``, exclusive, never waited for) before they read or
write anything there, and keep it until they end; a second command on the same run gets one line
naming the holder and exits. The holder's pid, host, command and start time are written into the file
so that the line can name them.

The kernel releases an ``flock`` when the process holding it ends, however it ends (SIGKILL, out of
memory): a lock cannot outlive its process, so there is no stale lock to break and nothing to clean up
by hand. The file itself stays (removing it while another process waits on it would let two hold
"the" lock); it is emptied when the holder lets go. Under torchrun only rank 0 locks.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from flowkit.errors import FlowkitError

#: The lock file of a run directory.
LOCK_FILE = "run.lock"

try:  # POSIX; elsewhere (Windows) runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class RunLocked(FlowkitError):
    """Another process holds the run directory."""


@contextmanager
def hold_run(directory: Path, command: str) -> Iterator[None]:
    """Hold the lock of the run in ``directory`` while the block runs (``command``: what holds it, for
    the message a second command gets). Raises :class:`RunLocked` when another process holds it."""
    fd = take(directory, command)
    try:
        yield
    finally:
        release(fd)


def take(directory: Path, command: str) -> int | None:
    """Take the lock of the run in ``directory``; returns what :func:`release` lets go of."""
    if fcntl is None:  # pragma: no cover
        return None
    path = directory / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FlowkitError(
                f"{path}: the lock file is a symbolic link; flowkit writes no file through one: remove it"
            ) from None
        raise FlowkitError(f"cannot lock the run {directory}: {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        for _ in range(50):  # the holder took the lock a moment ago: give it time to write its name
            if holder:
                break
            time.sleep(0.02)
            holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(held_message(directory, holder)) from None
        raise FlowkitError(f"cannot lock the run {directory}: {path}: {exc.strerror or exc}") from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds all the same; only the message loses its details
        pass
    return fd


def release(fd: int | None) -> None:
    """Let go of a lock :func:`take` returned (emptied first, so no reader sees a holder that left)."""
    if fd is None:
        return
    with suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing releases the flock


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):  # the holder has not written its details yet
        return {}
    return data if isinstance(data, dict) else {}


def held_message(directory: Path, holder: dict[str, Any]) -> str:
    """The one line a second command gets: who holds the run and what the user can do."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):  # it took the lock a moment ago and is writing its name
        return f"{directory}: the run is in use by another flowkit process (starting); wait for it to end"
    command = str(holder.get("command", "flowkit"))
    since = holder.get("since", "an unknown time")
    who = f"`{command}` (process {pid} on {host}, since {since})"
    if host == socket.gethostname() and not _holds(pid, directory / LOCK_FILE):
        # The pid is gone, or is now another process's: the lock is held by a child the holder forked
        # (which inherited the open file), never by that pid, so the user is not told to stop it.
        return (
            f"{directory}: the run is in use: locked by {who}, which has ended, but a process it "
            "started still holds the lock; wait for it to end"
        )
    return (
        f"{directory}: the run is in use by {who}; wait for it to end, or stop it (Ctrl-C, or "
        f"kill -TERM {pid}, which saves a checkpoint) and try again"
    )


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` is alive and has ``path`` open (where ``/proc`` tells; alive elsewhere)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    target = str(path.resolve())
    try:
        return any(os.readlink(fd) == target for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # no /proc (macOS), or another user's process: alive is all that can be known
        return True
