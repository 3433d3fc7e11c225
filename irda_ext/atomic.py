"""Files written whole or not at all: each helper writes a temporary file in the same
folder, then renames it over the target (``os.replace`` is atomic on POSIX and Windows),
so an interrupted run never leaves a truncated checkpoint, result or plot behind. A write
that fails (a full disk) removes its temporary file and raises ``OSError`` naming the
target; the previous version of the file stays in place."""
from __future__ import annotations

import contextlib
import os


def _temporary(path: str, suffix: str = "") -> str:
    return f"{path}.tmp{os.getpid()}{suffix}"


@contextlib.contextmanager
def _replacing(path: str, suffix: str = ""):
    """Yields the temporary name to write; renames it over ``path`` if the write succeeds."""
    tmp = _temporary(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); its previous version, if any, "
                                 f"is intact") from None


def atomic_write_text(text: str, path: str) -> None:
    with _replacing(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def atomic_save_figure(fig, path: str, dpi: int = 120) -> None:
    """Save a matplotlib figure (the temporary name keeps the extension, which
    matplotlib reads the format from) and close it."""
    import matplotlib.pyplot as plt

    try:
        with _replacing(path, os.path.splitext(path)[1]) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def atomic_write_bytes(data: bytes, path: str) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file these helpers write (``<target>.tmp<pid>[.ext]``),
    which only a write interrupted by a kill leaves behind."""
    stem = name.rsplit(".tmp", 1)
    return len(stem) == 2 and stem[0] != "" and stem[1].split(".", 1)[0].isdigit()
