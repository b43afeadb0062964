"""The engine alone, without Ray or HTTP: each number format, what `dtype: auto` picks, and what checked augmentation
costs.

    .venv/bin/python -m bench engine                      # the benchmark checkpoint, float32 / bfloat16 / int8
    .venv/bin/python -m bench engine --formats float32 bfloat16 --parts formats
    .venv/bin/python -m bench engine --quick              # a minute on the demo model (not results; the page is left
    alone)

Every format runs the same work, built by the service's own text layer: classification of
32 Chinese texts against 4 labels (texts/s), and generation of 32 rows and of 1 row, 64 new
tokens each (tokens/s). The formats are timed in alternation, round after round, so the
machine's drift hits all alike; each keeps its best round. Classification probabilities of
each format are compared with float32's on the same texts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.lib import results, roofline
from bench.lib.engine_work import augment_work, classify_work, pipeline
from bench.lib.machine import log as _log
from bench.lib.machine import run_header
from bench.lib.probabilities import compare, transformers_probabilities
from bench.lib.workloads import LABELS

CLASSIFY_TEXTS = 32
CLASSIFY_LABELS = LABELS[:4]
GENERATION_ROWS = 32
GENERATION_TOKENS = 64


def log(message: str) -> None:
    _log("engine", message)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model spec (default: the mT5-base-shaped benchmark checkpoint; demo with --quick)",
    )
    parser.add_argument(
        "--formats", nargs="+", default=["float32", "bfloat16", "int8"], help="number formats to time (dtype values)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["roofline", "formats", "auto", "ctranslate2", "keep_label"],
        choices=["roofline", "formats", "auto", "ctranslate2", "keep_label"],
        help="ctranslate2 needs the bench extra (pip install -e '.[bench]'); it is skipped, saying so, without it",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per format (each keeps its best)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--quick", action="store_true", help="the demo model, one round: a smoke run, not results")
    parser.add_argument("--out", type=Path, default=results.RESULTS_DIR)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import os

    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from bench.lib.checkpoint import model_for_run  # torch: imported when a run starts

    model = model_for_run(args.model, args.quick, log)
    rounds = 1 if args.quick else args.rounds
    out: dict[str, Any] = {
        **run_header("engine", getattr(args, "argv", [])),
        "model": results.relative(model) if model != "demo" else model,
        "threads": torch.get_num_threads(),
        "parts": {},
    }
    if "roofline" in args.parts:
        out["parts"]["roofline"] = machine_bounds(args.formats)
    if "formats" in args.parts:
        out["parts"]["formats"] = formats(model, args.formats, rounds, out["parts"].get("roofline"))
    if "roofline" in args.parts:  # measured again after the work: a bound is the best this machine gave
        out["parts"]["roofline"] = best_bounds(out["parts"]["roofline"], machine_bounds(args.formats))
        if "formats" in out["parts"]:
            apply_bounds(out["parts"]["formats"], out["parts"]["roofline"])
    if "auto" in args.parts:
        out["parts"]["auto"] = auto_choice(model)
    if "ctranslate2" in args.parts:
        out["parts"]["ctranslate2"] = ctranslate2_side(model, rounds, torch.get_num_threads())
    if "keep_label" in args.parts:
        out["parts"]["keep_label"] = keep_label_cost(model, rounds)
    section = markdown(out)
    results.publish("engine", out, section, args.out, args.quick, log)
    return out


def _timed(run, requests) -> float:
    started = time.perf_counter()
    run(requests)
    return time.perf_counter() - started


def machine_bounds(names: list[str]) -> dict[str, Any]:
    """This machine's matmul peak per format and its memory read bandwidth, measured now (bench/lib/roofline.py)."""
    log("measuring this machine's bounds: matmul peak per format, read bandwidth ...")
    peaks = {name: roofline.matmul_peak(name) for name in dict.fromkeys(["float32", *names])}
    return {"matmul_peak": peaks, "read_bandwidth": roofline.read_bandwidth()}


