"""What a newcomer reads is what flowkit does: the user guide's table of components per pipeline table
names every registered component of those kinds (and nothing else), the plugin guide's sample
``flowkit plugins`` output is real output, and ``flowkit sample`` says how an adaptive simulator
stepped instead of quoting ``[sample] steps``, which it does not use."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from conftest import tiny_file

from flowkit.cli import main
from flowkit.testing import make_manager

ROOT = Path(__file__).resolve().parents[1]
#: The user guide's rows that list components: the kinds each names, and the other words in backticks.
ROWS = {
    "[data]": (("dataset",), set()),
    "[path]": (("path", "schedule"), {"schedule"}),
    "[model]": (("model",), {"[loss]", "[train]"}),
    "[loss]": (("loss", "coupling"), {"coupling"}),
}


def _row(text: str, table: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| `{table}` |")]
    return line


def test_the_user_guide_table_names_every_component_of_its_kinds():
    text = (ROOT / "docs" / "user-guide.md").read_text(encoding="utf-8")
    registry = make_manager(warn=False).registry
    for table, (kinds, others) in ROWS.items():
        names = set(re.findall(r"`([^`]+)`", _row(text, table))) - {table}
        registered = {e.name for e in registry.entries() if e.kind in kinds}
        assert names - others == registered, f"user-guide.md, the {table} row: {sorted(names ^ registered)}"


def test_the_user_guide_table_has_a_row_per_table():
    from flowkit import docs

    text = (ROOT / "docs" / "user-guide.md").read_text(encoding="utf-8")
    rows = "\n".join(line for line in text.splitlines() if line.startswith("| `["))
    for table in ["data", "path", "model", "loss", *docs.sections(make_manager(warn=False).registry)]:
        assert f"`[{table}]`" in rows, table


def test_the_plugin_guides_sample_of_flowkit_plugins_is_real_output(make_distribution, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugin-package" / "src"))
    monkeypatch.delenv("FLOWKIT_DISABLE_PLUGINS", raising=False)
    make_distribution("flowkit-extras", "0.3.0", {"extras": "flowkit_extras"}, {})
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    real = result.stdout.splitlines()
    guide = (ROOT / "docs" / "plugin-guide.md").read_text(encoding="utf-8")
    start = guide.index("$ flowkit plugins\n") + len("$ flowkit plugins\n")
    sample = guide[start : guide.index("\n$ ", start)].splitlines()
    shown = [line for line in sample if line != "..."]
    assert len(shown) >= 5
    # each line shown is a line of the real output, in the same order ("..." leaves lines out)
    position = 0
    for line in shown:
        assert line in real[position:], f"plugin-guide.md shows {line!r}, not in `flowkit plugins` output"
        position = real.index(line, position) + 1


def test_flowkit_sample_says_how_an_adaptive_simulator_stepped(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(tiny_file(tmp_path)), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["sample", str(out), "--n", "50", "--set", "sample.simulator=dopri5"])
    assert result.exit_code == 0, result.output
    written = out / "samples-dopri5-adaptive.npy"
    found = re.fullmatch(
        r"50 samples \(dopri5, adaptive: (\d+) steps accepted, (\d+) rejected, nfe = (\d+)\) "
        rf"from {re.escape(str(out / 'model.pt'))}.*\nwritten to {re.escape(str(written))}\n",
        result.stdout,
    )
    assert found is not None, result.stdout
    accepted, rejected, nfe = map(int, found.groups())
    # dopri5's count: 6 per trial step (FSAL), one at the start, one choosing the first step size
    assert nfe == 6 * (accepted + rejected) + 2
