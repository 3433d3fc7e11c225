"""``checkpoint.pt`` and ``best.pt``: what ``--resume`` continues from, written atomically
(temporary file, then ``os.replace``) so a kill during a save leaves the previous file."""
from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import List

import numpy as np
import torch

from ..atomic import atomic_torch_save

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# 2: methods built from typed options; every learned noise scale stored as log sigma.
FORMAT = 2
# Options that must match between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("dataset", "method", "seed", "epochs", "batch_size", "lr", "csv", "target", "cap", "world_size")


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


def save_checkpoint(path: str, config: dict, progress: Progress, model, head, method, optimizer, scheduler,
                    loader_generator: torch.Generator) -> None:
    atomic_torch_save({
        "format": FORMAT, "config": config, "model": model.state_dict(), "head": head.state_dict(),
        "method": method.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": rng_state(loader_generator), **asdict(progress),
    }, path)


def save_best(path: str, epoch: int, model, head, method) -> None:
    atomic_torch_save({"format": FORMAT, "model": model.state_dict(), "head": head.state_dict(),
                       "method": method.state_dict(), "epoch": epoch}, path)


def load_for_resume(path: str, config: dict, device) -> dict:
    """The checkpoint at ``path``, after checking that this run may continue it.

    Raises:
        FileNotFoundError: there is no checkpoint.
        ValueError: it was written by an older layout, or with a different value of one of
            :data:`RESUME_MUST_MATCH` (the message names the option, old and new value).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format", 1) if isinstance(state, dict) else "unknown"
        raise ValueError(f"--resume: {path} was written by an earlier irda-train (checkpoint format {found}, this "
                         f"version reads {FORMAT}); start a new run in another --out, or resume with the version "
                         f"that wrote it")
    for key in RESUME_MUST_MATCH:
        if state["config"].get(key) != config.get(key):
            raise ValueError(f"--resume: the checkpoint was written with --{key.replace('_', '-')} "
                             f"{state['config'].get(key)!r}, this run has {config.get(key)!r}")
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
