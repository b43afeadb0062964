"""The documents point somewhere: every path, code name, cited section and metric they name exists (references.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.references import broken_references, defined_names, sections

pytestmark = pytest.mark.unit


def test_every_reference_in_the_documents_resolves() -> None:
    broken = broken_references()
    assert not broken, "references that point nowhere:\n" + "\n".join(map(str, broken))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small repository to plant references in: one module, one page with sections, the metrics module."""
    (tmp_path / "serve_app/engine").mkdir(parents=True)
    (tmp_path / "serve_app/deployments").mkdir(parents=True)
    (tmp_path / "serve_app/__init__.py").write_text("")
    (tmp_path / "serve_app/engine/__init__.py").write_text("")
    (tmp_path / "serve_app/engine/model.py").write_text(
        "class Engine:\n    def score(self) -> None: ...\n\nLIMIT = 3\n"
    )
    (tmp_path / "serve_app/deployments/replica_metrics.py").write_text('STEP = "mt5_step_rows"\n')
    page = "# Benchmarks\n\n## Fidelity of the faster settings\n\n```\n# not one\n```\n"
    (tmp_path / "BENCHMARKS.md").write_text(page)
    (tmp_path / "notes.md").write_text("**2026-12-06, the EPYC box: a finding.** It said so.\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def plant(tree: Path, text: str) -> list[str]:
    (tree / "README.md").write_text(text)
    return [str(b) for b in broken_references(tree, ["README.md"])]


def test_references_that_exist_pass(tree: Path) -> None:
    text = (
        "See serve_app/engine/model.py, engine/model.py, engine/model.Engine.score, serve_app.engine.model.LIMIT, "
        'the folder serve_app/engine/, BENCHMARKS.md, "Fidelity", notes.md, "a finding", ray_mt5_step_rows_bucket, '
        "and things that are not this tree's paths: text/html, /etc/nginx/nginx.conf, bench/results/<name>.json, "
        "43e6d9c:bench/levers.py."
    )
    assert plant(tree, text) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("the engine: serve_app/engine/modle.py", "no such file or folder"),
        ("the old deployments/model_availability.py", "no such file or folder"),
        ("`engine/model.Engine.sore` scores", "defines no Engine.sore"),
        ("run serve_app.engine.levers", "serve_app/engine/__init__.py defines no levers"),
        ("run bench.levers", "no such module"),
        ("serve_app.engine.model.LIMITS", "defines no LIMITS"),
        ('as measured (BENCHMARKS.md, "Lanes")', "no such section"),
        ('in a code block only (BENCHMARKS.md, "not one")', "no such section"),
        ('MISSING.md, "Anything"', "MISSING.md': no such file or folder"),
        ("the metric ray_mt5_batch_size_bucket", "defines no such metric"),
    ],
)
def test_a_planted_broken_reference_is_reported(tree: Path, text: str, why: str) -> None:
    reported = plant(tree, text)
    assert len(reported) == 1 and why in reported[0], reported


def test_the_repository_check_fails_on_a_broken_path_planted_in_a_copy(tmp_path: Path) -> None:
    """The check as the suite runs it, on a copy of this repository's pages with one path broken."""
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "repo"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".venv", ".git", "test-output", "*.pyc", ".*cache"))
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    assert broken_references(copy) == []
    page = copy / "RELIABILITY.md"
    page.write_text(page.read_text().replace("serve_app/ingress/model_availability.py", "serve_app/ingress/gone.py"))
    reported = [str(b) for b in broken_references(copy)]
    assert reported == ["RELIABILITY.md: 'serve_app/ingress/gone.py': no such file or folder"]


def test_names_and_sections_are_read_from_source_and_headings(tree: Path) -> None:
    names = defined_names(tree / "serve_app/engine/model.py")
    assert names[""] == {"Engine", "LIMIT"} and names["Engine"] == {"score"}
    assert sections(tree / "BENCHMARKS.md") == ["benchmarks", "fidelity of the faster settings"]
    assert sections(tree / "notes.md") == ["2026-12-06, the epyc box: a finding."]
