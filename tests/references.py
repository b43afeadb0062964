"""Every reference the documents make resolves: repository paths, code names, cited sections, metric names.

Read from the Markdown pages, config.yaml's comments and the Python sources' docstrings and comments:

- a repository path (`serve_app/engine/model.py`, `docs/perf-notes.md`, a folder): it exists, relative to the
  repository, to the citing file's folder, or to `serve_app/` (the docs name modules as `engine/model.py`);
- `commit:path` (`43e6d9c:bench/levers.py`) names a file in git's history, not in the tree: not checked;
- a path followed by a name (`text/tasks.TextTasks.classify`) or a dotted module (`bench.lib.results`): the
  module exists and defines the name (classes, functions and assignments, read from its source, nothing imported);
- a cited section (`BENCHMARKS.md, "Fidelity"`): a heading or a paragraph's bold lead on that page contains the
  quoted words;
- a metric (`ray_mt5_step_rows_bucket`): the replica's metrics define it (`mt5_step_rows`, with Prometheus'
  suffixes).
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "bench", "cluster", "tests")
# A path: at least one slash between name characters, or a Markdown page's bare name.
PATH = re.compile(r"(?<![\w./:@-])((?:\.{1,2}/)?[A-Za-z_][\w.-]*(?:/[\w.-]+)+/?|[\w-]+\.md)(?![\w/])")
DOTTED = re.compile(r"(?<![\w./-])((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)")
SECTION = re.compile(r"([\w./-]+\.md),? [\"“]([^\"”]+)[\"”]")
METRIC = re.compile(r"\bray_(mt5_\w+)")
METRIC_SUFFIXES = ("_bucket", "_sum", "_count", "_total")
SOURCE_SUFFIXES = (".py", ".md", ".yaml")


@dataclass(frozen=True)
class Broken:
    file: str
    reference: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reference!r}: {self.why}"


def tracked_files(root: Path = ROOT) -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split() if name.endswith(SOURCE_SUFFIXES) and (root / name).is_file()]


def prose(path: Path) -> Iterator[str]:
    """The human text of a file: a page whole; a Python file's docstrings and comments; a YAML file's comments."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        yield text
        return
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring
    for line in text.splitlines():
        if "#" in line:
            yield line.split("#", 1)[1]


def defined_names(module: Path) -> dict[str, set[str]]:
    """Names a module's source defines at top level (key "") and inside each class (key: the class)."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    names: dict[str, set[str]] = {"": set()}

    def collect(body: list[ast.stmt], into: set[str], owner: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                into.add(node.name)
                names[f"{owner}{node.name}"] = set()
                collect(node.body, names[f"{owner}{node.name}"], f"{owner}{node.name}.")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                into.add(node.name)
            elif isinstance(node, ast.Assign):
                into.update(target.id for target in node.targets if isinstance(target, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                into.add(node.target.id)
            elif isinstance(node, ast.If | ast.Try):
                collect(node.body, into, owner)

    collect(tree.body, names[""], "")
    return names


def _module_file(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(module: Path, attribute: str) -> bool:
    names = defined_names(module)
    owner = ""
    for part in attribute.split("."):
        if part not in names.get(owner.rstrip("."), set()):
            return False
        owner = f"{owner}{part}."
    return True


def _resolve_path(reference: str, citing: Path, root: Path) -> str | None:
    """None when `reference` names something that exists, else why not."""
    bases = (root, citing.parent, root / "serve_app")
    if any((base / reference).exists() for base in bases):
        return None
    # `folder/module.Name.attr`: the module's file, then the names in it.
    head, _, tail = reference.rstrip("/").partition(".")
    if tail and not tail.startswith(("py", "md")):
        for base in bases:
            module = _module_file(base / head)
            if module is not None:
                return None if _defines(module, tail) else f"{module.relative_to(root)} defines no {tail}"
    return "no such file or folder"


def _resolve_dotted(reference: str, root: Path) -> str | None:
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(root.joinpath(*parts[:cut]))
        if module is not None:
            rest = ".".join(parts[cut:])
            return None if not rest or _defines(module, rest) else f"{module.relative_to(root)} defines no {rest}"
    return "no such module"


def sections(page: Path) -> list[str]:
    """A page's section titles, lower-cased: its headings (outside code blocks) and each paragraph's bold lead
    (`**2026-11-28, the AMX box: CPU priority.**`, as docs/perf-notes.md titles its findings)."""
    titles, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            titles.append(line.lstrip("#").strip().lower())
        elif not fenced and (lead := re.match(r"\*\*(.+?)\*\*", line)):
            titles.append(lead.group(1).lower())
    return titles


def defined_metrics(root: Path = ROOT) -> set[str]:
    source = (root / "serve_app/deployments/replica_metrics.py").read_text(encoding="utf-8")
    return set(re.findall(r"\"(mt5_\w+)\"", source))


def broken_references(root: Path = ROOT, files: list[str] | None = None) -> list[Broken]:
    """Every reference in `files` (default: the tracked pages, sources and YAML) that does not resolve."""
    metrics = defined_metrics(root)
    broken: list[Broken] = []
    for name in files if files is not None else tracked_files(root):
        citing = root / name
        for text in prose(citing):
            for match in PATH.finditer(text):
                reference = match.group(1).rstrip(".,;:")
                if any(mark in reference for mark in "<>*{}$") or reference.startswith(("/", "~")):
                    continue  # a pattern or an absolute path, not a repository path
                if "/" in reference and not _names_repository_path(reference, root):
                    continue  # another tree's path: "text/html", "owner/repo"
                why = _resolve_path(reference, citing, root)
                if why:
                    broken.append(Broken(name, reference, why))
            for match in DOTTED.finditer(text):
                reference = match.group(1).rstrip(".")
                why = _resolve_dotted(reference, root)
                if why:
                    broken.append(Broken(name, reference, why))
            for match in SECTION.finditer(text):
                page_name, section = match.group(1), " ".join(match.group(2).split())
                page = next((b / page_name for b in (root, citing.parent) if (b / page_name).is_file()), None)
                if page is None:
                    continue  # the page's own name is a path, reported above
                if not any(section.lower() in title for title in sections(page)):
                    broken.append(Broken(name, f'{page_name}, "{section}"', "the page has no such section"))
            for match in METRIC.finditer(text):
                metric = match.group(1)
                base = next((metric[: -len(s)] for s in METRIC_SUFFIXES if metric.endswith(s)), metric)
                if metric not in metrics and base not in metrics:
                    broken.append(Broken(name, f"ray_{metric}", "replica_metrics.py defines no such metric"))
    return broken


def _names_repository_path(reference: str, root: Path) -> bool:
    """A slash path that starts at a top-level entry of this repository, or a file or module named from inside
    the package (`engine/model.py`, `text/tasks.TextTasks`: a name with a dot, so "text/html" is not one)."""
    first = reference.lstrip("./").split("/")[0]
    if reference.startswith(".") or (root / first).exists():
        return True
    return (root / "serve_app" / first).is_dir() and "." in reference.rsplit("/", 1)[-1]
