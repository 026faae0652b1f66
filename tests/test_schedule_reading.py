"""One way to read a schedule: ``schedule.coefficients(t)`` (a :class:`Coefficients` record, then
``.broadcast(like)`` or ``.tensors(t)``). No module under ``flowkit/`` or ``plugins/`` but the schedule
implementations calls a schedule's four functions or the removed ``broadcast_coefficients``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The schedule implementations: the Schedule base (its default ``coefficients``) and the built-ins.
ALLOWED = {Path("flowkit/paths.py"), Path("plugins/flowkit_gaussian/schedules.py")}
FORBIDDEN_CALLS = {"alpha", "beta", "d_alpha", "d_beta"}
FORBIDDEN_NAMES = {"broadcast_coefficients"}


def offences(source: str, filename: str) -> list[str]:
    """``file:line: what`` for each call of ``.alpha(``, ``.beta(``, ``.d_alpha(``, ``.d_beta(`` and each
    mention of ``broadcast_coefficients`` (an attribute, a name or a definition) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: calls .{node.func.attr}(...)")
        named = (
            node.attr
            if isinstance(node, ast.Attribute)
            else node.id
            if isinstance(node, ast.Name)
            else node.name
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            else None
        )
        if named in FORBIDDEN_NAMES:
            found.append(f"{filename}:{node.lineno}: uses {named}")
    return found


def test_no_module_reads_a_schedule_but_through_coefficients():
    found = []
    for top in ("flowkit", "plugins"):
        for file in sorted((ROOT / top).rglob("*.py")):
            relative = file.relative_to(ROOT)
            if relative not in ALLOWED:
                found += offences(file.read_text(), str(relative))
    assert not found, "read a schedule with schedule.coefficients(t):\n" + "\n".join(found)


def test_the_checker_flags_a_planted_reading():
    planted = (
        "def f(path, t, x):\n"
        "    a = path.schedule.alpha(t)\n"
        "    c = path.schedule.coefficients(t)\n"
        "    return path.broadcast_coefficients(t, x), c.beta, torch.add(x, x, alpha=2)\n"
    )
    assert offences(planted, "plugins/planted.py") == [
        "plugins/planted.py:2: calls .alpha(...)",
        "plugins/planted.py:4: uses broadcast_coefficients",
    ]
