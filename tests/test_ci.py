"""``.ci/run`` works as on a fresh machine, and the test suite asserts no wall-clock time.

``.ci/run`` is run for real on a copy of itself whose ``scripts/setup.sh`` is a stand-in: it records
what it was given and installs fake ``ruff``, ``mypy`` and ``pytest`` modules (which record their
calls) into the environment it was pointed at. So the test checks that each run makes a brand-new
environment outside the checkout, installs only through ``scripts/setup.sh``, runs lint, format
and the tests with that environment's Python, removes it afterwards, and fails when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SETUP_STUB = r"""#!/usr/bin/env bash
# Stand-in for scripts/setup.sh: record the call, install fake ruff, mypy and pytest into "$PYTHON".
set -euo pipefail
cd "$(dirname "$0")/.."
fresh=yes
"$PYTHON" -c "import pytest" 2>/dev/null && fresh=no
"$PYTHON" -c "import ruff" 2>/dev/null && fresh=no
site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for tool in ruff mypy pytest; do
    mkdir -p "$site/$tool"
    : > "$site/$tool/__init__.py"
    cat > "$site/$tool/__main__.py" <<EOF
import json, os, sys
with open(os.environ["CI_LOG"], "a") as log:
    log.write(json.dumps({"tool": "$tool", "args": sys.argv[1:], "python": sys.executable,
                          "cwd": os.getcwd()}) + "\n")
sys.exit(int(os.environ.get("FAKE_EXIT_$tool", "0")))
EOF
done
printf '{"tool": "setup", "python": "%s", "which": "%s", "cwd": "%s", "fresh": "%s"}\n' \
    "$PYTHON" "$(command -v python)" "$PWD" "$fresh" >> "$CI_LOG"
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of ``.ci/run`` with the stand-in ``scripts/setup.sh``, and the folder for temporary files."""
    root = tmp_path / "checkout"
    (root / ".ci").mkdir(parents=True)
    (root / "scripts").mkdir()
    shutil.copy2(ROOT / ".ci" / "run", root / ".ci" / "run")
    (root / "scripts" / "setup.sh").write_text(SETUP_STUB)
    temp = tmp_path / "tmp"
    temp.mkdir()
    return root, temp


def run_ci(root: Path, temp: Path, **extra: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    log = temp.parent / "ci.log"
    log.unlink(missing_ok=True)
    outer_site = str(Path(pytest.__file__).parents[1])  # where the real pytest lives: must not leak in
    env = {
        **os.environ,
        "CI": "true",
        "TMPDIR": str(temp),
        "CI_LOG": str(log),
        "CI_PYTHON": sys.executable,
        "PYTHONPATH": outer_site,
        **extra,
    }
    done = subprocess.run(["bash", str(root / ".ci" / "run")], capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, rows


@pytest.mark.slow
def test_ci_builds_a_fresh_environment_and_uses_only_it(checkout):
    root, temp = checkout
    environments = []
    for _ in range(2):
        done, rows = run_ci(root, temp)
        assert done.returncode == 0, done.stdout + done.stderr
        setup, *calls = rows
        assert setup["tool"] == "setup" and setup["fresh"] == "yes"  # nothing installed before setup.sh
        python = Path(setup["python"])
        assert setup["which"] == str(python)  # activated: its python first on PATH
        assert python.is_relative_to(temp) and not python.is_relative_to(root)  # outside the checkout
        assert Path(setup["cwd"]) == root
        steps = [(c["tool"], c["args"]) for c in calls]
        assert steps[:2] == [("ruff", ["check", "."]), ("ruff", ["format", "--check", "."])]
        assert steps[-1] == ("pytest", [])  # the README's command, as written: python -m pytest
        for call in calls:
            assert call["python"] == str(python) and Path(call["cwd"]) == root
        assert not python.exists()  # removed after the run
        environments.append(python)
    assert environments[0] != environments[1]
    assert list(temp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(("tool", "code"), [("pytest", "5"), ("pytest", "1"), ("ruff", "1")])
def test_ci_fails_when_a_step_fails(checkout, tool, code):
    # pytest's 5 (no tests collected) is a failure too: the suite has tests.
    root, temp = checkout
    done, rows = run_ci(root, temp, **{f"FAKE_EXIT_{tool}": code})
    assert done.returncode == int(code), done.stdout + done.stderr
    if tool == "ruff":
        assert [r["tool"] for r in rows] == ["setup", "ruff"]  # stops at the first failure
    assert list(temp.iterdir()) == []


def test_ci_script_is_strict():
    text = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in text
    assert "scripts/setup.sh" in text and "pip install" not in text  # installs only through setup.sh


# A clock read in a test is how a wall-clock assertion starts; timings belong in benchmarks/.
CLOCKS = re.compile(r"\b(perf_counter(_ns)?|process_time(_ns)?|monotonic(_ns)?|timeit|time\.time(_ns)?)\b")


def test_no_test_reads_the_wall_clock():
    offenders = []
    for path in sorted((ROOT / "tests").glob("**/*.py")):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CLOCKS.search(line) or re.match(r"\s*(import time\b|from time import)", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], "move timings to benchmarks/:\n" + "\n".join(offenders)