def work_bounds(model: str, classify: Any, generation: Any) -> dict[str, Any]:
    """What the workloads need, counted on the model as transformers builds it in float32 (torch's FlopCounterMode
    sees its matmuls; it does not see oneDNN's packed kernels): matmul and attention FLOPs per text, each classified
    alone (the work, without a batch's padding), and of one decoding step at GENERATION_ROWS rows; the parameters
    a step reads."""
    from serve_app.engine import Seq2SeqEngine, load_model

    plain = load_model(model, "cpu", "float32", relay_head=False).model
    engine = Seq2SeqEngine(plain)
    flops = sum(roofline.count_flops(lambda r=r: engine.score([r])) for r in classify.requests)
    batch = engine.prefill(generation.requests)
    for _ in range(8):
        engine.step(batch)
    step_flops = roofline.count_flops(lambda: engine.step(batch))
    step_parameters = sum(p.numel() for m in (plain.decoder, plain.lm_head) for p in m.parameters())
    shared = plain.decoder.embed_tokens.weight.numel()  # the embeddings: rows gathered, not read whole
    return {
        "classify_flops_per_text": flops / len(classify.requests),
        "step_flops": step_flops,
        "step_parameters": step_parameters - shared,
    }


def step_ms(engine: Any, requests: list[Any], steps: int = 24) -> float:
    """Milliseconds per decoding step of `requests` (GENERATION_ROWS rows), past the first 8 steps."""
    batch = engine.prefill(requests)
    for _ in range(8):
        engine.step(batch)
    started = time.perf_counter()
    for _ in range(steps):
        engine.step(batch)
    return (time.perf_counter() - started) / steps * 1000


