"""Ray's processes on this machine, and the clean-up of a local Ray session's stragglers.

ray.shutdown() stops the processes ray.init() started itself (GCS, raylet, log monitor,
autoscaler monitor, dashboard), giving each one second after SIGTERM before SIGKILL. The
processes *the raylet* started are left to notice on their own: the dashboard agent polls for
its parent every 0.4 s and exits after 5 misses (2 s or more on a loaded machine, orphaned to
init meanwhile), and the workers exit when their raylet's socket closes. run_tune waits for
them, and stops what is still there, so that no Ray process of its session outlives it.

Only processes of the session this process started are ever signalled: those whose environment
carries the token run_tune set while starting Ray (every Ray process inherits it: raylet, agent,
workers), or that name the session's folder on their command line or write their output there.
A cluster run_tune joined (address=...) is never touched. Linux only (/proc); elsewhere the
listing is empty and Ray's own shutdown is all there is.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

PROC = Path("/proc")

# (kind, what identifies it on the command line). Ray's workers rename themselves ray::<task>
# (ray::IDLE between tasks), which replaces their command line.
_KINDS = (
    ("raylet", "/ray/core/src/ray/raylet/raylet"),
    ("gcs_server", "/ray/core/src/ray/gcs/gcs_server"),
    ("dashboard agent", "/ray/dashboard/agent.py"),
    ("dashboard", "/ray/dashboard/dashboard.py"),
    ("log_monitor", "/ray/_private/log_monitor.py"),
    ("monitor", "/ray/autoscaler/_private/monitor.py"),
    ("runtime_env agent", "/ray/_private/runtime_env/agent/main.py"),
    ("worker", "/ray/_private/workers/default_worker.py"),
    ("setup_worker", "/ray/_private/workers/setup_worker.py"),
    ("ray_client_server", "ray.util.client.server"),
    ("process reaper", "/ray/_private/ray_process_reaper.py"),
)


@dataclass(frozen=True)
class RayProcess:
    """One live Ray process; (pid, start) names it even after its pid is reused."""

    pid: int
    start: int          # start time, in clock ticks after boot (/proc/PID/stat field 22)
    ppid: int
    kind: str
    cmdline: str

    def __str__(self) -> str:
        return f"{self.pid} ({self.kind}, parent {self.ppid}): {self.cmdline[:160]}"


def ray_kind(argv: Sequence[str]) -> Optional[str]:
    """Which Ray process a command line is (one of _KINDS, or 'worker' for ray::...), else None."""
    if not argv:
        return None
    if argv[0].startswith("ray::"):
        return "worker"
    line = " ".join(argv)
    for kind, mark in _KINDS:
        if mark in line:
            return kind
    return None


def _stat(pid: int):
    """(state, ppid, start) of a process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _environ_has(pid: int, entries: Sequence[bytes], prefix: bool) -> bool:
    try:
        env = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # another user's process: not ours
        return False
    if prefix:
        return any(e.startswith(x) for e in env for x in entries)
    return any(x in env for x in entries)


def _names_folder(pid: int, cmdline: str, folder: str) -> bool:
    """The process names `folder` on its command line, or its stdout/stderr is a file in it."""
    folder = folder.rstrip(os.sep) + os.sep
    if folder in cmdline:
        return True
    for fd in ("1", "2"):
        try:
            if os.readlink(PROC / str(pid) / "fd" / fd).startswith(folder):
                return True
        except OSError:
            pass
    return False


def ray_processes(env: Optional[str] = None, env_prefix: bool = False,
                  folder: Optional[str] = None) -> List[RayProcess]:
    """The live (not zombie) Ray processes on this machine, by pid.

    env: 'NAME=VALUE' (or, with env_prefix, the start of it): only the processes whose
    environment holds it; folder: or those naming that folder (a Ray session's) on their
    command line or writing their output into it. With neither, every Ray process is listed.
    """
    if not PROC.is_dir():
        return []
    found = []
    me = os.getpid()
    for d in PROC.iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        pid = int(d.name)
        try:
            argv = [a.decode(errors="replace") for a in (d / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        kind = ray_kind(argv)
        if kind is None:
            continue
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        line = " ".join(argv)
        if env is not None or folder is not None:
            mine = env is not None and _environ_has(pid, [env.encode()], env_prefix)
            mine = mine or (folder is not None and _names_folder(pid, line, folder))
            if not mine:
                continue
        found.append(RayProcess(pid, st[2], st[1], kind, line))
    return sorted(found, key=lambda p: p.pid)


def alive(p: RayProcess) -> bool:
    """Whether that very process (not a later one with its pid) still runs."""
    st = _stat(p.pid)
    return st is not None and st[2] == p.start and st[0] not in ("Z", "X")


def wait_gone(procs: Iterable[RayProcess], timeout: float, poll: float = 0.05) -> List[RayProcess]:
    """Wait up to `timeout` seconds for the processes to exit; the ones still alive."""
    left = [p for p in procs if alive(p)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = [p for p in left if alive(p)]
    return left


def _signal(procs: Iterable[RayProcess], sig) -> None:
    for p in procs:
        if alive(p):  # checked just before: never a process that took over its pid
            try:
                os.kill(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(procs: Iterable[RayProcess], grace: float = 1.0, term_timeout: float = 3.0,
         kill_timeout: float = 2.0) -> List[RayProcess]:
    """Let `procs` exit on their own for `grace` seconds, then SIGTERM the rest, then SIGKILL
    what survives `term_timeout`. Returns the processes that had to be signalled (all gone
    unless even SIGKILL did not end them within `kill_timeout`)."""
    left = wait_gone(procs, grace)
    signalled = list(left)
    if left:
        _signal(left, signal.SIGTERM)
        left = wait_gone(left, term_timeout)
    if left:
        _signal(left, signal.SIGKILL)
        wait_gone(left, kill_timeout)
    return signalled


def stop_session(find: Callable[[], List[RayProcess]], before: Iterable[RayProcess] = (),
                 rounds: int = 3, **timeouts) -> List[RayProcess]:
    """stop() every process `find` lists (plus `before`, listed while the session still ran),
    again while new ones show up (a worker the raylet was starting as it went down); the
    processes that had to be signalled."""
    signalled: List[RayProcess] = []
    procs = {(p.pid, p.start): p for p in before}
    for _ in range(rounds):
        procs.update({(p.pid, p.start): p for p in find()})
        procs = {k: p for k, p in procs.items() if alive(p)}
        if not procs:
            break
        signalled += stop(procs.values(), **timeouts)
        procs = {}
    return signalled
