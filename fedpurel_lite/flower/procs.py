"""The OS processes of a local deployment, started in their own sessions and stopped by PID.

:class:`ProcessSet` starts each command with its output in a log file and remembers every process it
started and every descendant it has seen (the SuperLink and SuperNodes start SuperExec, ServerApp and
ClientApp processes of their own). :meth:`ProcessSet.stop_all` ends exactly those processes -- by PID,
checked against their start time so a reused PID is never hit -- first politely (SIGTERM), then with
SIGKILL after a grace period. Nothing is ever looked up or killed by name.

Nothing outlives the process that started it: before its first process, a :class:`ProcessSet` starts a
:class:`~.watchdog.Watchdog` and hands it every process it starts; when the launcher ends without
stopping them -- SIGKILL included -- the watchdog ends them and their descendants (see :mod:`.watchdog`
for the mechanism and why it is not ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .watchdog import Watchdog


class Row(NamedTuple):
    """One live process in :func:`proc_table`: parent PID, start stamp, process group ID."""

    ppid: int
    stamp: str
    pgid: int


def proc_table() -> dict[int, Row]:
    """``{pid: Row(ppid, start stamp, pgid)}`` of every live process (``/proc`` on Linux, ``ps`` elsewhere).

    Zombies (ended, not yet reaped) are left out. The start stamp (clock ticks since boot on Linux)
    tells a process from a later one that was given the same PID.
    """
    table: dict[int, Row] = {}
    if Path("/proc/self/stat").exists():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
            if fields[0] not in ("Z", "X"):  # a zombie has ended already
                table[int(entry.name)] = Row(int(fields[1]), fields[19], int(fields[2]))  # ppid, starttime, pgrp
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat=,lstart="], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and not parts[3].startswith("Z"):
            table[int(parts[0])] = Row(int(parts[1]), parts[4].strip(), int(parts[2]))
    return table


@dataclass(frozen=True)
class Proc:
    """A process identified by PID and start stamp (so a reused PID is never mistaken for it)."""

    pid: int
    stamp: str

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        """The live process ``pid`` now (``None`` when there is none)."""
        row = proc_table().get(int(pid))
        return None if row is None else cls(int(pid), row.stamp)

    def running(self, table: Mapping[int, Row] | None = None) -> bool:
        """Whether this process (same PID *and* start stamp) still runs (``table``: a fresh :func:`proc_table`)."""
        entry = (proc_table() if table is None else table).get(self.pid)
        return entry is not None and entry.stamp == self.stamp

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def descendants(pid: int) -> list[Proc]:
    """Every process below ``pid`` now."""
    return descendants_in(proc_table(), [pid])


def descendants_in(table: Mapping[int, Row], pids: Sequence[int]) -> list[Proc]:
    """Every process below any of ``pids`` in ``table`` (each once)."""
    kids: dict[int, list[int]] = {}
    for child, row in table.items():
        kids.setdefault(row.ppid, []).append(child)
    out, seen, todo = [], set(pids), [c for p in pids for c in kids.get(p, [])]
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        out.append(Proc(child, table[child].stamp))
        todo += kids.get(child, [])
    return out


def wait_gone(procs: Sequence[Proc], timeout: float) -> list[Proc]:
    """Wait until ``procs`` have ended (at most ``timeout`` seconds); returns those still running."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.running()]
    return [p for p in alive if p.running()]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Managed:
    """One started process: its name, ``Popen`` handle, log file and the descendants seen so far.

    ``log_start``: where this process's output begins in ``log`` (a log is appended to, never replaced).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    seen: dict[int, Proc] = field(default_factory=dict)
    log_start: int = 0

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines this process wrote to its log (escape sequences removed)."""
        import re

        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.log_start)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """The processes of one deployment; use as a context manager so they are stopped on any exit."""

    def __init__(self, grace: float = 10.0, watchdog_log: Path | None = None) -> None:
        self.grace = float(grace)
        self.procs: dict[str, Managed] = {}
        self.watchdog_log = watchdog_log
        self._watchdog: Watchdog | None = None

    @property
    def watchdog(self) -> Watchdog:
        """The watchdog of this set (started on first use; a new one after :meth:`stop_all`)."""
        if self._watchdog is None or not self._watchdog.alive():
            from .watchdog import Watchdog

            self._watchdog = Watchdog(log=self.watchdog_log)
        return self._watchdog

    def watchdog_proc(self) -> Proc | None:
        """The watchdog process, if one runs."""
        if self._watchdog is None or not self._watchdog.alive():
            return None
        return Proc.of(self._watchdog.pid)

    def adopt(self, pid: int) -> Proc | None:
        """Have the watchdog end process ``pid`` (started elsewhere) should this process end first."""
        return self.watchdog.watch(pid)

    def start(self, name: str, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> Managed:
        """Start ``cmd`` in a new session, stdout and stderr into ``log``."""
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"process {name!r} is already running (pid {self.procs[name].pid})")
        log.parent.mkdir(parents=True, exist_ok=True)
        watchdog = self.watchdog  # running before the process starts
        with open(log, "ab") as fh:
            start = fh.tell()
            popen = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
        watchdog.watch(popen.pid)
        self.procs[name] = Managed(name, popen, log, log_start=start)
        self.track()
        return self.procs[name]

    def track(self) -> None:
        """Remember the current descendants of every started process (they may outlive their parent)."""
        table = proc_table()
        for m in self.procs.values():
            if m.alive():
                for child in descendants_in(table, [m.pid]):
                    m.seen.setdefault(child.pid, child)

    def _targets(self, m: Managed, table: Mapping[int, Row] | None = None) -> list[Proc]:
        table = proc_table() if table is None else table
        out = [p for p in m.seen.values() if p.running(table)]  # running() compares the start stamp too
        if m.alive() and m.pid in table:
            out.insert(0, Proc(m.pid, table[m.pid].stamp))
        return out

    def live(self) -> dict[str, list[Proc]]:
        """``{name: [the process if it runs, then its live known descendants]}`` (one look at the table)."""
        table = proc_table()
        return {name: self._targets(m, table) for name, m in self.procs.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``name`` and its known descendants at once (a crash of that machine)."""
        self.track()
        m = self.procs[name]
        for p in self._targets(m):
            p.signal(sig)
        try:
            m.popen.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, names: Sequence[str] | None = None) -> list[str]:
        """Stop the named processes (default: all, newest first) and their descendants; returns what needed SIGKILL."""
        self.track()
        chosen = [self.procs[n] for n in (names if names is not None else reversed(list(self.procs)))]
        targets = [p for m in chosen for p in self._targets(m)]
        for p in targets:
            p.signal(signal.SIGTERM)
        for m in chosen:  # reap our own children so they do not linger as zombies
            try:
                m.popen.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        alive = wait_gone(targets, self.grace)
        for p in alive:
            p.signal(signal.SIGKILL)
        for m in chosen:
            try:
                m.popen.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        wait_gone(alive, self.grace)
        return [str(p.pid) for p in alive]

    def stop_all(self) -> list[str]:
        """Stop every process this set started and every descendant it saw; then release the watchdog."""
        forced = self.stop()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        return forced

    def still_running(self) -> list[int]:
        """PIDs of started processes or seen descendants that still run (empty after :meth:`stop_all`)."""
        return sorted({p.pid for m in self.procs.values() for p in self._targets(m)})

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def interrupt_on_signals() -> None:
    """Make SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt in this (main) thread, so the cleanup of a
    ``with`` block runs -- also where SIGINT was inherited as ignored (a job started in the background)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.name == "posix":
        signal.signal(signal.SIGTERM, handler)
