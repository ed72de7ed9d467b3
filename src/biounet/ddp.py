"""torchrun: the one place a process joins its process group and picks its GPU.

Training (:mod:`biounet.train`, gradients shared by DistributedDataParallel) and
``biounet predict`` (each rank predicts every world-th file) both start here, so
the backend choice and the environment variables torchrun sets are read once.
"""
from __future__ import annotations

import os


def join() -> tuple[int, int, int]:
    """(rank, world size, processes on this machine) under torchrun, joining its process group on the
    first call (NCCL on a GPU, gloo on CPUs); (0, 1, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_WORLD_SIZE", world))


def local_rank(rank: int) -> int:
    """This process's index on its machine (``LOCAL_RANK``; the global rank when torchrun did not say):
    the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", rank))
