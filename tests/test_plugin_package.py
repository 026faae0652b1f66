"""examples/plugin-package, installed for real: pip builds and installs it into a virtual environment
(that sees this environment's packages), and flowkit's CLI in that environment finds, lists, runs,
blocks and — after ``pip uninstall`` — forgets its components. Offline: no package index is used, and
the build runs without isolation on this environment's setuptools (>= 70.1, from flowkit's dev extra,
builds wheels without the ``wheel`` package).

This environment is never modified: the package is copied and built in a temporary folder and
installed into a temporary virtual environment. That environment sees this one's packages except its
third-party flowkit plugins, so the tests pass whether or not ``pip install ./examples/plugin-package``
(or any other plugin) was run here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "plugin-package"

pytestmark = pytest.mark.slow


BATCH = """
import json, sys
from click.testing import CliRunner
from flowkit.cli import main
rows = []
for args, env in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args, env=env)
    rows.append({"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr})
print(json.dumps(rows))
"""


@attrs.define
class Invocation:
    code: int
    stdout: str
    stderr: str


#: One line of a ``.pth`` file: Python runs it at start-up and reads the folder's own ``.pth`` files.
ADD_SITE = "import site; site.addsitedir({!r})\n"


def site_directories() -> list[str]:
    """This interpreter's site-packages folders (a virtual environment's, not its base Python's)."""
    found = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(found) if Path(d).is_dir()]


def third_party_plugins_in(directory: Path) -> set[str]:
    """The top-level names in the site folder ``directory`` that belong to a distribution with
    ``flowkit`` entry points other than flowkit itself (its modules, dist-info, ``.pth`` files)."""
    hidden: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(directory)]):
        if dist.metadata["Name"] == "flowkit" or not any(ep.group == "flowkit" for ep in dist.entry_points):
            continue
        for file in dist.files or ():
            top = Path(file).parts[0] if Path(file).parts else ""
            if top not in ("", "..", "__pycache__"):
                hidden.add(top)
    return hidden


