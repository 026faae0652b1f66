"""Writing and reading the files of a run directory safely: what the engine and any plugin use.

* :func:`write_atomic` writes a file whole or not at all: into a temporary file beside it (flushed and
  fsynced), moved into place with ``os.replace`` and the directory fsynced, so a crash, a full disk or
  an interrupt leaves the previous file (or none), never a truncated one, and no temporary file.
* :func:`append_text` appends to a log without following a symbolic link.
* :func:`read_text` reads a file flowkit wrote back, refusing a link, a directory or bytes that are
  not UTF-8 in one line.

Files are created with the permissions the umask allows (``0o666 & ~umask``), as ``open`` does.
Every failure is a :class:`~flowkit.errors.FlowkitError` naming the file and what to do. Part of the
contract: it imports neither the engine nor torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flowkit.errors import FlowkitError

#: The temporary files :func:`write_atomic` makes: ``.NAME.XXXXXXXX.tmp`` beside ``NAME``.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(handle)``, atomically and durably (see the module's doc)."""
    directory = path.parent
    tmp: Path | None = None
    handle: _Recording | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        tmp = Path(tmp_name)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files whatever the umask
        with os.fdopen(fd, "wb") as raw:
            handle = _Recording(raw)
            write(handle)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # an interrupt too: the previous file stays, no temporary file
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # A writer (torch.save) may turn the OSError of a full disk into its own error: report the cause.
        cause = exc if isinstance(exc, OSError) else handle.error if handle is not None else None
        if cause is not None and isinstance(exc, Exception):
            raise FlowkitError(cannot_write(path, cause)) from None
        raise
    fsync_directory(directory)
    return path


class _Recording:
    """A binary file that remembers the ``OSError`` its ``write`` raised (a writer may hide it)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def cannot_write(path: Path, exc: OSError) -> str:
    """``cannot write PATH: REASON; WHAT TO DO`` for an ``OSError`` of a write."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space on the disk of {path.parent} and run the command again"
    elif code == errno.EFBIG:
        todo = "the file exceeds the size this process may write (ulimit -f); raise the limit and run again"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = f"make {path.parent} writable, or choose another directory"
    elif code == errno.ELOOP:
        return f"cannot write {path}: it is a symbolic link; flowkit writes no file through one: remove it"
    elif code == errno.EISDIR:
        return f"cannot write {path}: it is a directory; move it away"
    else:
        todo = "fix it and run the command again"
    return f"cannot write {path}: {reason(exc)}; {todo}"


def reason(exc: OSError) -> str:
    """``permission denied``, ``no space left on device``, ...: the OS's reason, without the path."""
    text = exc.strerror or str(exc)
    return text[0].lower() + text[1:] if text else "unknown error"


def umask() -> int:
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a moment's race with other threads' files)
    os.umask(mask)
    return mask


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (nothing where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a directory; the data is written
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created when missing), never through a symbolic link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise FlowkitError(cannot_write(path, exc)) from None


def read_text(path: Path, what: str = "file") -> str | None:
    """The text of ``path``, ``None`` when it does not exist; a link, a directory, an unreadable file
    or bytes that are not UTF-8 are refused in one line naming it (``what``: what the file is)."""
    if path.is_symlink():
        raise FlowkitError(
            f"{path}: the {what} is a symbolic link; flowkit reads and writes no file through one: "
            "remove it (or replace it by the file it points to)"
        )
    if path.is_dir():
        raise FlowkitError(f"{path}: the {what} is a directory; move it away")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FlowkitError(f"{path}: cannot read the {what}: {reason(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlowkitError(
            f"{path}: the {what} is not UTF-8 text (byte {exc.start}); move it away or remove it"
        ) from None
