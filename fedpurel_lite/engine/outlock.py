"""One writer per output folder: a lock held for a whole command, naming its holder.

A command that writes a folder (``run --out``, ``compare --report``, ``report --out``) holds
:func:`output_lock` on it from before the first write to the end. A second command into the same
folder is refused at once with one ``error:`` line naming the holder -- process id, host and start
time -- instead of both writing and one silently winning.

Mechanism: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<folder>/.fedpurel.lock``. The kernel releases
a ``flock`` when its holder's last file descriptor closes, including when the process is killed
(SIGKILL, out of memory, a crash), so a lock file left behind by a killed run is not held: the next
command takes it over and says so (a ``warning:`` naming the run that left it and why it is
known to be gone: its PID no longer exists, or the PID now belongs to a process started at another
time, read from ``/proc/<pid>/stat``). Liveness is therefore never guessed from a PID alone. The
holder writes its identity (PID, host, its process start time in clock ticks since boot, wall-clock
start) into the file after taking the lock; the file is removed on release while still locked, and
every acquirer checks that the file it locked is still the one at the path (same inode), so a
removal racing with a new acquirer cannot give two holders.

``flock`` locks are advisory and local to one machine's kernel (on NFS they may not be enforced
across hosts); the recorded host makes a refusal's message say where the holder runs.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError

LOCK_NAME = ".fedpurel.lock"


class FolderLockedError(UserError):
    """The output folder is being written by another live command."""


def process_start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); ``None`` if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """Whether the recorded holder still runs on this host: its PID exists with the same start time.

    ``None`` when it cannot be told (another host, no ``/proc``, nothing recorded).
    """
    pid, ticks = holder.get("pid"), holder.get("start_ticks")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname() or not Path("/proc/self/stat").exists():
        return None
    now = process_start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
            f"{' (' + holder['command'] + ')' if holder.get('command') else ''}")


def read_holder(folder: str | Path) -> dict[str, Any]:
    """The identity recorded in ``folder``'s lock file (``{}`` when none or unreadable)."""
    from ..data.safe_load import load_json

    try:
        data = load_json(Path(folder) / LOCK_NAME, "lock file", max_bytes=4096)
    except UserError:
        return {}
    return data if isinstance(data, dict) else {}


def _try_lock(path: Path) -> int | None:
    """A descriptor holding ``flock`` on the file at ``path`` (created), or ``None`` when another holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file was removed (released) between open and lock: lock the new one


def check_unlocked(folder: str | Path, key: str = "--out") -> None:
    """Refuse at once when a live command holds ``folder`` (a cheap look before the other checks).

    Raises
    ------
    FolderLockedError
        Naming ``key``, the folder and the holder.
    """
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderLockedError(_held_message(folder, key)) from None
    finally:
        os.close(fd)


def _held_message(folder: str | Path, key: str) -> str:
    holder = read_holder(folder)
    alive = holder_alive(holder)
    note = ("" if alive is not False else
            "; that process is gone, so a process it started (a worker) still holds the lock")
    return (f"{key}={str(folder)!r} is being written by another command: {_describe(holder)}{note}; wait for it "
            "to finish, or choose another folder")


@contextmanager
def output_lock(folder: str | Path, key: str = "--out", command: str = "") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created) for the ``with`` block.

    Parameters
    ----------
    folder : str or Path
        The output folder.
    key : str
        The option naming it, for messages.
    command : str
        What holds it (recorded, shown to a refused second command).

    Raises
    ------
    FolderLockedError
        Another live command holds the folder (naming it).
    ConfigError
        The folder cannot be created or locked.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(path)
    except OSError as exc:
        raise ConfigError(f"{key}={str(folder)!r}: cannot create or lock {LOCK_NAME} there "
                          f"({exc.strerror or exc})") from None
    if fd is None:
        raise FolderLockedError(_held_message(folder, key))
    try:
        stale = read_holder(folder)
        if stale and stale.get("pid") != os.getpid():
            alive = holder_alive(stale)
            why = {False: "it is no longer running", None: "its lock was released"}.get(alive, "its lock was released")
            warnings.warn(f"{key}={str(folder)!r}: taking over the lock left by {_describe(stale)}; {why} "
                          "(killed?): its files stay as they are", stacklevel=3)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": process_start_ticks(os.getpid()),
              "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield folder
    finally:
        try:
            os.unlink(path)  # while still holding it: a waiter that opened the old file re-checks the inode
        except OSError:
            pass
        os.close(fd)
