"""The baseline: how this model is usually served. One process, FastAPI + uvicorn, transformers
`generate` per request in float32, one request at a time.

/classify and /augment as bench/lib/baseline.py describes them; one lock makes it one request at a time.

    .venv/bin/python -m bench.lib.baseline_server --model /path/to/checkpoint --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from typing import Any

import torch
from fastapi import FastAPI, Request, Response

from bench.lib.baseline import AugmentBody, Baseline, ClassifyBody

logger = logging.getLogger("bench.baseline")


def build_app(baseline: Baseline) -> FastAPI:
    app = FastAPI(title="baseline: transformers generate, one request at a time")
    lock = asyncio.Lock()
    counts = {"served": 0, "skipped": 0}

    async def serve_one(request: Request, handler, body) -> Any:
        async with lock:
            # A client that gave up while queued (the bench ending a load point) is not served:
            # otherwise abandoned requests would keep the model busy into the next point.
            if await request.is_disconnected():
                counts["skipped"] += 1
                return Response(status_code=499)
            result = await asyncio.to_thread(handler, body)
            counts["served"] += 1
            return result

    @app.post("/classify")
    async def classify(body: ClassifyBody, request: Request) -> Any:
        return await serve_one(request, baseline.classify, body)

    @app.post("/augment")
    async def augment(body: AugmentBody, request: Request) -> Any:
        return await serve_one(request, baseline.augment, body)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            **baseline.loaded.describe(),
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
        }

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"busy": lock.locked(), **counts}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Baseline server: transformers generate per request, one at a time.")
    parser.add_argument("--model", required=True, help="model spec: a checkpoint directory, or demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO)
    started = time.monotonic()
    baseline = Baseline(args.model, args.device, args.dtype)
    logger.info(
        "baseline loaded %s in %.1f s (torch threads %d)",
        args.model,
        time.monotonic() - started,
        torch.get_num_threads(),
    )
    import uvicorn

    uvicorn.run(build_app(baseline), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
