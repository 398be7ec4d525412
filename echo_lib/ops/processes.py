"""Long-running services Echo starts on this machine (Airflow's components, the cluster topology):
each in its own process group with its output in a log, stopped as a group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def spawn(
    cmd: list[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``cmd`` in a new session (its own process group), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
            user=user,
        )
    return proc.pid


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a dead child of this process is reaped, not counted as alive)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop(
    pids: Mapping[str, int], *, grace_s: float = 20, signals: Mapping[str, int] | None = None
) -> list[str]:
    """Signal each process group (SIGTERM unless ``signals`` names another), SIGKILL what is left
    after ``grace_s``; the names of those that were running."""
    stopped = []
    for name, pid in pids.items():
        if alive(pid):
            with contextlib.suppress(OSError):
                os.killpg(pid, (signals or {}).get(name, signal.SIGTERM))
                stopped.append(name)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.3)
    for pid in pids.values():
        if alive(pid):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    return stopped


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    pid: int | None = None,
    log: Path | None = None,
    poll_s: float = 0.5,
) -> float:
    """Poll ``ready`` until it is true; seconds waited. Fails early when ``pid`` exits."""
    began = time.monotonic()
    where = f"; see {log}" if log else ""
    while time.monotonic() - began < timeout_s:
        if ready():
            return time.monotonic() - began
        if pid is not None and not alive(pid):
            raise RuntimeError(f"{what} exited at start-up{where}")
        time.sleep(poll_s)
    raise RuntimeError(f"{what} was not ready after {timeout_s:.0f} s{where}")
