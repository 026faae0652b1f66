"""The run directory: claimed atomically, never overwritten; its files written atomically and durably.

A run directory holds ``pipeline.toml`` (resolved), ``status.json`` (what state the run is in),
``model.pt`` (sampling weights), ``checkpoint-NNNNNNN.pt`` (the whole training state, see
:mod:`flowkit.engine.checkpoints`), ``samples.npy``, ``metrics.json`` and what reporter plugins write.
Every file is written by :func:`flowkit.files.write_atomic`: to a temporary file in the same directory,
flushed and fsynced, moved into place with ``os.replace`` and the directory fsynced: a crash, a power
cut or a full disk leaves either the old file or the new one under the real name, never a truncated
one. Only the process holding the run's lock (:mod:`flowkit.engine.lock`) writes there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from flowkit.errors import FlowkitError
from flowkit.files import TEMPORARY, cannot_write
from flowkit.files import reason as _reason
from flowkit.files import write_atomic as write_atomic  # where the engine's modules find it

#: The status file of a run directory.
STATUS_FILE = "status.json"
#: The states a run directory can be in (``status.json`` ``state``).
STATES = ("running", "interrupted", "diverged", "failed", "done")


def run_directory(template: str, source: str, out: str | None = None) -> Path:
    """The run directory: ``out``, or ``template`` with ``{name}`` the pipeline file's stem; never an
    existing non-empty one (a numbered sibling, ``NAME-2``, ``NAME-3``, ..., is claimed instead)."""
    name = Path(source).stem if not source.startswith("<") else "pipeline"
    base = Path(out if out is not None else template.replace("{name}", name))
    if not base.name:  # "." or "": number a sibling of the folder it names
        base = base.resolve()
    candidate, i = base, 1
    while not _claim(candidate):
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def _claim(directory: Path) -> bool:
    """Make ``directory`` ours: a new one, or an empty one nobody else has claimed (atomic).

    Two runs started together must never share a directory: creating the directory, or the marker
    file in an existing empty one, succeeds for exactly one of them.
    """
    origin = "--out or [run] out"
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        if not directory.is_dir() or any(directory.iterdir()):
            return False
    except OSError as exc:
        raise FlowkitError(
            f"cannot create the run directory {directory}: {_reason(exc)}; choose another with {origin}"
        ) from None
    try:
        with open(directory / "pipeline.toml", "x", encoding="utf-8"):
            return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise FlowkitError(
            f"cannot write into the run directory {directory}: {_reason(exc)}; choose another with {origin}"
        ) from None


def remove_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files of writes cut short in ``directory`` (by a kill or a power cut):
    flowkit's own ``.NAME.XXXXXXXX.tmp`` files, never a link or anything else. Called by the process
    that holds the run's lock, so no write of another process is under way."""
    removed = []
    for entry in directory.iterdir():
        if TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """``data`` as indented JSON with sorted keys."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode()))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    import tomli_w

    return write_atomic(path, lambda handle: tomli_w.dump(data, handle))


def write_array(path: Path, array: np.ndarray) -> Path:
    return write_atomic(path, lambda handle: np.save(handle, array))


def _create(path: Path) -> bool:
    """Create ``path`` empty and exclusively: ``False`` when it exists (``OSError`` otherwise)."""
    try:
        with open(path, "x", encoding="utf-8"):
            return True
    except FileExistsError:
        return False


def refuse_existing(path: Path) -> None:
    """Raise :class:`FlowkitError` if ``path`` exists: checked before the work that fills it (sampling,
    evaluation), so a taken ``--out`` costs nothing. :func:`claim_file` still claims it atomically."""
    if path.exists() or path.is_symlink():
        raise _taken(path)


def _taken(path: Path) -> FlowkitError:
    return FlowkitError(f"{path} exists; flowkit never overwrites a file: choose another")


def claim_file(path: Path) -> Path:
    """Reserve ``path`` (create it empty, exclusively), refusing one that exists: what ``--out FILE``
    of ``flowkit sample`` and ``flowkit likelihood`` write to is never a file the user already has."""
    try:
        created = _create(path)
    except OSError as exc:
        raise FlowkitError(cannot_write(path, exc)) from None
    if not created:
        raise _taken(path)
    return path


def write_new_array(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path``, which must not exist (claimed as :func:`claim_file` does); nothing
    is left at ``path`` when the write fails."""
    claim_file(path)
    try:
        return write_array(path, array)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def unused_file(directory: Path, stem: str, suffix: str) -> Path:
    """Claim ``directory/stem.suffix``, or ``stem-2.suffix``, ``stem-3.suffix``, ...: the first that
    does not exist (atomically, as :func:`claim_file`)."""
    i = 1
    while True:
        path = directory / (f"{stem}{suffix}" if i == 1 else f"{stem}-{i}{suffix}")
        try:
            if _create(path):
                return path
        except OSError as exc:
            raise FlowkitError(f"cannot write into {directory}: {_reason(exc)}") from None
        i += 1


# ---------------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------------


def write_status(directory: Path, state: str, **fields: Any) -> dict[str, Any]:
    """Record the run's state in ``status.json``: ``state`` (one of :data:`STATES`), the process that
    wrote it (``pid``, ``host``: a ``running`` run whose process is gone was killed) and ``fields``
    (``step``, ``stage``, ``checkpoint``, ``message``, ``resume``: the command that continues it)."""
    assert state in STATES, state
    status = {
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{key: value for key, value in fields.items() if value is not None},
    }
    write_json(directory / STATUS_FILE, status)
    return status


def read_status(directory: Path) -> dict[str, Any] | None:
    """The run's ``status.json``, ``None`` where there is none (a run directory of flowkit < 0.2).

    A ``running`` status whose process is gone (on this host) is reported as ``killed``: the process
    ended without a word (SIGKILL, out of memory, a power cut).
    """
    path = directory / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FlowkitError(
            f"{path}: unreadable status file ({exc}); remove it, and `flowkit resume` reads the "
            "state from the checkpoints"
        ) from None
    if not isinstance(status, dict) or status.get("state") not in STATES:
        raise FlowkitError(
            f"{path}: not a flowkit status file (its state must be one of {', '.join(STATES)})"
        )
    if status["state"] == "running" and not process_alive(status):
        status = {**status, "state": "killed"}
    return status


def process_alive(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``status`` still runs (assumed so when it ran on another host)."""
    if status.get("host") != socket.gethostname():
        return True
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that pid now: not ours
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"
