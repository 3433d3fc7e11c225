"""Launching and data-parallel plumbing of ``irda-train`` under ``torchrun``.

:func:`init_from_env` (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) picks NCCL for CUDA devices and gloo otherwise;
:func:`wrap_model` (DDP), :func:`train_sampler` (``DistributedSampler``),
:func:`average_gradients` (for parameters outside the DDP module, such as the head and a
learned noise scale), :func:`sum_over_ranks`, :func:`is_main_process` and :func:`barrier`
complete the driver. The synchronisation of IRDA's statistics, which the library needs
whoever launches it, is :mod:`irda_ext.distributed`.

Every function is a no-op (or the single-process computation) when no process group with
more than one rank is initialised; only :func:`train_sampler` also serves a group of one.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import is_distributed, is_main_process, rank, world_size  # noqa: F401 (the driver's API)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def launched_by_torchrun() -> bool:
    """``RANK`` and ``WORLD_SIZE`` in the environment (``torchrun`` sets them, also for one
    process)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: Optional[str] = None) -> torch.device:
    """Initialise the default process group from ``torchrun``'s environment and return this
    rank's device.

    Outside ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) nothing is
    initialised and the device is ``device`` (default: cuda if available, else cpu). Under
    ``torchrun`` a CUDA device gets the index ``LOCAL_RANK`` (one GPU per process) and the
    NCCL backend; a CPU device gets gloo. ``torchrun --nproc_per_node=1`` makes a group of
    one: nothing is synchronised, but the data order is that of :func:`train_sampler`, the
    same as with more ranks. An already initialised group is kept.
    """
    try:
        wanted = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device torch knows ({err})") from None
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU here (torch.cuda.is_available() is False, "
                         f"torch {torch.__version__}); use --device cpu")
    if wanted.type == "cuda" and wanted.index is not None and wanted.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if not launched_by_torchrun():
        return wanted
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank if wanted.index is None else wanted.index)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return wanted


def destroy() -> None:
    """Tear the process group down (call at the end of a ``torchrun`` process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, sync_batchnorm: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` under a multi-rank group, else ``model`` itself.

    On CUDA, batch norm layers become ``SyncBatchNorm`` (``sync_batchnorm=True``), so their
    batch statistics also describe the whole batch; gloo/CPU has no SyncBatchNorm and keeps
    per-rank batch norm. Keep a reference to the unwrapped model for evaluation and
    checkpoints (``wrapped.module``)."""
    if not is_distributed():
        return model
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def train_sampler(dataset, seed: int, shuffle: bool = True, drop_last: bool = False):
    """A ``DistributedSampler`` over the training set when a process group is initialised
    (any size, so ``torchrun --nproc_per_node=1`` shuffles the same way), else None.

    Call ``sampler.set_epoch(epoch)`` before each epoch: the permutation depends only on
    ``seed + epoch`` (a resumed run continues exactly). The ranks' batches of step ``t``
    together are the step-``t`` batch of one rank with ``W`` times the batch size (up to
    the padding of the last batch to a multiple of ``W``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


@torch.no_grad()
def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over ranks, in one flat all-reduce per dtype.

    For parameters DDP does not own (the regression head, a learned noise scale): with a
    per-sample mean loss the averaged gradient is that of the whole ``W * n`` batch. A
    parameter without a gradient on every rank is skipped; ``None`` on some ranks only
    is an error of the caller (the ranks would disagree on the flat layout)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    scale = 1.0 / world_size()
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat.mul_(scale)
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def average_gradients_outside(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """:func:`average_gradients` of every parameter of ``optimizer`` that the DDP ``model``
    does not own (the head, the method's own parameters). Call between ``backward()`` and
    ``step()``; no-op on one rank."""
    if not is_distributed():
        return
    owned = {id(p) for p in model.parameters()} if isinstance(model, nn.parallel.DistributedDataParallel) else set()
    average_gradients([p for group in optimizer.param_groups for p in group["params"] if id(p) not in owned])


def sum_over_ranks(*values: float) -> Tuple[float, ...]:
    """Python numbers summed over ranks (an epoch's loss total and sample count)."""
    if not is_distributed():
        return tuple(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return tuple(t.tolist())
