"""Results files and the page made from them.

Each entry point writes `bench/results/<name>.json` (its figures, the machine, the command and
its own section of the page as markdown) and regenerates BENCHMARKS.md from every results file
there, as CTranslate2's benchmark writes its README table: the page is never edited by hand,
and an entry point that has not run yet says so. Paths inside results are relative to the
repository, so a results file reads the same on every checkout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
PAGE = ROOT / "BENCHMARKS.md"

# The page's sections, in order: entry point -> (title, what it measures, how to run it).
SECTIONS = {
    "serve": (
        "The service against a one-at-a-time server",
        "`python -m bench serve`: the shipped config.yaml under `serve run` against the one-at-a-time transformers "
        "server (and, with `--against REF`, an earlier release), closed-loop HTTP load at 1, 8 and 32 clients, the "
        "mixed load, and the most /classify clients served at p95 < 1 s",
    ),
    "engine": (
        "The engine alone: number formats, and CTranslate2 beside it",
        "`python -m bench engine`: the engine without Ray or HTTP, classify texts/s and generation tokens/s per number "
        "format, what `dtype: auto` picks, and CTranslate2 on the same checkpoint and token ids",
    ),
    "against": (
        "The engine against an earlier revision",
        "`python -m bench against REV`: generation and classification at one dtype, this checkout and REV's files "
        "each in its own process, alternated round after round on the same machine",
    ),
    "fidelity": (
        "Fidelity of the faster settings",
        "`python -m bench fidelity`: label probabilities of bfloat16, int8 and label-token normalisation against "
        "float32 full-vocabulary scoring, and each input alone against inside its batch",
    ),
    "jobs": (
        "Dataset jobs beside interactive requests",
        "`python -m bench jobs`: /classify latency idle and beside a dataset job, beside `mt5-bulk --url` at "
        "background priority and at interactive priority (one queue), and the job alone against mt5-bulk's speed",
    ),
    "teams": (
        "Many teams: the classification cache and tracing",
        "`python -m bench teams`: the same /classify_batch twice (the second from the cache), and /classify at 8 "
        "clients with tracing off, on and off again",
    ),
    "storm": (
        "Slow and abandoned clients",
        "`python -m bench storm`: a well-behaved /classify client's latency quiet and during a storm of clients that "
        "send their body a byte a second or hang up mid-body, and the proxy's and Ingress's memory a minute later",
    ),
    "gpu": (
        "On a GPU",
        '`bash bench/gpu_suite.sh "$OUT"` on a lent GPU machine (`python -m bench gpu` there): the engine and the '
        "serving core without Ray",
    ),
}


def relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it, else under `~` (results never record this machine's
    folders)."""
    path = Path(path).resolve()
    for base, shown in ((ROOT, None), (Path.home().resolve(), "~")):
        try:
            inside = path.relative_to(base)
        except ValueError:
            continue
        return str(inside) if shown is None else f"{shown}/{inside}"
    return path.name  # elsewhere (a temporary folder): its name says which checkpoint


def page_for(out_dir: Path, quick: bool = False) -> Path | None:
    """The page a run regenerates: BENCHMARKS.md for full runs into bench/results, none for a quick run or another
    folder."""
    return PAGE if not quick and Path(out_dir).resolve() == RESULTS_DIR.resolve() else None


def publish(
    name: str, results: dict[str, Any], section: str, out_dir: Path, quick: bool, log: Callable[[str], None]
) -> Path:
    """How an entry point ends: its results saved (as `<name>-quick` for a smoke run, which leaves the page alone),
    the file named in the log and the section printed."""
    path = save(f"{name}-quick" if quick else name, results, section, out_dir=out_dir, page=page_for(out_dir, quick))
    log(f"wrote {relative(path)}")
    print(section)
    return path


def save(
    name: str, results: dict[str, Any], section: str, out_dir: Path = RESULTS_DIR, page: Path | None = PAGE
) -> Path:
    """Write `<out_dir>/<name>.json` (with its page section) and, unless page is None, regenerate the page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**results, "section": section}, indent=2, ensure_ascii=False) + "\n")
    if page is not None:
        write_page(out_dir, page)
    return path


def write_page(results_dir: Path = RESULTS_DIR, page: Path = PAGE) -> str:
    """BENCHMARKS.md from the results files in `results_dir`."""
    lines = [
        "# Benchmarks",
        "",
        "Current results, written by the entry points themselves: each run of `python -m bench <name>` saves",
        "`bench/results/<name>.json` and regenerates this page from every results file (do not edit it by hand).",
        "Each section names the machine it ran on: compare figures within one section, as ratios measured side",
        "by side in one run. Dated findings and the history of these numbers are in "
        "[docs/perf-notes.md](docs/perf-notes.md).",
        "The benchmark checkpoint has mT5-base's shapes (d_model 768, 12 + 12 layers, vocabulary 250,112, untied",
        "lm_head) and random weights: the same compute as the real model, which it cannot stand in for on quality.",
        "",
        "## Reproduce",
        "",
        "```",
        ".venv/bin/python -m bench serve      # the service vs a one-at-a-time server, HTTP load (~25 min on 2 cores)",
        ".venv/bin/python -m bench engine     # the engine per number format, and CTranslate2 beside it (~10 min)",
        ".venv/bin/python -m bench against REV  # the engine against an earlier revision, side by side (~3 min)",
        ".venv/bin/python -m bench fidelity   # probabilities of the faster settings against float32 (~10 min)",
        ".venv/bin/python -m bench jobs       # dataset jobs beside interactive /classify (~6 min)",
        ".venv/bin/python -m bench teams      # the classification cache and tracing's overhead (~8 min)",
        ".venv/bin/python -m bench storm      # slow and abandoned clients beside a well-behaved one (~5 min)",
        'bash bench/gpu_suite.sh "$OUT"       # on a lent GPU machine: python -m bench gpu, in one call',
        "```",
        "",
        "`python -m bench <name> --help` lists each one's options; `--quick` runs any of them in a minute on the demo "
        "model",
        "(its figures are not results, and it does not touch this page).",
    ]
    for name, (title, what) in SECTIONS.items():
        lines += ["", f"## {title}", "", what + ".", ""]
        path = results_dir / f"{name}.json"
        if not path.is_file():
            lines.append("Not run yet on this checkout.")
            continue
        results = json.loads(path.read_text())
        lines += [
            f"Run {results.get('date', '?')} on {results.get('machine', {}).get('description', '?')}: "
            f"`{results.get('command', '')}`.",
            "",
            results.get("section", "").rstrip(),
        ]
    text = "\n".join(lines).rstrip() + "\n"
    page.write_text(text)
    return text
