"""What importing loads: the contract modules import no engine, ``import flowkit`` loads neither torch
nor the engine, and ``flowkit --help`` runs without torch. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_the_contract_modules_import_no_engine():
    result = _python("""
        import sys
        import flowkit.interfaces, flowkit.hookspecs
        banned = ["flowkit.engine", "flowkit.config", "flowkit.registry", "flowkit.cli", "flowkit.api"]
        print([m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned)])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_flowkit_loads_neither_torch_nor_the_engine():
    result = _python("""
        import sys
        import flowkit
        loaded = [m for m in sys.modules if m == "torch" or m.startswith(("flowkit.engine", "flowkit.api"))]
        print(sorted(loaded))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_needs_no_torch():
    result = _python("""
        import sys
        from flowkit.cli import main
        main(["--help"], standalone_mode=False)
        print("torch loaded:", "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert result.stdout.strip().endswith("torch loaded: False")
    cli = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flowkit", "--help"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert "Usage:" in cli.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in cli.stderr.splitlines() if "|" in line}
    assert "flowkit.cli" in imported and "torch" not in imported
