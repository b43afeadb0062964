"""Awaiting deployment calls so that giving up on one stops its work downstream.

Cancelling the asyncio task that awaits a DeploymentResponse (asyncio.wait_for's
timeout, a failed sibling in a gather) stops only the wait: Ray keeps running the
call, and the ModelReplica keeps decoding rows nobody will read. Only
`DeploymentResponse.cancel()` cancels the call itself, and Serve passes that on
to the calls it made in turn (down to the scheduler, which frees the rows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from ray.serve.handle import DeploymentResponse, DeploymentResponseGenerator

T = TypeVar("T")


async def await_or_cancel(response: DeploymentResponse[T] | DeploymentResponseGenerator[T]) -> T:
    """The response's result; if this await is cancelled, the call is cancelled too."""
    if not isinstance(response, DeploymentResponse):  # handle.remote() is typed for streaming too; none of ours streams
        raise TypeError(f"expected a unary deployment call, got {type(response).__name__}")
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


async def gather_or_cancel(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call's result, in order; on the first failure the others are cancelled and the failure is raised.

    Pass coroutines that await through `await_or_cancel`, so cancelling them cancels their calls."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
