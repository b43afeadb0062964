"""Processes under test: peak resident memory from /proc, finding Serve's ModelReplica worker, stopping a process group."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process has held since it started (MiB)."""
    try:
        return int(_status(pid)["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    try:
        return int(_status(pid)["VmRSS"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process whose parent chain reaches `root`, or that shares its session."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces, so split after the last ')'
        rest = stat[stat.rfind(")") + 2 :].split()
        parents[pid] = int(rest[1])
        sessions[pid] = int(rest[3])
    found = []
    for pid in parents:
        if pid == root:
            continue
        if sessions.get(pid) == root:
            found.append(pid)
            continue
        seen, current = 0, parents.get(pid)
        while current and current != 1 and seen < 64:
            if current == root:
                found.append(pid)
                break
            current, seen = parents.get(current), seen + 1
    return sorted(found)


def find_replica_pids(root: int, name: str = "ModelReplica") -> list[int]:
    """Ray worker processes of our own `serve run` (descendants of `root`) whose title names the deployment.

    Ray retitles a replica's worker process as ``ray::ServeReplica:<app>:<deployment>``; other
    people's clusters on the same machine are not descendants of our process, so are never picked.
    """
    return [pid for pid in descendants(root) if name in cmdline(pid)]


def environ(pid: int) -> dict[str, str]:
    """The environment a process started with (readable for our own processes)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _context_switches(pid: int, kind: str) -> int | None:
    """`kind`_ctxt_switches of /proc/<pid>/task/*/status, summed over the process's threads (None: no such process)."""
    total = 0
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for thread in threads:
        try:
            status = (thread / "status").read_text()
        except OSError:
            continue
        total += int(status.split(f"\n{kind}_ctxt_switches:")[1].split()[0])
    return total


def preemptions(pid: int) -> int:
    """Times any thread of `pid` has been preempted (involuntary context switches, summed over its threads)."""
    return _context_switches(pid, "nonvoluntary") or 0


def wakeups(pid: int) -> int | None:
    """Times the threads of `pid` have gone to sleep (voluntary context switches): each sleep ends in a wake-up
    that takes a core from whatever runs there, so this counts how often a process interrupts the others."""
    return _context_switches(pid, "voluntary")


def cpu_ns(pid: int) -> int:
    """CPU time a process's main thread has run, in nanoseconds (schedstat: finer than /proc/<pid>/stat's clock ticks)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def stop_group(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT, timeout_s: float = 30) -> None:
    """Stop a process started with start_new_session=True and everything it spawned: `sig`, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