def without_third_party_plugins(directory: Path, view: Path) -> Path:
    """``directory`` itself when it holds no third-party flowkit plugin; otherwise ``view``, a folder of
    links to everything else in it."""
    hidden = third_party_plugins_in(directory)
    if not hidden:
        return directory
    view.mkdir()
    for entry in directory.iterdir():
        if entry.name not in hidden:
            (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return view


class Environment:
    """A virtual environment that sees this environment's packages (flowkit, torch, pytest, setuptools)
    but none of its third-party flowkit plugins.

    ``--system-site-packages`` would not do: made from a virtual environment, it shows the packages of
    the base interpreter instead. This environment's site folders are added through a ``.pth`` file,
    after the new environment's own; a folder holding a third-party plugin is replaced by a view of
    links without it (else an installed flowkit-extras would outlive ``pip uninstall`` in this one).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "flowkit-extras"
        shutil.copytree(
            PACKAGE, self.source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        bindir = "Scripts" if os.name == "nt" else "bin"
        self.python = str(venv / bindir / ("python.exe" if os.name == "nt" else "python"))
        purelib = subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        views = [
            without_third_party_plugins(Path(d), root / f"site-view-{i}")
            for i, d in enumerate(site_directories())
        ]
        lines = "".join(ADD_SITE.format(str(d)) for d in views)
        (Path(purelib) / "_outer_environment.pth").write_text(lines, encoding="utf-8")
        self.present = False
        self.env = {k: v for k, v in os.environ.items() if k not in ("FLOWKIT_DISABLE_PLUGINS", "PYTHONPATH")}

    def pip(self, *args: str) -> None:
        command = [sys.executable, "-m", "pip", "--python", self.python, "--disable-pip-version-check"]
        done = subprocess.run([*command, *args], capture_output=True, text=True, env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def install(self) -> None:
        self.pip("install", "--no-index", "--no-deps", "--no-build-isolation", "-q", str(self.source))
        self.present = True

    def uninstall(self) -> None:
        self.pip("uninstall", "-y", "-q", "flowkit-extras")
        self.present = False

    def flowkit(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """``flowkit ARGS`` with this environment's interpreter."""
        return subprocess.run(
            [self.python, "-m", "flowkit.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
        )

    def flowkit_many(self, *calls: tuple[list[str | Path], dict[str, str]]) -> list[Invocation]:
        """Several ``flowkit`` commands (arguments, extra environment variables) in one interpreter of
        this environment, through Click's test runner: torch and the plugins load once."""
        payload = json.dumps([([str(a) for a in args], env) for args, env in calls])
        done = subprocess.run(
            [self.python, "-c", BATCH, payload], capture_output=True, text=True, env=self.env, cwd=self.root
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return [Invocation(**row) for row in json.loads(done.stdout)]


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    environment = Environment(tmp_path_factory.mktemp("plugin-package"))
    environment.install()
    return environment


@pytest.fixture
def installed(environment):
    """The environment with flowkit-extras installed (again, after the uninstall test)."""
    if not environment.present:
        environment.install()
    return environment


def test_this_environment_builds_wheels_without_isolation_and_offline():
    # `pip install --no-build-isolation` uses this environment's setuptools: before 70.1 it needs the
    # wheel package for bdist_wheel ("error: invalid command 'bdist_wheel'"); flowkit's dev extra
    # asks for setuptools>=70.1, and the package declares the same.
    import setuptools

    assert importlib.util.find_spec("setuptools.command.bdist_wheel") or importlib.util.find_spec("wheel"), (
        f"setuptools {setuptools.__version__} cannot build wheels here: pip install 'setuptools>=70.1'"
    )
    config = tomllib.loads((PACKAGE / "pyproject.toml").read_text())
    assert config["build-system"] == {
        "requires": ["setuptools>=70.1"],
        "build-backend": "setuptools.build_meta",
    }
    # the test environment sees this setuptools (not the base interpreter's, which may be older)
    assert any(Path(setuptools.__file__).is_relative_to(d) for d in site_directories())


def test_installed_plugin_is_listed_with_its_distribution_and_version(installed):
    listing, as_json, described = installed.flowkit_many(
        (["plugins"], {}), (["plugins", "--json"], {}), (["describe", "schedule", "polynomial"], {})
    )
    assert listing.code == 0, listing.stderr
    assert "extras  (flowkit-extras 0.3.0)\n    schedule   polynomial\n    simulator  ralston, rk38\n" in (
        listing.stdout
    )
    data = json.loads(as_json.stdout)
    row = next(r for r in data["plugins"] if r["name"] == "extras")
    assert row == {
        "name": "extras",
        "distribution": "flowkit-extras",
        "version": "0.3.0",
        "module": "flowkit_extras",
        "components": [
            {"kind": "schedule", "name": "polynomial"},
            {"kind": "simulator", "name": "ralston"},
            {"kind": "simulator", "name": "rk38"},
        ],
    }
    assert data["problems"] == []
    assert described.code == 0, described.stderr
    assert "schedule 'polynomial'  (plugin 'extras', flowkit-extras 0.3.0;" in described.stdout
    assert "power      float  2.0      Exponent p of (1 - t)^p" in described.stdout


def test_the_packages_own_tests_pass_against_the_installed_package(installed):
    """Its tests use flowkit's pytest plugin (flowkit_manager) and fit the convergence orders."""
    done = subprocess.run(
        [installed.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        env=installed.env,
        cwd=installed.source,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


def test_its_pipeline_runs_through_the_cli(installed):
    out = installed.root / "run"
    result = installed.flowkit(
        "run",
        installed.source / "pipelines" / "moons-rk38.toml",
        "--out",
        out,
        "--quiet",
        *("--set", "train.steps=300", "--set", "train.ema_decay=0", "--set", "model.hidden=[64, 64]"),
        *("--set", "sample.n=500", "--set", "evaluate.n=500", "--set", "report.plots=false"),
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 4 * 12  # rk38: four drift evaluations per step, 12 steps
    # 300 steps already move the noise towards the moons: W2 from N(0, I) to them is 0.67 (n = 500).
    assert metrics["distance"] < 0.5, metrics
    resolved = (out / "pipeline.toml").read_text()
    assert 'extras = "flowkit-extras 0.3.0"' in resolved
    assert 'kind = "polynomial"' in resolved and 'kind = "rk38"' in resolved


def test_blocking_the_plugin_removes_its_components(installed):
    pipeline = installed.source / "pipelines" / "moons-rk38.toml"
    with_option, with_env, not_blocked = installed.flowkit_many(
        (["-p", "no:extras", "validate", pipeline], {}),
        (["plugins"], {"FLOWKIT_DISABLE_PLUGINS": "extras"}),
        (["validate", pipeline], {}),
    )
    assert with_option.code == 1
    assert "[path.schedule] key 'kind': unknown schedule 'polynomial'" in with_option.stderr
    assert "extras  (blocked)" in with_env.stdout and "polynomial" not in with_env.stdout
    assert not_blocked.code == 0, not_blocked.stderr
    assert "simulator=rk38" in not_blocked.stdout


def test_uninstalling_removes_its_components(installed):
    pipeline = installed.source / "pipelines" / "moons-rk38.toml"
    installed.uninstall()
    listing, validated = installed.flowkit_many((["plugins", "--json"], {}), (["validate", pipeline], {}))
    data = json.loads(listing.stdout)
    assert "extras" not in {row["name"] for row in data["plugins"]}
    assert data["problems"] == []
    assert validated.code == 1
    assert "[path.schedule] key 'kind': unknown schedule 'polynomial'" in validated.stderr
