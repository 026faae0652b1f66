"""``flowkit describe`` (parameters from the attrs Params classes) and ``flowkit init`` (templates
that validate)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from flowkit.cli import _templates, main
from flowkit.docs import param_rows
from flowkit.testing import make_manager


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_describe_prints_type_default_and_doc_of_every_parameter():
    result = invoke("describe", "schedule", "vp")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0] == "schedule 'vp'  (plugin 'gaussian', flowkit 0.1.0; flowkit_gaussian.schedules.VPSchedule)"
    )
    assert lines[2].startswith("  Variance preserving (DDPM / score-SDE VP)")
    table = lines[lines.index("Parameters:") + 1 :]
    assert table[:3] == [
        "  parameter  type   default  description",
        "  beta_min   float  0.1      Score-SDE rate beta(s) at the data end (s = 0).",
        "  beta_max   float  20.0     Score-SDE rate beta(s) at the noise end (s = 1).",
    ]
    assert 'Example:\n  schedule = { kind = "vp", beta_min = 0.1, beta_max = 20.0 }\n' in result.stdout


def test_describe_shows_nested_components_literals_and_lists():
    path = invoke("describe", "path", "gaussian").stdout
    assert '  schedule          schedule  "ot"     Schedule of alpha_t and beta_t' in path
    assert 'Example:\n  [path]\n  kind = "gaussian"\n  schedule = "ot"\n' in path
    mlp = invoke("describe", "model", "mlp").stdout
    assert "hidden             list[int]" in mlp and "[256, 256, 256]" in mlp
    assert '"silu" | "relu" | "gelu" | "tanh"' in mlp


def test_describe_every_builtin_component():
    manager = make_manager(warn=False)
    for entry in manager.registry.entries():
        result = invoke("describe", entry.kind, entry.name)
        assert result.exit_code == 0, (entry.kind, entry.name, result.output)
        for row in param_rows(entry.cls.Params):
            assert row.doc, f"{entry.kind} '{entry.name}' parameter {row.name} has no doc"
            assert f"  {row.name} " in result.stdout


def test_describe_a_kind_lists_its_components_and_a_section_its_keys():
    kind = invoke("describe", "simulator")
    assert kind.exit_code == 0
    assert kind.stdout.startswith("simulator: An integrator of an `ODE` or `SDE`, fixed-step or adaptive.\n")
    assert "Used in: [sample] simulator, [evaluate] likelihood simulator\n" in kind.stdout
    # The name column is as wide as the longest name (which other plugins may change).
    assert re.search(r"\n  heun +Heun's method \(explicit trapezoid\), second order\.", kind.stdout)
    section = invoke("describe", "train")
    assert section.exit_code == 0
    assert section.stdout.startswith("[train]: the optimisation loop")
    assert (
        "  steps             int                    3000      Optimisation steps (at most 10^9)."
        in section.stdout
    )


def test_describe_errors_name_what_is_known():
    wrong_kind = invoke("describe", "schedul", "vp")
    assert wrong_kind.exit_code == 1
    assert wrong_kind.stderr.startswith(
        "Error: unknown kind 'schedul'. Did you mean 'schedule'? Known kinds: "
    )
    wrong_name = invoke("describe", "simulator", "huen")
    assert wrong_name.exit_code == 1
    assert wrong_name.stderr.startswith("Error: unknown simulator 'huen'. Did you mean 'heun'?")
    section_name = invoke("describe", "train", "steps")
    assert (
        section_name.stderr == "Error: [train] is a section of the pipeline file, not a kind: drop 'steps'\n"
    )


@pytest.mark.parametrize("template", ["moons", "vp-dsm", "mixture-oracle"])
def test_every_template_validates(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = invoke("init", "--template", template)
    assert written.exit_code == 0, written.output
    assert written.stdout.startswith(f"wrote pipeline.toml (template '{template}')")
    validated = invoke("validate", "pipeline.toml")
    assert validated.exit_code == 0, validated.output
    assert validated.stdout.startswith("pipeline.toml: ok (")


def test_templates_are_listed_and_shipped_with_the_package():
    assert set(_templates()) == {"moons", "vp-dsm", "mixture-oracle"}
    listing = invoke("init", "--list")
    assert listing.exit_code == 0
    assert listing.stdout.splitlines()[1] == (
        "moons           Flow matching on two moons: OT Gaussian path, CFM loss, an MLP, Heun sampling."
    )


def test_init_never_overwrites_without_force_and_suggests_templates(tmp_path):
    target = tmp_path / "mine.toml"
    target.write_text("# my work\n")
    refused = invoke("init", target)
    assert refused.exit_code == 1
    assert refused.stderr == f"Error: {target} exists; choose another FILE or pass --force to overwrite it\n"
    assert target.read_text() == "# my work\n"
    forced = invoke("init", target, "--force", "--template", "vp-dsm")
    assert forced.exit_code == 0 and 'kind = "dsm"' in target.read_text()
    unknown = invoke("init", tmp_path / "x.toml", "--template", "moon")
    assert unknown.stderr.startswith("Error: unknown template 'moon'. Did you mean 'moons'? Templates: ")
