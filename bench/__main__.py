"""`python -m bench <command>`: the project's benchmarks, one module per command (add_cli_args / main).

python -m bench serve      the service against a one-at-a-time server, over HTTP
python -m bench engine     the engine per number format, and CTranslate2 beside it
python -m bench against    the engine in this checkout against an earlier revision, side by side
python -m bench fidelity   the faster settings' probabilities against float32
python -m bench jobs       dataset jobs beside interactive /classify, and against mt5-bulk --url
python -m bench teams      the classification cache's speed-up and tracing's overhead
python -m bench storm      slow and abandoned clients beside a well-behaved one
python -m bench gpu        on a GPU machine: the engine and the serving core without Ray
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "serve": "the service (shipped config.yaml) against a one-at-a-time server, over HTTP",
    "engine": "the engine per number format, and CTranslate2 beside it",
    "against": "the engine in this checkout against an earlier revision, side by side",
    "fidelity": "the faster settings' label probabilities against float32",
    "jobs": "dataset jobs beside interactive /classify, and alone against mt5-bulk --url",
    "teams": "the classification cache's speed-up and tracing's overhead on /classify",
    "storm": "slow and abandoned clients beside a well-behaved /classify client",
    "gpu": "on a GPU machine: the engine and the serving core without Ray",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (its options), so one benchmark's dependencies (psutil,
    ctranslate2, ...) never stop another from running on a machine that lacks them (the lent GPU machine)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="The project's benchmarks; results go to bench/results/ and BENCHMARKS.md."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name != command:
            commands.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"bench.{name}")
        sub = commands.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip().split("\n\n")[0]
        )
        module.add_cli_args(sub)
        sub.set_defaults(main=module.main)
    return parser


def main(argv: list[str] | None = None) -> object:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(next((arg for arg in argv if arg in COMMANDS), None)).parse_args(argv)
    args.argv = argv[1:]  # the command's own options, for the results' "command" line
    return args.main(args)


if __name__ == "__main__":
    main()
