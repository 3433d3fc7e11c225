"""Files written whole or not at all: each helper writes a temporary file in the same
folder, then renames it over the target (``os.replace`` is atomic on POSIX and Windows),
so an interrupted run never leaves a truncated checkpoint, result or plot behind."""
from __future__ import annotations

import os


def _temporary(path: str, suffix: str = "") -> str:
    return f"{path}.tmp{os.getpid()}{suffix}"


def atomic_write_text(text: str, path: str) -> None:
    tmp = _temporary(path)
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def atomic_save_figure(fig, path: str, dpi: int = 120) -> None:
    """Save a matplotlib figure (the temporary name keeps the extension, which
    matplotlib reads the format from) and close it."""
    import matplotlib.pyplot as plt

    tmp = _temporary(path, os.path.splitext(path)[1])
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def atomic_write_bytes(data: bytes, path: str) -> None:
    tmp = _temporary(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file these helpers write (``<target>.tmp<pid>[.ext]``),
    which only a write interrupted by a kill leaves behind."""
    stem = name.rsplit(".tmp", 1)
    return len(stem) == 2 and stem[0] != "" and stem[1].split(".", 1)[0].isdigit()
