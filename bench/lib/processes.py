"""Processes under test: a process group started and stopped as one, and what /proc says of its members."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def start_group(
    command: list[str], log: Path, cwd: Path, env: dict[str, str], append: bool = False
) -> subprocess.Popen[bytes]:
    """`command` in a session (process group) of its own, its output in `log`: stop_group ends it and all it spawned."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT, timeout_s: float = 30) -> None:
    """Stop a process started by start_group and everything in its process group: `sig` to the group, and
    SIGKILL to whatever is left once the leader has ended or `timeout_s` has passed (Ray's agents after a kill -9,
    say)."""
    if process is None:
        return
    for current in (sig, signal.SIGKILL):
        try:
            os.killpg(process.pid, current)
        except ProcessLookupError:  # nobody left in the group
            return
        try:
            process.wait(timeout=timeout_s if current == sig else 30)
        except subprocess.TimeoutExpired:
            continue


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
