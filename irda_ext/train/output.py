"""The output folder of a run: checked before any work (an unwritable ``--out`` used to be
found after the first epoch), locked for the run (two runs writing one folder would
interleave their checkpoints), and cleared of the temporary files a killed save leaves."""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import tempfile

from ..atomic import is_temporary

LOCK = ".irda-train.lock"


class OutputFolder:
    """``with OutputFolder(path):`` holds the folder for one run.

    Raises:
        ValueError: the path is a file or under one, cannot be created or written, or another
            irda-train holds it (the message names the folder and the other process).
    """

    def __init__(self, path: str):
        self.path = path
        self._fd = None

    def __enter__(self) -> "OutputFolder":
        check_writable(self.path)
        self._lock()
        removed = remove_stale_temporaries(self.path)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of an interrupted save in {self.path}: "
                  f"{', '.join(removed)}", file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.unlink(os.path.join(self.path, LOCK))
            except OSError:
                pass
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def _lock(self) -> None:
        lock = os.path.join(self.path, LOCK)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ValueError(f"--out {self.path} is in use by another irda-train (pid {holder}); wait for it "
                                     f"to finish or choose another --out") from None
                raise ValueError(f"--out {self.path}: cannot lock {lock} ({err.strerror})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its previous holder unlinked while we waited to open it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd


def check_writable(path: str) -> None:
    """Create ``path`` if needed and write a probe file in it, or raise ``ValueError`` naming it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".irda-train-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {path}: cannot write there ({err.strerror or err}); choose another folder") from None


def remove_stale_temporaries(path: str) -> list:
    """Delete the temporary files of interrupted saves in ``path`` (call with the lock held:
    then no other run is writing there); returns their names."""
    removed = []
    for name in sorted(os.listdir(path)):
        if is_temporary(name) and os.path.isfile(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))
            removed.append(name)
    return removed
