"""`mt5-bulk augment|classify|evaluate IN OUT ...`: a file of texts through the model, on Ray Data or a running service.

    mt5-bulk augment in.jsonl out.jsonl --num 3 --seed 1
    mt5-bulk augment in.jsonl out.jsonl --num 3 --keep-label --labels 物流延迟,商品缺货,其他 --min-distance 0.3
    mt5-bulk classify in.csv out.csv --labels 物流延迟,商品缺货,其他
    mt5-bulk classify in.csv out.csv --labels ... --url http://127.0.0.1:7860
    mt5-bulk evaluate sample.csv scored.csv --wordings '{"物流延迟": ["物流慢", "发货延迟"]}'

Stopped (Ctrl+C, kill) and run again with the same arguments, it carries on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app.bulk.evaluate import Pass, plan_passes, run_passes
from serve_app.bulk.evaluate import summary as evaluation_summary
from serve_app.bulk.http_runner import HttpRunner, ServiceError
from serve_app.bulk.job import Summary, run_job
from serve_app.bulk.progress import JobFiles, ResumeError
from serve_app.bulk.records import (
    InputError,
    InputFile,
    Item,
    ResultFormat,
    file_format,
    gold_labels,
    only_known_gold,
    read_input,
)
from serve_app.bulk.task import TaskSpec, parse_labels
from serve_app.engine import SamplingParams
from serve_app.engine.errors import EngineInputError, ModelSpecError
from serve_app.engine.requests import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P
from serve_app.ingress.auth import load_api_key
from serve_app.settings import ENV_OVERRIDES, AppSettings
from serve_app.text.errors import TextInputError
from serve_app.text.label_keeping import OVERSAMPLING, Checks, KeepLabel

if TYPE_CHECKING:
    from serve_app.bulk.ray_runner import (
        RayRunner,  # imported where used: only Ray runs pay for importing Ray
    )

RAY_CHUNK_RECORDS = 32  # one engine batch per chunk: big enough to batch well, small enough to commit often
EXIT_INTERRUPTED = 130
API_KEY_ENV = AppSettings.model_fields["api_key_env"].default  # MT5_API_KEY, as the service reads it
_FLAGS = {
    "keep_label": "--keep-label",
    "keep_label.label": "--label",
    "max_candidates": "--max-candidates",
    "min_distance": "--min-distance",
    "num_return_sequences": "--num",
    "max_length": "--max-length",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input", type=Path, help="JSONL (.jsonl/.ndjson) or CSV/TSV (.csv/.tsv) with a header row")
    common.add_argument("output", type=Path, help="result file; JSONL or CSV/TSV by its extension")
    common.add_argument(
        "--text-field", default="text", help="field (JSONL) or column (CSV) holding the text (default: text)"
    )
    common.add_argument(
        "--id-field",
        default="id",
        help="field carried into the results (default: id; the input line number when absent)",
    )
    common.add_argument(
        "--errors",
        type=Path,
        help="where unusable records go, with line number and reason (default: OUTPUT.errors.jsonl)",
    )
    common.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output instead of refusing (discards any resume state)",
    )
    common.add_argument(
        "--batch-size",
        type=int,
        help=f"records per model batch / request (default: {RAY_CHUNK_RECORDS}; with --url 16, at most 50)",
    )
    ray_group = common.add_argument_group("Ray Data (default)")
    ray_group.add_argument(
        "--address",
        help=(
            "Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray); a cluster with token auth also needs "
            "RAY_AUTH_MODE=token"
        ),
    )
    ray_group.add_argument("--workers", type=int, help="model actors (default: one per GPU, else one per 1-4 CPUs)")
    ray_group.add_argument(
        "--model",
        help="demo | checkpoint directory | ModelScope id | hf:<repo> (default: MT5_MODEL, else the config.yaml model)",
    )
    ray_group.add_argument("--device", help="auto | cpu | cuda (default: MT5_DEVICE, else auto)")
    ray_group.add_argument("--dtype", help="auto | float32 | bfloat16 | float16 (default: MT5_DTYPE, else auto)")
    http_group = common.add_argument_group("running service")
    http_group.add_argument(
        "--url", help="send to this service (e.g. http://127.0.0.1:7860) instead of running the model"
    )
    http_group.add_argument("--concurrency", type=int, default=4, help="requests in flight with --url (default: 4)")
    http_group.add_argument(
        "--api-key-file", help="file holding the service's API key (default: the MT5_API_KEY variable, if set)"
    )

    parser = argparse.ArgumentParser(
        prog="mt5-bulk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    tasks = parser.add_subparsers(dest="task", required=True)
    augment = tasks.add_parser("augment", parents=[common], help="paraphrases of each text")
    augment.add_argument("--num", type=int, default=1, help="paraphrases per text, 1-10 (default: 1)")
    augment.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="most new tokens per paraphrase (default: %(default)s)",
    )
    augment.add_argument(
        "--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy (default: %(default)s)"
    )
    augment.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0 = off (default: %(default)s)")
    augment.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="(default: %(default)s)")
    augment.add_argument("--seed", type=int, help="same seed, same paraphrases, however the job is batched or resumed")
    checks = augment.add_argument_group('checks (README, "Augmentation that keeps the label")')
    checks.add_argument(
        "--keep-label",
        action="store_true",
        help="keep only paraphrases whose top label under --labels is the text's own (or --label)",
    )
    checks.add_argument(
        "--labels", dest="keep_labels", help="with --keep-label: candidate labels, comma or full-width comma separated"
    )
    checks.add_argument(
        "--label",
        dest="keep_label_name",
        help="with --keep-label: the label to keep (default: each text's own top label)",
    )
    checks.add_argument(
        "--max-candidates",
        type=int,
        help=f"candidates sampled per text at most (default with a check: {OVERSAMPLING} x --num)",
    )
    checks.add_argument(
        "--min-distance",
        type=float,
        default=0.0,
        help="drop paraphrases closer than this (0-1, character bigrams) to the text or a kept one",
    )
    classify = tasks.add_parser("classify", parents=[common], help="zero-shot classification of each text")
    classify.add_argument("--labels", required=True, help="candidate labels, comma or full-width comma separated")
    classify.add_argument("--mode", choices=["score", "generate"], default="score", help="(default: score)")
    classify.add_argument(
        "--scoring",
        choices=["vocabulary", "label_tokens"],
        default="vocabulary",
        help=(
            "score mode: vocabulary = the model's own likelihood (default); label_tokens = faster, normalised over "
            "the labels' tokens"
        ),
    )
    evaluate = tasks.add_parser(
        "evaluate",
        parents=[common],
        help="zero-shot classification of a labelled file, scored against its gold labels (a report)",
    )
    evaluate.add_argument("--labels", help="candidate labels (default: the gold labels found in the file)")
    evaluate.add_argument("--label-field", default="label", help="field or column of the gold label (default: label)")
    evaluate.add_argument(
        "--wordings",
        type=json.loads,
        help='JSON: other wordings to try in a label\'s place, e.g. \'{"物流延迟": ["物流慢", "发货延迟"]}\'',
    )
    evaluate.add_argument("--scoring", choices=["vocabulary", "label_tokens"], default="vocabulary")
    for subparser in (augment, classify, evaluate):
        subparser.set_defaults(subparser=subparser)  # so value errors print the subcommand's usage
    return parser


def task_spec(args: argparse.Namespace, gold: Sequence[str] = ()) -> TaskSpec:
    """The task the flags ask for; evaluate's labels default to `gold`, the labels found in the file."""
    if args.task == "evaluate":
        wordings = args.wordings or {}
        if not isinstance(wordings, dict) or not all(isinstance(alts, list) for alts in wordings.values()):
            raise TextInputError("wordings", 'must be a JSON object of lists, e.g. {"label": ["other wording"]}')
        labels = parse_labels(args.labels) if args.labels else tuple(gold)
        pairs = tuple((str(label), tuple(map(str, alts))) for label, alts in wordings.items())
        return TaskSpec("evaluate", labels=labels, scoring=args.scoring, wordings=pairs)
    if args.task == "classify":
        return TaskSpec("classify", labels=parse_labels(args.labels), mode=args.mode, scoring=args.scoring)
    sampling = SamplingParams(args.num, args.max_length, args.temperature, args.top_k, args.top_p, args.seed)
    if args.keep_label != (args.keep_labels is not None):
        raise TextInputError("keep_label", "--keep-label needs --labels, and --labels (for augment) needs --keep-label")
    if args.keep_label_name is not None and not args.keep_label:
        raise TextInputError("keep_label", "--label needs --keep-label")
    keep = KeepLabel(list(parse_labels(args.keep_labels)), args.keep_label_name) if args.keep_label else None
    return TaskSpec(
        "augment",
        sampling=sampling,
        checks=Checks(keep_label=keep, max_candidates=args.max_candidates, min_distance=args.min_distance),
    )


