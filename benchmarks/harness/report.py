"""What a benchmark hands over: its JSON, written atomically (the one machine-read output), and the
markdown tables a human reads."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The benchmarks' folder, and where their results go (git-ignored).
HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "results"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and ``os.replace``: a reader (or a
    run stopped in the middle) sees the previous file or the new one whole, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_json(path: Path, result: Any) -> None:
    """``result`` as indented JSON at ``path``, atomically (:func:`write_atomically`)."""
    write_atomically(path, json.dumps(result, indent=2) + "\n")


def publish(out: Path, result: Any, table: str) -> None:
    """Hand a run over: ``result`` as JSON at ``out``, ``table`` as markdown beside it (``.md``), both
    atomically, and the table printed with where they went."""
    write_json(out, result)
    write_atomically(out.with_suffix(".md"), table + "\n")
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def read_json(path: Path) -> Any:
    """A result written by :func:`write_json` (or any JSON file)."""
    return json.loads(path.read_text(encoding="utf-8"))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
