"""Slow and abandoned HTTP clients, on raw sockets: what a slowloris, a stalled mobile link or an impatient script
does to a service. Loopback only; bounded by the caller's `seconds`.

- a slow client sends a whole request head, then its body one byte every `byte_interval_s`, and reconnects when
  the service answers (408 at its body deadline) or closes, until the storm ends;
- an abandoned client sends a request head and half of its body, waits `hold_s`, and hangs up (a reset), then
  connects again after `pause_s`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StormReport:
    """What the storm's clients met."""

    slow_answers: Counter[str] = field(default_factory=Counter)  # status line code, or how the connection ended
    slow_cut_after_s: list[float] = field(default_factory=list)  # from the head sent to the answer, per answer
    abandoned: int = 0  # connections hung up mid-body
    connect_errors: int = 0

    def as_dict(self) -> dict[str, object]:
        cut = sorted(self.slow_cut_after_s)
        return {
            "slow_answers": dict(self.slow_answers),
            "slow_cut_after_s_min": cut[0] if cut else None,
            "slow_cut_after_s_max": cut[-1] if cut else None,
            "abandoned": self.abandoned,
            "connect_errors": self.connect_errors,
        }


def _head(host: str, path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def storm_body(index: int) -> bytes:
    """A /classify body, different per client: nothing the service could answer from a cache."""
    return json.dumps(
        {"text": f"慢速客户端发送的文本 {index}", "labels": ["体育", "财经"]}, ensure_ascii=False
    ).encode()


async def _slow_client(
    host: str, port: int, path: str, index: int, until: float, byte_interval_s: float, report: StormReport
) -> None:
    body = storm_body(index)
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            report.connect_errors += 1
            await asyncio.sleep(1)
            continue
        sent_at = time.monotonic()
        try:
            writer.write(_head(host, path, len(body)))
            await writer.drain()
            answer = asyncio.ensure_future(reader.readline())
            for byte in body:
                done, _ = await asyncio.wait({answer}, timeout=byte_interval_s)
                if done or time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
            if time.monotonic() >= until and not answer.done():
                answer.cancel()
                return
            line = await asyncio.wait_for(answer, timeout=max(until - time.monotonic(), 1.0))
            parts = line.split()
            outcome = parts[1].decode() if len(parts) > 1 else "closed without an answer"
            report.slow_answers[outcome] += 1
            if len(parts) > 1:
                report.slow_cut_after_s.append(time.monotonic() - sent_at)
        except (OSError, asyncio.TimeoutError) as exc:
            report.slow_answers[type(exc).__name__] += 1
        finally:
            writer.close()


async def _abandoned_client(
    host: str, port: int, path: str, index: int, until: float, hold_s: float, pause_s: float, report: StormReport
) -> None:
    body = storm_body(index)
    while time.monotonic() < until:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            report.connect_errors += 1
            await asyncio.sleep(1)
            continue
        try:
            writer.write(_head(host, path, len(body)) + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(hold_s)
            writer.transport.abort()  # hung up mid-body, as a killed client does
            report.abandoned += 1
        except OSError:
            report.connect_errors += 1
        await asyncio.sleep(pause_s)


async def storm(
    url: str,
    seconds: float,
    slow: int = 200,
    abandoned: int = 200,
    path: str = "/classify",
    byte_interval_s: float = 1.0,
    hold_s: float = 1.0,
    pause_s: float = 1.0,
) -> StormReport:
    """`slow` slow clients and `abandoned` abandoning ones against `url` (http://host:port) for `seconds`."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    report = StormReport()
    until = time.monotonic() + seconds
    clients = [_slow_client(host, int(port), path, i, until, byte_interval_s, report) for i in range(slow)]
    clients += [
        _abandoned_client(host, int(port), path, slow + i, until, hold_s, pause_s, report) for i in range(abandoned)
    ]
    await asyncio.gather(*clients)
    return report


def _storm_in_this_process(url: str, seconds: float, slow: int, abandoned: int, answers: Any) -> None:
    answers.put(asyncio.run(storm(url, seconds, slow=slow, abandoned=abandoned)).as_dict())


def storm_elsewhere(url: str, seconds: float, slow: int = 200, abandoned: int = 200) -> dict[str, object]:
    """`storm` in a process of its own (blocking, for `seconds`): its 400 connections must not slow the event loop
    of whoever measures the well-behaved client. Its report, as `StormReport.as_dict`."""
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    process = context.Process(target=_storm_in_this_process, args=(url, seconds, slow, abandoned, answers))
    process.start()
    try:
        report: dict[str, object] = answers.get(timeout=seconds + 120)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    return report
