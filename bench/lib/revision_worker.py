"""One side of `python -m bench against`: the engine work of `python -m bench engine` in whichever tree is first on
PYTHONPATH, best of `--repeats`, one JSON line on stdout.

Run as a script from this checkout with PYTHONPATH (and the working directory) set to the tree to measure, so an
earlier revision runs its own serve_app and bench.lib.engine_work; only names that revision already had are used.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)  # every option is bench/against.py's to choose
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--texts", type=int, required=True)
    parser.add_argument("--labels", nargs="+", required=True)
    args = parser.parse_args()

    import torch

    from bench.lib.engine_work import augment_work, classify_work, pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    service = pipeline(args.model, "cpu", args.dtype)
    generation = augment_work(service, args.rows, n=1, max_new_tokens=args.tokens, seed=4, seeded=True)
    classify = classify_work(service, args.texts, args.labels, seed=3)
    generation.run(generation.requests[:1]), classify.run(classify.requests[:2])  # first-call allocations
    generate_s, classify_s, tokens = [], [], 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        answers = generation.run(generation.requests)
        generate_s.append(time.perf_counter() - started)
        tokens = sum(len(sequence) for answer in answers for sequence in answer)
        started = time.perf_counter()
        classify.run(classify.requests)
        classify_s.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "dtype": service.loaded.precision.name,
                "generation_tokens_per_s": tokens / min(generate_s),
                "classify_texts_per_s": len(classify.requests) / min(classify_s),
                "tokens": tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
