"""``checkpoint.pt`` and ``best.pt``: what ``--resume`` continues from.

Each file is written atomically (temporary file, then ``os.replace``), so a kill during a
save leaves the previous file, and carries a SHA-256 checksum of its payload, so a damaged
file (a truncated copy, flipped bytes) is refused with one sentence naming it instead of
failing steps later with an index error or a NaN. Layout: the line ``IRDA-CHECKPOINT``,
the hex digest and a newline, then the ``torch.save`` payload.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import random
import zipfile
from dataclasses import asdict, dataclass, field
from typing import List

import numpy as np
import torch

from ..atomic import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
MAGIC = b"IRDA-CHECKPOINT\n"
# 2: checksummed files; methods built from typed options; learned noise scales as log sigma.
FORMAT = 2
# Options that may differ between a checkpoint and the run that resumes it: they change
# where and how verbosely the run goes on, not what it computes. Every other option must match.
RESUME_MAY_CHANGE = ("resume", "stop_after", "no_progress", "no_plot", "no_test", "workers", "threads", "device",
                     "out")


@dataclass
class Progress:
    """How far a run has come: the part of a checkpoint that is not a module's state."""

    epoch: int = 0  # epochs done
    best_val: float = math.inf
    best_epoch: int = -1
    history: List[dict] = field(default_factory=list)
    pretrain_done: bool = False
    train_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state(loader_generator: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader_generator.get_state()}


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_generator.set_state(state["loader"])


def write_checked(obj: dict, path: str) -> None:
    """``obj`` saved to ``path`` atomically, with the checksum of its payload."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload, path)


def read_checked(path: str, device) -> dict:
    """The object :func:`write_checked` saved at ``path``.

    Raises:
        ValueError: the file is empty, not a checkpoint, of an earlier format, or its payload
            does not match its checksum; the message names the file and what to do.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    start_over = "delete it to start the run over (or restore an intact copy)"
    if not data.startswith(MAGIC):
        if zipfile.is_zipfile(io.BytesIO(data)):
            raise ValueError(f"{path} was written by an earlier irda-train (checkpoint format 1, this version reads "
                             f"{FORMAT}); start a new run in another --out, or resume with the version that wrote it")
        what = "empty" if not data else "not an irda-train checkpoint"
        raise ValueError(f"{path} is {what}; {start_over}")
    digest, payload = data[len(MAGIC):len(MAGIC) + 64], data[len(MAGIC) + 65:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum written with it (a truncated "
                         f"copy or changed bytes); {start_over}")
    state = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format') if isinstance(state, dict) else '?'}, "
                         f"this version reads {FORMAT}; start a new run in another --out")
    return state


def save_checkpoint(path: str, config: dict, progress: Progress, model, head, method, optimizer, scheduler,
                    loader_generator: torch.Generator) -> None:
    write_checked({
        "format": FORMAT, "config": config, "model": model.state_dict(), "head": head.state_dict(),
        "method": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_state(loader_generator), **asdict(progress),
    }, path)


def save_best(path: str, epoch: int, model, head, method) -> None:
    write_checked({"format": FORMAT, "model": model.state_dict(), "head": head.state_dict(),
                       "method": method.state_dict(), "epoch": epoch}, path)


def load_for_resume(path: str, config: dict, device) -> dict:
    """The checkpoint at ``path``, after checking that it is intact and that this run
    continues it: every option but :data:`RESUME_MAY_CHANGE` must be what it was.

    Raises:
        FileNotFoundError: there is no checkpoint.
        ValueError: the file is damaged or of another format, or an option differs (the
            message names the option, the checkpoint's value and this run's).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
    try:
        state = read_checked(path, device)
    except ValueError as err:
        raise ValueError(f"--resume: {err}") from None
    saved = state["config"]
    for key in sorted(set(saved) | set(config)):
        if key not in RESUME_MAY_CHANGE and saved.get(key) != config.get(key):
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--resume: the checkpoint was written with {flag} {saved.get(key)!r}, this run has "
                             f"{config.get(key)!r}; only "
                             f"{', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE[1:])} may change "
                             f"on resume")
    return state


def restore(state: dict, model, head, method, optimizer, scheduler, loader_generator: torch.Generator) -> Progress:
    """Load a checkpoint's module, optimiser and random states; returns its progress."""
    model.load_state_dict(state["model"])
    head.load_state_dict(state["head"])
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], loader_generator)
    return Progress(epoch=state["epoch"], best_val=state["best_val"], best_epoch=state["best_epoch"],
                    history=state["history"], pretrain_done=state["pretrain_done"],
                    train_seconds=state["train_seconds"])
