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


def test_studies_page_names_every_artifact_and_replaces_the_shared_notes(repo):
    """docs/studies.md is the one in-repository account of the papers: every catalogued artifact
    appears there, and nothing in the repository points at the out-of-tree study notes."""
    studies = (repo / "docs" / "studies.md").read_text()
    for artifact_id in ARTIFACTS:
        assert artifact_id in studies, f"{artifact_id} missing from docs/studies.md"
    assert "arxiv.org/abs/2504.04966" in studies  # S1's paper, cited
    roots = ["README.md", "paper.yaml", "config.yaml", "src", "tests", "benchmarks", "docs"]
    for root in roots:
        paths = [repo / root] if (repo / root).is_file() else (repo / root).rglob("*")
        for path in paths:
            if path.is_file() and path.suffix in {".md", ".py", ".yaml", ".rst", ".smk"}:
                text = path.read_text(errors="ignore")
                assert "STUDIES" + ".md" not in text, f"{path} still cites the out-of-tree notes"
