"""The README's catalogue lists every artifact with its fixed path; .ci/run calls make test."""

from __future__ import annotations

from tuneatlas.catalogue import ARTIFACTS


def test_readme_catalogue_lists_every_artifact(repo):
    readme = (repo / "README.md").read_text()
    for artifact in ARTIFACTS.values():
        row = next(
            (line for line in readme.splitlines() if line.startswith(f"| {artifact.id} |")), None
        )
        assert row is not None, f"{artifact.id} missing from the README catalogue"
        assert f"`{artifact.table}`" in row
        for figure in artifact.figures:
            assert f"`{figure}`" in row


def test_ci_runs_the_readme_test_command(repo):
    assert "make test" in (repo / ".ci/run").read_text()
    assert "make test " in (repo / "README.md").read_text()


def test_every_catalogued_artifact_has_a_table_builder_and_a_figure():
    from tuneatlas.studies.registry import _registry

    builders, plotters = _registry()
    assert set(builders) == set(plotters) == set(ARTIFACTS)
