"""One ``stockkeeper up`` per data directory: an advisory lock on a file in it.

The lock is ``flock``'s, so the kernel drops it with the process however that ends (a
clean exit, a crash, ``kill -9``): a stale lock file never blocks the next start. The
file holds the pid of the holder, to say who is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "up.lock"


class AlreadyRunning(Exception):
    """Another live process holds the data directory's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"already running in {data_dir} ({who})")


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def instance_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s lock while inside; raise :class:`AlreadyRunning` at once when
    another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    # Not O_TRUNC: the holder's pid must stay readable until we own the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(data_dir.resolve(), _holder(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmlessly
