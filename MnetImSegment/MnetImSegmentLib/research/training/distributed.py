"""Multi-GPU (or multi-process CPU) training with ``torchrun`` and DistributedDataParallel.

The same command trains on one device or many::

    mnetim train data/manifest.csv -o runs/a                                  # one process
    torchrun --nproc_per_node=4 -m MnetImSegmentLib.cli train data/manifest.csv -o runs/a

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` reads them. With a world of
one nothing distributed happens and training is exactly the single-process code path.

How the work is divided (see ``Trainer.run``):

* every rank builds the same model (same seed; DDP also broadcasts rank 0's weights) and keeps the
  same optimiser state, so the ranks stay identical after every all-reduced step;
* every rank reads all training scans and draws its own random windows, its generator seeded with
  ``seed + rank`` (rank 0 therefore draws exactly what a single-process run draws): the sampler is
  random with replacement, so seeding per rank is what a ``DistributedSampler`` would achieve;
* ``--batch-size`` is per process; an epoch of ``windows_per_epoch`` windows is shared, so each rank
  does ``windows_per_epoch // (batch_size * world_size)`` steps. The learning rate is not rescaled;
* rank 0 alone validates, picks the threshold, writes ``log.csv``/TensorBoard/checkpoints and the
  weights, and decides when to stop; the decision is broadcast so all ranks stop at the same epoch.

Backends: NCCL for CUDA devices (one GPU per process, ``cuda:LOCAL_RANK``), Gloo on CPU.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ...core.errors import MnetImError
from ...engine.device import resolve_device

# Rank 0 may validate, evaluate the test scans and write weights while the others wait; the waits
# must not trip the collective timeouts (NCCL's default is 10 minutes).
COLLECTIVE_TIMEOUT = _dt.timedelta(hours=2)
HANDOFF_TIMEOUT = _dt.timedelta(hours=24)


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) training job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: str = "cpu"
    backend: Optional[str] = None
    _handoff_group: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) as torchrun sets them; (1, 0, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise MnetImError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers ({exc}).") from None
    return world, rank, local


def is_main_process() -> bool:
    """True unless this process is a non-zero rank of a torchrun job (for printing results once)."""
    return env_world()[1] == 0


_CONTEXT: Optional[DistContext] = None


def setup(device: str = "auto") -> DistContext:
    """Join the torchrun job (once per process) and choose this rank's device.

    Args:
        device: 'auto', 'cpu' or 'cuda' as for ``mnetim train``; in a multi-process job CUDA means
            ``cuda:LOCAL_RANK``.

    Returns:
        The context; a world of one when not started by torchrun.

    Raises:
        MnetImError: CUDA requested for more processes than GPUs, or bad torchrun variables.
    """
    global _CONTEXT
    import torch


    resolved = resolve_device(device)
    world, rank, local = env_world()
    if world <= 1:
        return DistContext(device=resolved)
    if _CONTEXT is not None:
        return _CONTEXT
    import torch.distributed as dist

    if resolved.startswith("cuda"):
        n_gpu = torch.cuda.device_count()
        if local >= n_gpu:
            raise MnetImError(f"torchrun started process LOCAL_RANK={local} but only {n_gpu} CUDA GPU(s) are "
                              "visible; use --nproc_per_node <= the number of GPUs.")
        resolved = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        atexit.register(_cleanup)
    # A separate Gloo group with a long timeout for the end-of-run hand-off: NCCL's watchdog would
    # abort ranks that wait while rank 0 evaluates the test split and writes the weights.
    handoff = dist.new_group(backend="gloo", timeout=HANDOFF_TIMEOUT)
    _CONTEXT = DistContext(world_size=world, rank=rank, local_rank=local, device=resolved, backend=backend,
                           _handoff_group=handoff)
    return _CONTEXT


def _cleanup() -> None:
    global _CONTEXT
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def broadcast_object(ctx: DistContext, obj=None):
    """Rank 0's ``obj`` on every rank (identity in a one-process run)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistContext, obj) -> list:
    """``obj`` of every rank, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(ctx: DistContext, value: float) -> float:
    """The mean of a float over ranks (the epoch's training loss)."""
    if not ctx.distributed:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def handoff(ctx: DistContext, obj=None):
    """Wait for rank 0 (however long it takes) and return its ``obj`` on every rank.

    Used after rank-0-only work such as the test evaluation, export, or writing experiment files,
    over a Gloo group whose timeout is ``HANDOFF_TIMEOUT``.
    """
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=ctx._handoff_group)
    return box[0]
