"""The run directory's ``manifest.json``: the sha256 of every file flowkit reads back, checked on reading.

flowkit reads back three kinds of file of a run directory: the resolved ``pipeline.toml`` (resume,
sample, evaluate), ``checkpoint-NNNNNNN.pt`` (resume, sampling an unfinished run) and ``model.pt``
(sample, evaluate, likelihood); a guide trained alongside has its own two, ``guide-checkpoint-NNNNNNN.pt``
and ``guide.pt``. Each is written through :func:`write_recorded`, which records its
digest in ``manifest.json``, so a file cut short, edited or flipped by a failing disk is told apart
from the one flowkit wrote — even where the damage leaves a loadable file with finite weights.

The digests live in a file of their own, not in ``status.json``: the status is rewritten at every state
change and may be removed by hand when damaged (``flowkit resume`` then reads the state from the
checkpoints); the digests must survive both.

Order of writes, so that a kill at any moment leaves every file either verifiable or absent:

1. the new digest is recorded as ``pending`` for the name (the manifest, written atomically);
2. the file is written atomically (:func:`flowkit.files.write_atomic`);
3. the digest moves from ``pending`` to ``files`` (the manifest again, written last).

A file matches when its digest is its ``files`` entry or its ``pending`` one: a kill between 1 and 2
leaves the old file (matching ``files``), between 2 and 3 the new one (matching ``pending``). Only the
process holding the run's lock (:mod:`flowkit.engine.lock`) writes the manifest.

A run directory written before manifests existed has none; its files are read unverified, as before,
until ``flowkit resume`` records them (:func:`adopt`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowkit.engine.rundir import write_atomic, write_json
from flowkit.errors import FlowkitError

#: The manifest's file name in a run directory.
MANIFEST = "manifest.json"
#: Its format tag.
FORMAT = "flowkit-manifest-1"
#: The files of a run directory that flowkit records and reads back.
RECORDED = re.compile(r"pipeline\.toml|model\.pt|checkpoint-\d+\.pt|guide\.pt|guide-checkpoint-\d+\.pt")


def digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``: ``{"format", "files": {name: digest}, "pending": {...}}``;
    ``None`` where there is none (a run directory written before manifests). A damaged one is refused
    in one line: without it nothing of the run can be verified."""
    path = directory / MANIFEST
    if path.is_symlink() or path.is_dir():
        raise _damaged(path, "it is a link or a directory")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _damaged(path, exc.strerror or type(exc).__name__) from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "not JSON") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not all(_digests(manifest.get(part)) for part in ("files", "pending"))
    ):
        raise _damaged(path, f"not a '{FORMAT}' manifest")
    return manifest


def _digests(table: object) -> bool:
    return isinstance(table, dict) and all(
        isinstance(name, str) and isinstance(value, str) for name, value in table.items()
    )


def _damaged(path: Path, why: str) -> FlowkitError:
    return FlowkitError(
        f"{path}: unreadable manifest ({why}); the run's files cannot be verified without it. Restore "
        f"it, or remove it to read the run unverified (as a run of an older flowkit) at your own risk"
    )


def mismatch(path: Path, data: bytes) -> str | None:
    """Why ``data``, the bytes read from ``path`` (a file of a run directory), is not the file flowkit
    wrote there; ``None`` when it is, or when the directory has no manifest (nothing to check against)."""
    if not RECORDED.fullmatch(path.name):  # a file of the user's (a --out beside the run): not ours
        return None
    manifest = read_manifest(path.parent)
    if manifest is None:
        return None
    recorded = [manifest[part][path.name] for part in ("files", "pending") if path.name in manifest[part]]
    if not recorded:
        return f"not recorded in {MANIFEST} (flowkit did not write it)"
    if digest(data) not in recorded:
        return f"its sha256 differs from the one recorded in {MANIFEST} (the file was changed or cut short)"
    return None


def read_verified(path: Path) -> bytes:
    """The bytes of ``path``, raising a one-line :class:`FlowkitError` naming it when they fail the
    manifest (:func:`mismatch`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FlowkitError(f"{path}: no such file") from None
    except OSError as exc:
        raise FlowkitError(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    why = mismatch(path, data)
    if why is not None:
        raise FlowkitError(f"{path}: {why}")
    return data


def write_recorded(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with its digest recorded in the manifest (see the module's
    doc for the order of writes)."""
    directory, name = path.parent, path.name
    manifest = read_manifest(directory) or _new()
    manifest["pending"][name] = digest(data)
    _write(directory, manifest)
    write_atomic(path, lambda handle: handle.write(data))
    manifest["files"][name] = manifest["pending"].pop(name)
    _write(directory, manifest)
    return path


def forget(directory: Path, names: Iterable[str]) -> None:
    """Drop the entries of files removed from ``directory`` (pruned checkpoints)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return
    gone = [name for name in names if name in manifest["files"] or name in manifest["pending"]]
    if not gone:
        return
    for name in gone:
        manifest["files"].pop(name, None)
        manifest["pending"].pop(name, None)
    _write(directory, manifest)


def adopt(directory: Path, names: Iterable[str]) -> bool:
    """Record the files ``names`` of a run directory that has no manifest (written by an older flowkit)
    as they are now, so that from here on they are verified; ``False`` (nothing done) where it has one."""
    if read_manifest(directory) is not None:
        return False
    manifest = _new()
    for name in names:
        with contextlib.suppress(OSError):
            manifest["files"][name] = digest((directory / name).read_bytes())
    _write(directory, manifest)
    return True


def _new() -> dict[str, Any]:
    return {"format": FORMAT, "files": {}, "pending": {}}


def _write(directory: Path, manifest: dict[str, Any]) -> None:
    write_json(directory / MANIFEST, manifest)


def write_resolved(path: Path, data: dict[str, Any]) -> Path:
    """The resolved pipeline ``data`` as TOML to ``path`` (a run's ``pipeline.toml``), recorded."""
    import tomli_w

    return write_recorded(path, tomli_w.dumps(data).encode("utf-8"))


def check_resolved(path: Path) -> None:
    """Refuse, in one line, a run's resolved ``pipeline.toml`` that is not the one flowkit wrote: cut
    short before ``[train]`` it would silently train with the defaults. There is no other good copy of
    the run's settings, so it is refused, never repaired. Any other file (no manifest beside it, or
    not named ``pipeline.toml``) passes unchecked."""
    if path.name != "pipeline.toml" or not path.is_file():
        return
    try:
        data = path.read_bytes()
    except OSError:
        return  # reading it for the build says why, naming it
    why = mismatch(path, data)
    if why is not None:
        raise FlowkitError(
            f"{path}: {why}; flowkit will not guess the settings the run was trained with: put back "
            f"the file flowkit wrote (from a copy), or start a new run with `flowkit run`"
        )
