"""docs/: the generated pipeline reference is up to date and complete; the guides' excerpts and links
match the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowkit import docs
from flowkit.docs import generate_reference, param_rows, sections
from flowkit.testing import make_manager

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ["user-guide.md", "plugin-guide.md", "design.md"]


@pytest.fixture(scope="module")
def reference() -> str:
    return generate_reference()


def test_the_reference_is_up_to_date(reference):
    current = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert current == reference, "docs/reference.md is out of date: run `python -m flowkit.docs`"


def test_the_reference_has_every_kind_component_and_parameter(reference):
    manager = make_manager(warn=False)
    for kind in manager.registry.kinds():
        assert f"\n### {kind}\n" in reference
    entries = manager.registry.entries()
    assert len(entries) >= 29
    for entry in entries:
        start = reference.index(f"\n#### {entry.kind} `{entry.name}`\n")
        end = reference.find("\n#### ", start + 1)
        section = reference[start:end]
        for row in param_rows(entry.cls.Params):
            assert f"| `{row.name}` | " in section, (entry.kind, entry.name, row.name)
    for table, cls in sections().items():
        start = reference.index(f"### `[{table}]`")
        for row in param_rows(cls):
            assert f"| `{row.name}` | " in reference[start:]


def test_the_check_mode_detects_a_stale_reference(tmp_path, reference, capsys):
    target = tmp_path / "reference.md"
    target.write_text(reference, encoding="utf-8")
    assert docs.main(["--check", "--out", str(target)]) == 0
    target.write_text(reference.replace("| `steps` |", "| `stpes` |"), encoding="utf-8")
    assert docs.main(["--check", "--out", str(target)]) == 1
    assert f"{target} is out of date: run `python -m flowkit.docs`" in capsys.readouterr().err
    assert docs.main(["--out", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == reference


def test_a_third_party_plugin_does_not_change_the_reference(make_distribution, reference):
    source = (
        "from flowkit import hookimpl\nfrom flowkit.interfaces import Metric\n"
        "class Zero(Metric):\n    '''Always 0.'''\n    def __call__(self, a, b): return 0.0\n"
        "@hookimpl\ndef flowkit_register(registry): registry.add('metric', 'zero', Zero)\n"
    )
    make_distribution("flowkit-zero", "1.0", {"zero": "zero_plugin"}, {"zero_plugin": source})
    assert generate_reference() == reference


def _excerpts(text: str) -> list[tuple[str, str]]:
    """``(path, code)`` for every fenced block preceded by ``<!-- from: PATH -->``."""
    pattern = re.compile(r"<!-- from: (\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)
    return pattern.findall(text)


def test_the_plugin_guide_quotes_the_example_package_verbatim():
    excerpts = _excerpts((DOCS / "plugin-guide.md").read_text(encoding="utf-8"))
    assert len(excerpts) >= 9
    for path, code in excerpts:
        assert code in (ROOT / path).read_text(encoding="utf-8"), (
            f"plugin-guide.md excerpt of {path} is stale"
        )


@pytest.mark.parametrize("guide", GUIDES)
def test_relative_links_resolve(guide):
    text = (DOCS / guide).read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, guide
    for link in local:
        assert (DOCS / link).exists(), f"{guide} links to {link}, which does not exist"


def test_math_is_shipped_with_the_docs():
    text = (DOCS / "math.md").read_text(encoding="utf-8")
    assert "t = 0" in text and "t = 1" in text


def test_the_user_guide_python_snippet_runs():
    """The "From Python" block of the user guide runs as written (its own assert included)."""
    text = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    marker = "<!-- test: this block runs in tests/test_docs.py -->\n```python\n"
    start = text.index(marker) + len(marker)
    code = text[start : text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "docs/user-guide.md", "exec"), namespace)
    assert namespace["x"].shape == (500, 2)
    assert namespace["losses"][-1][0] == 300
    assert {"distance", "noise_floor", "ratio_to_floor"} <= set(namespace["metrics"])