# Bytes per parameter a decoding step reads in each format (int8: the linear layers' weights, which are nearly all).
PARAMETER_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def formats(model: str, names: list[str], rounds: int, bounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per format: classify texts/s, generation tokens/s at 32 rows and at 1, a decoding step's milliseconds, and
    probabilities against float32; with `bounds`, each figure against this machine's own bound."""
    services = {}
    for name in dict.fromkeys(["float32", *names]):
        log(f"loading {model} as {name} ...")
        services[name] = pipeline(model, "cpu", name)
    work = {}
    for name, service in services.items():
        classify = classify_work(service, CLASSIFY_TEXTS, CLASSIFY_LABELS, seed=3)
        generation = augment_work(service, GENERATION_ROWS, n=1, max_new_tokens=GENERATION_TOKENS, seed=4, seeded=True)
        work[name] = (classify, generation)
        classify.run(classify.requests[:2]), generation.run(generation.requests[:1])  # first-call allocations
    best: dict[str, dict[str, float]] = {
        name: {"classify_s": float("inf"), "generate32_s": float("inf"), "generate1_s": float("inf")}
        for name in services
    }
    tokens: dict[str, dict[str, int]] = {}
    steps: dict[str, float] = {}
    for round_ in range(rounds):
        for name, (classify, generation) in work.items():
            seconds = best[name]
            seconds["classify_s"] = min(seconds["classify_s"], _timed(classify.run, classify.requests))
            started = time.perf_counter()
            batch = generation.run(generation.requests)
            seconds["generate32_s"] = min(seconds["generate32_s"], time.perf_counter() - started)
            started = time.perf_counter()
            lone = generation.run(generation.requests[:1])
            seconds["generate1_s"] = min(seconds["generate1_s"], time.perf_counter() - started)
            tokens[name] = {
                "batch": sum(len(seq) for out in batch for seq in out),
                "lone": sum(len(seq) for seq in lone[0]),
            }
            steps[name] = min(steps.get(name, float("inf")), step_ms(services[name].engine, generation.requests))
            log(
                f"round {round_ + 1}: {name}: classify {seconds['classify_s']:.2f} s, generate 32 rows "
                f"{seconds['generate32_s']:.2f} s"
            )
    reference = [r.probabilities for r in services["float32"].engine.score(work["float32"][0].requests)]
    figures: dict[str, Any] = {}
    for name, (classify, _) in work.items():
        probabilities = [r.probabilities for r in services[name].engine.score(classify.requests)]
        seconds = best[name]
        figures[name] = {
            "dtype_reason": classify.dtype_reason,
            "head": services[name].loaded.head.reason,
            "classify_texts_per_s": CLASSIFY_TEXTS / seconds["classify_s"],
            "generate32_tokens_per_s": tokens[name]["batch"] / seconds["generate32_s"],
            "generate1_tokens_per_s": tokens[name]["lone"] / seconds["generate1_s"],
            "step_ms_32_rows": steps[name],
            "packing": services[name].loaded.packing.reason,
            **compare(reference, probabilities),
        }
    need = work_bounds(model, *work["float32"]) if bounds else None
    out = {
        "classify": f"{CLASSIFY_TEXTS} texts x {len(CLASSIFY_LABELS)} labels",
        "generation": f"{GENERATION_ROWS} rows and 1 row x {GENERATION_TOKENS} new tokens",
        "rounds": rounds,
        "formats": figures,
        "work": need,
    }
    if bounds:
        apply_bounds(out, bounds)
    return out


def best_bounds(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Each bound at its best of two measurements (a busy moment makes a machine look slower, never faster)."""
    peaks = {
        name: max(first["matmul_peak"][name], second["matmul_peak"][name], key=lambda p: p["gflops"])
        for name in first["matmul_peak"]
    }
    bandwidth = max(first["read_bandwidth"], second["read_bandwidth"], key=lambda b: b["gb_per_s"])
    return {"matmul_peak": peaks, "read_bandwidth": bandwidth}


def apply_bounds(f: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Each format's figures against this machine's bounds, in place (`roofline` per format)."""
    need = f["work"]
    bandwidth = bounds["read_bandwidth"]["gb_per_s"] * 1e9
    for name, v in f["formats"].items():
        peak = bounds["matmul_peak"].get(name, bounds["matmul_peak"]["float32"])["gflops"] * 1e9
        read_ms = need["step_parameters"] * PARAMETER_BYTES.get(name, 4) / bandwidth * 1000
        flop_ms = need["step_flops"] / peak * 1000
        v["roofline"] = {
            "classify_gflops": v["classify_texts_per_s"] * need["classify_flops_per_text"] / 1e9,
            "classify_of_peak": v["classify_texts_per_s"] * need["classify_flops_per_text"] / peak,
            "step_read_floor_ms": read_ms,
            "step_matmul_floor_ms": flop_ms,
            "step_of_read_floor": read_ms / v["step_ms_32_rows"],
            "step_of_matmul_floor": flop_ms / v["step_ms_32_rows"],
        }


def auto_choice(model: str) -> dict[str, Any]:
    """What `dtype: auto` runs on this machine, and why (as /healthz says it)."""
    service = pipeline(model, "auto", "auto")
    return {
        "device": str(service.loaded.device),
        "dtype": service.loaded.precision.name,
        "reason": service.loaded.precision.reason,
        "head": service.loaded.head.reason,
    }


def ctranslate2_side(model: str, rounds: int, threads: int) -> dict[str, Any]:
    """CTranslate2 on the same checkpoint and token ids as our engine at `auto`, float32 matched first, then timed in
    alternation."""
    from bench.lib import ctranslate2_side as ct2
    from serve_app.engine.loading import load_model

    if not ct2.available():
        return {"skipped": "ctranslate2 is not installed (pip install -e '.[bench]')"}
    if model == "demo":
        from serve_app.engine.demo import demo_model_dir

        checkpoint = demo_model_dir()
    else:
        checkpoint = Path(model)
    import ctranslate2

    ours = {"auto": pipeline(model, "cpu", "auto"), "float32": pipeline(model, "cpu", "float32")}
    classify = classify_work(ours["float32"], CLASSIFY_TEXTS, CLASSIFY_LABELS, seed=3)
    generation = augment_work(
        ours["float32"], GENERATION_ROWS, n=1, max_new_tokens=GENERATION_TOKENS, seed=4, seeded=True
    )
    compute_types = [
        t
        for t in ("float32", "int8", "int8_float32", "bfloat16", "int8_bfloat16")
        if t in ctranslate2.get_supported_compute_types("cpu")
    ]
    log(
        f"converting {checkpoint} for CTranslate2 {ctranslate2.__version__} (compute types here: "
        f"{', '.join(compute_types)}) ..."
    )
    with ct2.CT2Process() as worker:  # CTranslate2 in its own process (ctranslate2_side.py says why)
        knobs = generation.requests[0].params
        engines = {
            t: worker.engine(ct2.convert(checkpoint, "float32" if t == "float32" else "int8"), t, threads)
            for t in compute_types
        }

        import torch

        reference = [r.probabilities for r in ours["float32"].engine.score(classify.requests)]

        def ct2_probabilities(engine) -> list[list[float]]:
            return [
                torch.softmax(torch.tensor(engine.label_log_scores(r.input_ids, r.label_ids)), dim=0).tolist()
                for r in classify.requests
            ]

        match = compare(reference, ct2_probabilities(engines["float32"]))
        out: dict[str, Any] = {
            "version": ctranslate2.__version__,
            "compute_types": compute_types,
            "float32_match": match,
            "ours_auto": ours["auto"].loaded.precision.name,
        }
        # The conversion is proven on the demo model's trained-like, well-conditioned weights: float32 must
        # match to MATCH_TOLERANCE. Random mT5-base weights amplify any rounding (transformers' own forward and
        # our engine, both float32, move a probability by up to ~0.02 there), so there CTranslate2's top label
        # must agree with ours on RANDOM_WEIGHTS_AGREEMENT of the inputs (transformers' own agrees on 97-100 %);
        # a wrong conversion agrees by chance (a quarter with 4 labels).
        proof = match if model == "demo" else _demo_conversion_match(threads, worker)
        out["conversion_proof_demo"] = proof
        if proof["max_abs_dp"] > ct2.MATCH_TOLERANCE:
            out["skipped"] = (
                f"float32 probabilities on the demo model differ by {proof['max_abs_dp']:.2e} (> "
                f"{ct2.MATCH_TOLERANCE}): the conversion is not the same model, no speed reported"
            )
            return out
        if model != "demo":
            plain = load_model(model, "cpu", "float32", relay_head=False).model
            out["own_spread"] = compare(reference, transformers_probabilities(plain, classify.requests))
            del plain
            if match["top_label_agreement"] < ct2.RANDOM_WEIGHTS_AGREEMENT:
                out["skipped"] = (
                    f"float32 top labels agree with ours on {match['top_label_agreement']:.0%} of inputs "
                    f"(transformers' own forward: {out['own_spread']['top_label_agreement']:.0%}), under "
                    f"{ct2.RANDOM_WEIGHTS_AGREEMENT:.0%}: not the same model, no speed reported"
                )
                return out

        def ours_run(service):
            c = classify_work(service, CLASSIFY_TEXTS, CLASSIFY_LABELS, seed=3)
            g = augment_work(service, GENERATION_ROWS, n=1, max_new_tokens=GENERATION_TOKENS, seed=4, seeded=True)
            return {
                "classify": lambda: c.run(c.requests),
                "generate32": lambda: g.run(g.requests),
                "generate1": lambda: g.run(g.requests[:1]),
                "count": lambda result: sum(len(seq) for out in result for seq in out),
            }

        def ct2_run(engine):
            prompts = [r.input_ids for r in generation.requests]

            def gen(rows):
                return engine.generate(
                    prompts[:rows], GENERATION_TOKENS, knobs.temperature, knobs.top_k, knobs.top_p, seed=4
                )

            return {
                "classify": lambda: [engine.label_log_scores(r.input_ids, r.label_ids) for r in classify.requests],
                "generate32": lambda: gen(GENERATION_ROWS),
                "generate1": lambda: gen(1),
                "count": lambda result: sum(len(seq) for seq in result),
            }

        systems = {f"ours {name}": ours_run(service) for name, service in ours.items()}
        systems |= {f"ctranslate2 {t}": ct2_run(engine) for t, engine in engines.items()}
        best: dict[str, dict[str, float]] = {name: {} for name in systems}
        for run in systems.values():  # first calls: allocations, kernel choice
            run["classify"](), run["generate1"]()
        for round_ in range(rounds):
            for name, run in systems.items():
                for part in ("classify", "generate32", "generate1"):
                    seconds, result = ct2.timed(run[part])
                    rate = CLASSIFY_TEXTS / seconds if part == "classify" else run["count"](result) / seconds
                    best[name][part] = max(best[name].get(part, 0.0), rate)
            log(f"round {round_ + 1}: " + ", ".join(f"{name} {v['generate32']:.0f} tok/s" for name, v in best.items()))
        fidelity = {t: compare(reference, ct2_probabilities(engine)) for t, engine in engines.items()}
        heads = {f"ours {name}": service.loaded.head.reason for name, service in ours.items()}
        out["systems"] = {
            name: {
                **({"head": heads[name]} if name in heads else {}),
                "classify_texts_per_s": v["classify"],
                "generate32_tokens_per_s": v["generate32"],
                "generate1_tokens_per_s": v["generate1"],
                **(
                    {
                        "max_abs_dp": fidelity[name.split()[1]]["max_abs_dp"],
                        "top_label_agreement": fidelity[name.split()[1]]["top_label_agreement"],
                    }
                    if name.startswith("ctranslate2")
                    else {}
                ),
            }
            for name, v in best.items()
        }
        return out


def _demo_conversion_match(threads: int, worker) -> dict[str, Any]:
    """CTranslate2's float32 label probabilities against ours on the demo model, the same work."""
    import torch

    from bench.lib import ctranslate2_side as ct2
    from serve_app.engine.demo import demo_model_dir

    service = pipeline("demo", "cpu", "float32")
    work = classify_work(service, CLASSIFY_TEXTS, CLASSIFY_LABELS, seed=3)
    engine = worker.engine(ct2.convert(demo_model_dir(), "float32"), "float32", threads)
    ours = [r.probabilities for r in service.engine.score(work.requests)]
    theirs = [
        torch.softmax(torch.tensor(engine.label_log_scores(r.input_ids, r.label_ids)), dim=0).tolist()
        for r in work.requests
    ]
    return compare(ours, theirs)


def keep_label_cost(
    model: str, rounds: int, texts: int = 16, asked: int = 3, max_new_tokens: int = 32
) -> dict[str, Any]:
    """What the keep-label check costs: seconds to sample one candidate and to score it against 4 labels, in
    alternation.

    A kept paraphrase costs 1/keep-rate candidates, each sampled and scored, plus the text's own label
    once per text. The checkpoint's random weights sample ids its tokenizer decodes to nothing, so the
    scoring side is timed on Chinese texts of a paraphrase's length, prepared as label_keeping prepares them."""
    from bench.lib.workloads import chinese_texts
    from serve_app.engine import SamplingParams

    service = pipeline(model)
    generation = service.text_tasks.augment_requests(
        chinese_texts(texts, seed=5), [SamplingParams(asked, max_new_tokens, seed=i) for i in range(texts)]
    )
    candidates = chinese_texts(texts * asked, seed=9, min_chars=10, max_chars=40)
    scoring = service.text_tasks.classify_requests(service.text_tasks.classify_jobs(candidates, CLASSIFY_LABELS))
    service.engine.generate(generation[:1]), service.engine.score(scoring[:2])
    sample_s, score_s = float("inf"), float("inf")
    for _ in range(rounds):
        sample_s = min(sample_s, _timed(service.engine.generate, generation))
        score_s = min(score_s, _timed(service.engine.score, scoring))
    per_sample, per_score = sample_s / (texts * asked), score_s / len(scoring)
    check = per_score / per_sample
    return {
        "dtype": service.loaded.precision.name,
        "sample_s_per_candidate": per_sample,
        "score_s_per_candidate": per_score,
        "check_x_sampling": check,
        "x_plain_per_kept_text": {f"{rate:.2f}": (1 + check) / rate + check / asked for rate in (1.0, 0.5, 1 / 3)},
    }


def markdown(out: dict[str, Any]) -> str:
    parts = out["parts"]
    lines = [f"Model `{out['model']}`, {out['threads']} torch threads, one batch at a time."]
    if "formats" in parts:
        f = parts["formats"]
        lines += [
            "",
            f"Classification: {f['classify']}; generation: {f['generation']} (seeded sampling; tokens/s counts the "
            "tokens generated). "
            f"Formats alternated over {f['rounds']} round(s), best kept. |Δp| and agreement: label probabilities "
            "against float32 on the same texts.",
            "",
            "| format | classify texts/s | generation tokens/s, 32 rows | 1 row | × float32 (classify / 32 rows) | max "
            "\\|Δp\\| | top label agrees |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        base = f["formats"]["float32"]
        for name, v in f["formats"].items():
            lines.append(
                f"| {name} | {v['classify_texts_per_s']:.1f} | {v['generate32_tokens_per_s']:.0f} | "
                f"{v['generate1_tokens_per_s']:.1f} | "
                f"{v['classify_texts_per_s'] / base['classify_texts_per_s']:.2f}x / "
                f"{v['generate32_tokens_per_s'] / base['generate32_tokens_per_s']:.2f}x | "
                f"{v['max_abs_dp']:.4f} | {v['top_label_agreement']:.0%} |"
            )
    if "formats" in parts and "roofline" in parts and parts["formats"].get("work"):
        lines += ["", *roofline_markdown(parts["roofline"], parts["formats"])]
    if "auto" in parts:
        a = parts["auto"]
        lines += [
            "",
            f"`dtype: auto` here: **{a['dtype']}** on {a['device']} ({a['reason']})."
            + (
                f" lm_head layout (serve_app/engine/output_head.py), measured at load: {a['head']}."
                if "head" in a
                else ""
            ),
        ]
    if "ctranslate2" in parts:
        lines += ["", *ctranslate2_markdown(parts["ctranslate2"])]
    if "keep_label" in parts:
        k = parts["keep_label"]
        rates = ", ".join(f"keep rate {rate}: {x:.2f}x" for rate, x in k["x_plain_per_kept_text"].items())
        lines += [
            "",
            "### Augmentation that keeps the label",
            "",
            f"In {k['dtype']}: sampling a candidate (32 tokens) "
            f"{k['sample_s_per_candidate'] * 1000:.0f} ms, "
            f"scoring it against 4 labels {k['score_s_per_candidate'] * 1000:.0f} ms ({k['check_x_sampling']:.2f}x); a "
            "returned paraphrase costs, "
            f"against a plain one, {rates}. The keep rate is the model's own.",
        ]
    return "\n".join(lines) + "\n"


def roofline_markdown(bounds: dict[str, Any], f: dict[str, Any]) -> list[str]:
    need = f["work"]
    peaks = ", ".join(f"{name} {p['gflops']:.0f}" for name, p in bounds["matmul_peak"].items())
    lines = [
        "### Against this machine's own bounds",
        "",
        f"Measured in the same run, before and after the work, best of the two (bench/lib/roofline.py): matmul "
        f"peak GFLOP/s {peaks} (the best of square and "
        f"the model's own shapes; int8 as the service's Int8Linear), memory read "
        f"{bounds['read_bandwidth']['gb_per_s']:.1f} GB/s. The work: classification "
        f"{need['classify_flops_per_text'] / 1e9:.1f} GFLOP per text (matmul and attention FLOPs of each text "
        f"classified alone, no batch padding), a decoding step at {GENERATION_ROWS} rows "
        f"{need['step_flops'] / 1e9:.1f} GFLOP and {need['step_parameters'] / 1e6:.1f} M parameters read "
        "(decoder and lm_head).",
        "",
        "| format | classify GFLOP/s | of the format's matmul peak | decoding step, 32 rows | weights read once | "
        "its matmuls at peak | step against the read / matmul bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in f["formats"].items():
        r = v.get("roofline")
        if not r:
            continue
        lines.append(
            f"| {name} | {r['classify_gflops']:.0f} | **{r['classify_of_peak']:.0%}** | {v['step_ms_32_rows']:.0f} ms "
            f"| {r['step_read_floor_ms']:.0f} ms | {r['step_matmul_floor_ms']:.0f} ms | "
            f"{r['step_of_read_floor']:.0%} / {r['step_of_matmul_floor']:.0%} |"
        )
    return lines


def ctranslate2_markdown(c: dict[str, Any]) -> list[str]:
    if "systems" not in c:
        return [f"CTranslate2: not run ({c.get('skipped', '?')})."]
    spread = (
        f" Here they differ by up to {c['float32_match']['max_abs_dp']:.3f} (top label the same on "
        f"{c['float32_match']['top_label_agreement']:.0%}), where our float32 and transformers' own forward differ by "
        f"{c['own_spread']['max_abs_dp']:.3f} ({c['own_spread']['top_label_agreement']:.0%}): random weights amplify "
        "rounding."
        if "own_spread" in c
        else ""
    )
    lines = [
        f"CTranslate2 {c['version']} on the same checkpoint (converted by its Transformers converter from our loader, "
        "head untied) and the same "
        "token ids; on the demo model its float32 label probabilities match ours to "
        f"{c['conversion_proof_demo']['max_abs_dp']:.1e}.{spread} "
        "Same work as above, alternated, best of each. Its classification is `score_batch`, one (prompt, label) pair "
        "per candidate.",
        "",
        "| system | classify texts/s | generation tokens/s, 32 rows | 1 row | max \\|Δp\\| vs our float32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in c["systems"].items():
        dp = f"{v['max_abs_dp']:.4f}" if "max_abs_dp" in v else ""
        lines.append(
            f"| {name} | {v['classify_texts_per_s']:.1f} | {v['generate32_tokens_per_s']:.0f} | "
            f"{v['generate1_tokens_per_s']:.1f} | {dp} |"
        )
    ct2 = {k: v for k, v in c["systems"].items() if k.startswith("ctranslate2")}
    ours = c["systems"]["ours auto"]
    fastest_gen = max(ct2.items(), key=lambda kv: kv[1]["generate32_tokens_per_s"])
    fastest_cls = max(ct2.items(), key=lambda kv: kv[1]["classify_texts_per_s"])
    same = (
        c["systems"]["ours float32"]["generate32_tokens_per_s"]
        / c["systems"]["ctranslate2 float32"]["generate32_tokens_per_s"]
    )
    lines += [
        "",
        f"Ours at `auto` ({c['ours_auto']}) against CTranslate2's fastest: generation "
        f"**{ours['generate32_tokens_per_s'] / fastest_gen[1]['generate32_tokens_per_s']:.2f}x** "
        f"({fastest_gen[0]}), classification "
        f"**{ours['classify_texts_per_s'] / fastest_cls[1]['classify_texts_per_s']:.2f}x** ({fastest_cls[0]}); "
        f"at equal precision (float32, 32 rows) generation {same:.2f}x.",
    ]
    return lines
