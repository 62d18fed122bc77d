"""One writer per run directory: a lock file taken atomically, naming its holder, removed at exit.

Two runs in one directory (the same command started twice with --resume auto) would interleave train.log and
replace each other's checkpoints. `RunLock.acquire` creates `<run_dir>/run.lock` with O_CREAT | O_EXCL (atomic, also
on NFS) holding the process id, host and start time; a second run is refused with one line naming them. A lock left
by a process of this host that is gone (killed with SIGKILL, a crashed node's lock is another host's and is never
judged) is taken over, and `note` says so. Takeovers on one host are serialised by an flock on the directory, so two
runs that find the same stale lock cannot both take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ops.errors import UsageError

LOCK_NAME = "run.lock"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(holder: dict) -> bool:
    """False only when `holder` is a process of this host that no longer exists (or whose pid was reused)."""
    if holder.get("host") != socket.gethostname():
        return True  # another host's process cannot be checked from here
    pid = int(holder.get("pid", 0))
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    start = process_start(pid)
    return not (holder.get("start") and start and start != holder["start"])


def _read(path: str) -> dict | None:
    """The lock's holder; None while it is being written (or if it is not a lock we wrote)."""
    for _ in range(5):
        try:
            with open(path) as f:
                holder = json.load(f)
            if isinstance(holder, dict) and "pid" in holder and "host" in holder:
                return holder
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


@contextlib.contextmanager
def _serialised(folder: str):
    """An exclusive flock on `folder` for this host's processes (skipped where the filesystem refuses it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class RunLock:
    """`acquire(run_dir)` once (again with the same folder: no-op), `release()` at exit, also after an error."""

    def __init__(self) -> None:
        self.path = ""
        self.note = ""  # set when a stale lock was taken over: worth a line in the run's log
        self._mine: dict | None = None  # what this process wrote into the lock
        self._created = False

    @property
    def held(self) -> bool:
        return self._mine is not None

    def acquire(self, run_dir: str) -> RunLock:
        if self.held:
            return self
        self._created = not os.path.isdir(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as err:
            what = "is a file, not a folder" if os.path.exists(run_dir) else f"cannot be made ({err.strerror})"
            raise UsageError(f"run directory {run_dir} {what}") from None
        self.path = os.path.join(run_dir, LOCK_NAME)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with _serialised(run_dir):
            for _ in range(3):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._judge(run_dir, _read(self.path))
                    continue
                except FileNotFoundError:  # the folder went away with the previous holder's release
                    os.makedirs(run_dir, exist_ok=True)
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(mine, f)
                self._mine = mine
                return self
        raise UsageError(f"run directory {run_dir}: could not take {self.path}; another run keeps taking it")

    def _judge(self, run_dir: str, holder: dict | None) -> None:
        """Refuse while the holder lives; remove a stale lock (the caller retries)."""
        if holder == {}:
            return  # released meanwhile
        if holder is None:
            raise UsageError(f"run directory {run_dir} has a lock {self.path} that names no process; if no run "
                             f"uses {run_dir}, remove {self.path}")
        who = f"pid {holder['pid']} on {holder['host']}"
        if holder_alive(holder):
            raise UsageError(f"run directory {run_dir} is in use by another run ({who}, since "
                             f"{holder.get('since', '?')}; lock {self.path}); wait for it to end, or remove the lock "
                             "if that run is gone")
        os.unlink(self.path)
        self.note = f"took over the stale lock {self.path} of {who} (that process is gone)"

    def release(self) -> None:
        """Remove the lock if it is still ours (and the run directory if this lock created it and it is empty)."""
        if not self.held:
            return
        with contextlib.suppress(OSError, ValueError):
            with open(self.path) as f:
                ours = json.load(f) == self._mine
            if ours:
                os.unlink(self.path)
        if self._created:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))
        self._mine = None


def lock_run_dir(lock: RunLock, run_dir: str, is_main: bool, share: Callable[[Any], Any]) -> None:
    """The main process takes `run_dir`'s lock; when another run holds it, every process raises the same UsageError
    (one line, exit 2). `share` sends the main process's value to all (clsa.distributed.broadcast_object)."""
    if not run_dir:
        return
    refusal = None
    if is_main:
        try:
            lock.acquire(run_dir)
        except UsageError as err:
            refusal = str(err)
    refusal = share(refusal)
    if refusal:
        raise UsageError(refusal)
