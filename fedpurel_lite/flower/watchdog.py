"""A watchdog process that ends a launcher's processes when the launcher ends, however it ends.

Why a separate process
----------------------
A launcher killed with SIGKILL runs no cleanup of its own, and the processes it started do not die
with it: a deployment's processes run in sessions of their own (so a Ctrl-C in the terminal reaches
the launcher, which then stops them in order), and Flower starts processes of its own below them --
the SuperLink's SuperExec again in a new session, ServerApp and ClientApp processes below the
SuperExecs. Linux's parent-death signal (``PR_SET_PDEATHSIG``) does not cover this: it is set in each
direct child, fires when the *thread* that started the child ends (a deployment driven from a worker
thread would lose its processes when that thread returns), and never reaches the grandchildren Flower
starts itself.

How it works
------------
:class:`Watchdog` starts ``python -m fedpurel_lite.flower.watchdog`` in a session of its own (a
Ctrl-C or a signal to the launcher's process group does not reach it) with a pipe on its stdin. Only
the launcher holds the write end: the descriptor is not inheritable, so no other child keeps it open.
The launcher writes ``PID STAMP`` (PID and start stamp, :mod:`.procs`) of every process it starts.
The watchdog

- every second notes the descendants of those processes by PID and start stamp, and the process
  groups they lead, so a process that Flower moves to a new session or that loses its parent stays
  known;
- wakes when the pipe reaches end-of-file -- the kernel closes the launcher's end when the launcher
  exits, whatever ended it, SIGKILL included -- or when the launcher (PID and start stamp) is gone
  (a launcher that forked a child holding a copy of the pipe), or on SIGTERM;
- then ends everything it knows: SIGTERM to every known live process and to every process group led
  by a known process that still has a known member (a group signal also reaches a process started a
  moment ago, such as a ClientApp), SIGKILL to whatever still runs ``grace`` seconds later, repeated
  until nothing of it is left; and exits.

A launcher that stops its processes itself and then calls :meth:`Watchdog.close` leaves it nothing to
do. Nothing is looked up or signalled by name, and never the launcher's own process group.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .procs import Proc, Row, descendants_in, proc_table

SCAN_S = 1.0  # how often the watchdog notes new descendants
KILL_WAIT_S = 5.0  # how long it repeats SIGKILL before giving up


class Watchdog:
    """The launcher's side: starts the watchdog process and tells it about every process to watch.

    Parameters
    ----------
    grace : float
        Seconds between SIGTERM and SIGKILL when the watchdog has to end the processes.
    log : Path, optional
        File for the watchdog's own messages (default: discarded).
    """

    def __init__(self, grace: float = 2.0, log: Path | None = None) -> None:
        me = Proc.of(os.getpid())
        stamp = me.stamp if me is not None else ""
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]).strip(
            os.pathsep))
        cmd = [sys.executable, "-m", "fedpurel_lite.flower.watchdog", "--launcher", f"{os.getpid()}:{stamp}",
               "--launcher-pgid", str(os.getpgrp()), "--grace", str(float(grace))]
        self._lock = threading.Lock()
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") if log is not None else open(os.devnull, "wb") as err:
            self.popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                          env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def watch(self, pid: int) -> Proc | None:
        """Have the watchdog end process ``pid`` (and what it starts) if this process ends first.

        Returns the process as identified (``None`` if it has already ended).
        """
        proc = Proc.of(pid)
        if proc is None:
            return None
        with self._lock:
            stdin = self.popen.stdin
            if stdin is not None and not stdin.closed:
                try:
                    stdin.write(f"{proc.pid} {proc.stamp}\n".encode())
                    stdin.flush()
                except (BrokenPipeError, OSError):  # the watchdog is gone: nothing more to tell it
                    pass
        return proc

    def close(self, timeout: float = 15.0) -> None:
        """Close the pipe (the watchdog ends what still runs of the watched processes, then exits)."""
        with self._lock:
            if self.popen.stdin is not None and not self.popen.stdin.closed:
                try:
                    self.popen.stdin.close()
                except OSError:
                    pass
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


# ----------------------------------------------------------------------------- the watchdog process
class Watched:
    """What the watchdog knows: live processes by PID and start stamp, and the groups they lead."""

    def __init__(self, never_group: int) -> None:
        self.known: dict[int, str] = {}
        self.leaders: set[int] = set()  # process groups whose leader was a known process
        self.never_group = never_group

    def add(self, pid: int, stamp: str) -> None:
        self.known.setdefault(pid, stamp)

    def _is_known(self, pid: int, row: Row) -> bool:
        return self.known.get(pid) == row.stamp

    def note(self, table: Mapping[int, Row]) -> None:
        """Add the descendants of known live processes; forget known processes that have ended."""
        alive = [p for p, row in table.items() if self._is_known(p, row)]
        for d in descendants_in(table, alive):
            self.known.setdefault(d.pid, d.stamp)
        self.known = {p: s for p, s in self.known.items() if p in table and table[p].stamp == s}
        self.leaders |= {p for p in self.known if table[p].pgid == p}
        self.leaders.discard(self.never_group)

    def targets(self, table: Mapping[int, Row], groups: set[int]) -> dict[int, Row]:
        """Live known processes, members of ``groups`` and all their descendants."""
        out = {p: row for p, row in table.items() if self._is_known(p, row) or row.pgid in groups}
        for d in descendants_in(table, list(out)):
            out[d.pid] = table[d.pid]
            self.known.setdefault(d.pid, d.stamp)
        out.pop(os.getpid(), None)
        return out

    def end_all(self, grace: float, say: Callable[[str], None] = print) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s, to everything known (see the module docstring).

        Returns how many processes were signalled.
        """
        table = proc_table()
        self.note(table)
        groups = {g for g in self.leaders if any(table[p].pgid == g for p in self.known)}  # led by us, not empty
        signalled: set[tuple[int, str]] = set()
        termed_groups: set[int] = set()
        term_until, kill_until = time.monotonic() + grace, time.monotonic() + grace + KILL_WAIT_S
        while True:
            targets = self.targets(table, groups)
            if not targets or time.monotonic() > kill_until:
                break
            sig = signal.SIGTERM if time.monotonic() < term_until else signal.SIGKILL
            for g in {row.pgid for row in targets.values()} & groups:
                if sig == signal.SIGKILL or g not in termed_groups:
                    _send(os.killpg, g, sig)
                    termed_groups.add(g)
            for pid, row in targets.items():
                if sig == signal.SIGKILL or (pid, row.stamp) not in signalled:
                    _send(os.kill, pid, sig)
                    signalled.add((pid, row.stamp))
            time.sleep(0.1)
            table = proc_table()
        left = self.targets(proc_table(), groups)
        if signalled:
            say(f"watchdog: ended {len(signalled)} process(es)" + (f"; still running: {sorted(left)}" if left else ""))
        return len(signalled)