def app_settings(args: argparse.Namespace) -> AppSettings:
    """Flags first, then MT5_MODEL / MT5_DEVICE / MT5_DTYPE, then the defaults (config.yaml's model)."""
    values: dict[str, Any] = {
        key: os.environ[variable] for variable, key in ENV_OVERRIDES.items() if os.environ.get(variable)
    }
    values.update({key: getattr(args, key) for key in ("model", "device", "dtype") if getattr(args, key)})
    return AppSettings.model_validate(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parser: argparse.ArgumentParser = args.subparser
    try:
        # evaluate's labels may come from the file: its task is made once the file is read (_evaluate)
        spec = None if args.task == "evaluate" else task_spec(args)
    except (EngineInputError, TextInputError) as exc:
        flag = (
            "--labels"
            if exc.field.startswith(("labels", "keep_label.labels"))
            else _FLAGS.get(exc.field, f"--{exc.field}")
        )
        parser.error(f"{flag}: {exc.rule}")
    for name in ("batch_size", "workers", "concurrency"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    # SIGTERM (plain `kill`) stops like Ctrl+C: the last committed chunk stays, the rest is redone on resume.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, spec)
    except KeyboardInterrupt:
        print(
            f"\nmt5-bulk: interrupted; finished chunks are saved. Run the same command again to resume {args.output}.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (InputError, ResumeError, ModelSpecError, OSError) as exc:
        print(f"mt5-bulk: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, spec: TaskSpec | None) -> int:
    errors_path = args.errors or args.output.with_name(args.output.name + ".errors.jsonl")
    paths = [path.resolve() for path in (args.input, args.output, errors_path)]
    if len(set(paths)) < 3:  # a resume truncates the outputs: never let one of them be the input
        raise InputError(
            f"input, output and errors files must be three different files, got {', '.join(map(str, paths))}"
        )
    label_field = args.label_field if args.task == "evaluate" else None
    source = read_input(args.input, args.text_field, args.id_field, label_field)
    try:
        if spec is None:
            return _evaluate(args, source, errors_path)
        summary = _one_pass(args, spec, source, source.items, args.output, errors_path)
    except ServiceError as exc:
        print(
            f"mt5-bulk: error: {exc}\nFinished chunks are saved; run the same command again to resume.", file=sys.stderr
        )
        return 1
    _report(summary, args.output, errors_path)
    return 0


def _evaluate(args: argparse.Namespace, source: InputFile, errors_path: Path) -> int:
    try:
        spec = task_spec(args, gold=gold_labels(source.items))
    except TextInputError as exc:
        print(f"mt5-bulk: error: --{exc.field.split('.')[0]}: {exc.rule}", file=sys.stderr)
        return 2
    items = only_known_gold(source.items, spec.labels)
    passes = plan_passes(spec, args.output, errors_path)

    def run_pass(each: Pass) -> None:
        print(f"mt5-bulk: evaluate, pass {passes.index(each) + 1} of {len(passes)}: {each.name}", file=sys.stderr)
        _one_pass(args, each.spec, source, items, each.output, each.errors, chunk_shift=each.chunk_shift)

    result = run_passes(passes, run_pass, args.output)
    print(evaluation_summary(result), file=sys.stderr)
    print(f"mt5-bulk: answers in {args.output}, report in {args.output}.report.json", file=sys.stderr)
    return 0


def _one_pass(
    args: argparse.Namespace,
    spec: TaskSpec,
    source: InputFile,
    items: Sequence[Item],
    output: Path,
    errors_path: Path,
    chunk_shift: int = 0,
) -> Summary:
    """One bulk run of `spec` over `items` into `output`, resumed when its files say it was started."""
    output_format = ResultFormat(file_format(output), spec.columns)
    runner: HttpRunner | RayRunner
    if args.url:
        try:
            api_key = load_api_key(API_KEY_ENV, args.api_key_file)  # the service's own rules: a file, else the variable
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        runner = HttpRunner(args.url, spec, concurrency=args.concurrency, api_key=api_key)
        chunk_records = min(args.batch_size or runner.default_chunk_records, runner.max_chunk_records)
        chunk_bytes: int | None = runner.max_chunk_bytes
        backend: dict[str, Any] = {"url": args.url.rstrip("/")}
    else:
        runner = _ray_runner(args, spec)
        chunk_records, chunk_bytes = args.batch_size or RAY_CHUNK_RECORDS, None
        backend = {key: getattr(runner.settings, key) for key in ("model", "device", "dtype", "max_input_tokens")}
        backend["templates"] = runner.settings.templates.model_dump()
    chunk_records = max(1, chunk_records - chunk_shift)

    settings = {
        "task": spec.describe(),
        "input_sha256": source.sha256,
        "text_field": args.text_field,
        "id_field": args.id_field,
        "output_format": output_format.fmt,
        "errors": str(errors_path.resolve()),
        "backend": backend,
        **({"chunk_records": chunk_records} if chunk_shift else {}),
    }
    files = JobFiles(output, errors_path, settings, header=output_format.header())
    state = files.open(args.overwrite)
    if state.next_item:
        print(
            f"mt5-bulk: resuming {output}: {state.next_item} of {len(items)} input records already done",
            file=sys.stderr,
        )
    with runner:
        return run_job(items, files, output_format, runner, chunk_records, chunk_bytes)


def _ray_runner(args: argparse.Namespace, spec: TaskSpec) -> RayRunner:
    from serve_app.bulk.ray_runner import RayRunner
    from serve_app.engine.spec import resolve_spec

    settings = app_settings(args)
    runner = RayRunner(settings, spec, address=args.address, workers=args.workers)
    if not runner.address:
        # Local run: check (and download once) the model here, before any actor tries to.
        resolve_spec(settings.model)
    return runner


def _report(summary: Summary, output: Path, errors_path: Path) -> None:
    errors = f"{summary.errors} error(s) in {errors_path}" if summary.errors else "no errors"
    resumed = f" (resumed after {summary.resumed_from})" if summary.resumed_from else ""
    print(
        f"mt5-bulk: wrote {summary.written} record(s) to {output}, {errors}; "
        f"{summary.total - summary.resumed_from} input record(s){resumed} in {summary.elapsed_s:.1f} s, "
        f"{summary.rate:.1f} records/s",
        file=sys.stderr,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