def _send(fn: Callable[[int, int], None], target: int, sig: int) -> None:
    try:
        fn(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """The watchdog process (started by :class:`Watchdog`; reads ``PID STAMP`` lines on stdin)."""
    p = argparse.ArgumentParser(prog="python -m fedpurel_lite.flower.watchdog", description=__doc__.split("\n")[0])
    p.add_argument("--launcher", required=True, help="PID:STAMP of the launcher")
    p.add_argument("--launcher-pgid", type=int, default=-1, help="the launcher's process group (never signalled)")
    p.add_argument("--grace", type=float, default=2.0)
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_stop)
    pid, _, stamp = args.launcher.partition(":")
    launcher = Proc(int(pid), stamp)
    watched = Watched(args.launcher_pgid)
    fd, buf, next_scan = sys.stdin.fileno(), b"", 0.0
    why = "the pipe from the launcher closed"
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], SCAN_S / 2)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    parts = line.decode().split()
                    if len(parts) == 2 and parts[0].isdigit():
                        watched.add(int(parts[0]), parts[1])
                next_scan = 0.0
            if time.monotonic() >= next_scan:
                table = proc_table()
                if not launcher.running(table):
                    why = f"the launcher (pid {launcher.pid}) is gone"
                    break
                watched.note(table)
                next_scan = time.monotonic() + SCAN_S
    except _Stop:
        why = "SIGTERM"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the job
    watched.end_all(args.grace, say=lambda m: print(f"{m} ({why})", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
