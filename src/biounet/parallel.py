"""Block-wise prediction, in this process or on a local dask.distributed cluster (``predict --workers N``).

One implementation for both: the image is cut into the blocks of
:func:`biounet.postprocess.blockwise_layout`; :func:`block_result` predicts one block's window (the
block plus the labelling halo, plus half the network's receptive field of image context, so the
probabilities inside the window do not see the window's edge) and keeps the objects whose centroid lies
in the block's core (:func:`biounet.postprocess.keep_anchored`). Results are pasted in raster order
(:func:`biounet.postprocess.paste_labels`): ids are made globally unique, and an object crossing a block
border is pasted whole by the one block that owns its centroid, so no nucleus is cut or doubled at a
seam. With ``workers`` 1 the blocks run one after another here; with more, each runs in a worker
process of a ``LocalCluster``, which opens the image itself (from its path: nothing image-sized is sent),
and the result is the same, label for label.

Normalisation and the object size (``--diameter auto``) are decided once, on the whole image, before
any block runs, so every block is normalised and rescaled alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .io import InputError

log = logging.getLogger(__name__)

IN_FLIGHT = 3  # blocks queued per worker: results wait for their turn to be pasted, so memory stays bounded


@dataclass(frozen=True)
class BlockPlan:
    """What every block needs to know, decided once for the image (picklable: it travels to the workers)."""

    path: str
    channel: int | None
    pick: Any  # biounet.formats.PlanePick or None
    name: str
    mode: str  # "instances", "mask" or "probabilities"
    shape: tuple[int, int]
    block: int
    halo: int
    context: int  # image pixels of context around each window
    align: int  # window starts are multiples of this (the network's down-sampling)
    norm: tuple[Any, Any]  # the whole image's normalisation (offset, scale)
    scale: float  # resize factor before the network (1: none)
    threads: int = 1  # torch threads in each worker process

    def corners(self) -> list[tuple[int, int]]:
        h, w = self.shape
        return [(y, x) for y in range(0, h, self.block) for x in range(0, w, self.block)]


def open_plane(path: str | Path, channel: int | None = None, pick: Any = None) -> tuple[Any, Any]:
    """The one 2D plane ``predict`` segments in ``path``, opened to be read region by region where the format
    allows (OME-Zarr, TIFF, CZI/ND2/LIF), else in memory; and a function that closes it."""
    from .formats import open_source
    from .io import open_lazy, pick_channel, read_stack

    source = open_source(path, channel, pick, big_pixels=0)
    if source is not None:
        return source.plane, source.close
    lazy = open_lazy(path)
    if lazy is not None:
        return pick_channel(lazy, channel, str(path)), lambda: None
    stack = read_stack(path, channel)
    if len(stack) != 1:
        raise InputError(f"{path}: --workers segments one 2D image per file; this is a stack of {len(stack)} pages")
    return stack[0], lambda: None


# per process: the plane this worker has open, (key, plane, close); one cluster serves a run of many files, so
# a worker keeps only the file its blocks now come from and closes the one before
_OPENED: list = []


def _plane(plan: BlockPlan) -> Any:
    key = (plan.path, plan.channel, plan.pick)
    if not _OPENED or _OPENED[0] != key:
        import torch

        torch.set_num_threads(plan.threads)
        if _OPENED:
            _OPENED[2]()
            _OPENED.clear()
        _OPENED.extend((key, *open_plane(plan.path, plan.channel, plan.pick)))
    return _OPENED[1]


def block_result(seg: Any, plan: BlockPlan, y: int, x: int, raw: Any = None) -> tuple[tuple[int, int], np.ndarray]:
    """One block's share of the result and where it goes: ``(origin, array)``.

    Instances: the window's objects whose centroid lies in the core, numbered 1..n
    (:func:`biounet.postprocess.keep_anchored`); a mask or probabilities: the core's pixels. ``raw`` is
    the image plane (None: opened from ``plan.path`` in this process, once).
    """
    from .postprocess import keep_anchored

    raw = _plane(plan) if raw is None else raw
    h, w = plan.shape
    halo = plan.halo if plan.mode == "instances" else 0
    wy0, wx0 = max(0, y - halo), max(0, x - halo)
    wy1, wx1 = min(h, y + plan.block + halo), min(w, x + plan.block + halo)
    cy0 = max(0, (wy0 - plan.context) // plan.align * plan.align)
    cx0 = max(0, (wx0 - plan.context) // plan.align * plan.align)
    cy1, cx1 = min(h, wy1 + plan.context), min(w, wx1 + plan.context)
    view = seg.view(np.asarray(raw[cy0:cy1, cx0:cx1]), plan.name)
    view.offset, view.scale = plan.norm  # the whole image's normalisation, not this region's
    probs = np.asarray(seg._predict_at(view, plan.scale))[:, wy0 - cy0: wy1 - cy0, wx0 - cx0: wx1 - cx0]
    if plan.mode == "probabilities":
        return (wy0, wx0), probs
    seg_out = np.asarray(seg.segment_probs(probs, plan.scale))
    if plan.mode == "mask":
        return (wy0, wx0), seg_out
    core = (y - wy0, min(y + plan.block, h) - wy0, x - wx0, min(x + plan.block, w) - wx0)
    return (wy0, wx0), keep_anchored(seg_out, core)


def make_plan(seg: Any, raw: Any, path: str | Path, channel: int | None, pick: Any, mode: str,
              name: str) -> tuple[BlockPlan, Any]:
    """The :class:`BlockPlan` of an image (its normalisation and, with ``--diameter auto``, its object size
    estimated as the streamed path does) and that size estimate (None without one)."""
    from .postprocess import blockwise_layout

    view = seg.view(raw, name)
    size = None
    scale = seg.scale
    if seg.auto_size:
        from .size import estimate

        size, _ = estimate(view, seg.train_diameter, seg._predict_at, seg.segment_probs)
        scale = size.scale
        log.info("%s: estimated object diameter %.1f px (training %.1f px), resized x%.2f",
                 name, size.diameter, seg.train_diameter, scale)
    diameter = size.diameter if size is not None and size.diameter else seg.object_diameter
    block, halo = blockwise_layout(diameter if mode == "instances" else 0)
    geometry = seg.module.geometry
    context = math.ceil((geometry.margin + math.ceil(geometry.context / 2)) / scale)
    plan = BlockPlan(path=str(path), channel=channel, pick=pick, name=name, mode=mode,
                     shape=(int(raw.shape[0]), int(raw.shape[1])), block=block, halo=halo, context=context,
                     align=max(1, geometry.align), norm=(view.offset, view.scale), scale=scale)
    return plan, size


@dataclass(frozen=True)
class Scheduler:
    """A running dask.distributed cluster to send blocks to: its scheduler address and, for a local one,
    the torch threads each of its single-threaded worker processes may use (None: leave theirs)."""

    address: str
    threads: int | None = None
    workers: int | None = None  # how many, for a local one (None: ask the scheduler)


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Scheduler]:
    """A local cluster of ``workers`` processes for a whole run (started once, used by every file)."""
    try:
        from dask.distributed import LocalCluster
    except ImportError:
        raise InputError("--workers needs dask.distributed: pip install 'biounet[dask]'") from None
    quiet = logging.getLogger("distributed")  # its start and shutdown chatter (the scheduler runs in this process)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster:
            yield Scheduler(cluster.scheduler_address, threads=max(1, len(os.sched_getaffinity(0)) // workers),
                            workers=workers)
    finally:
        quiet.setLevel(level)


def _results(seg: Any, plan: BlockPlan, raw: Any, workers: int | str | Scheduler) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Every block's result, in raster order: computed here (``workers`` <= 1), on a local cluster of
    ``workers`` processes started for this image, on a :class:`Scheduler` (:func:`local_cluster`, started
    once for a run of many files), or on the running cluster whose scheduler address ``workers`` is (a
    string, ``predict --scheduler tcp://host:8786``: e.g. a SLURM cluster started with dask-jobqueue)."""
    corners = plan.corners()
    if isinstance(workers, str):
        workers = Scheduler(workers)
    if isinstance(workers, Scheduler):
        yield from _on_scheduler(seg, plan, corners, workers)
        return
    if workers <= 1:
        for y, x in corners:
            yield block_result(seg, plan, y, x, raw)
        return
    with local_cluster(workers) as cluster:
        yield from _on_scheduler(seg, plan, corners, cluster)


def _on_scheduler(seg: Any, plan: BlockPlan, corners: list, scheduler: Scheduler) -> Iterator:
    """Blocks on a running dask.distributed cluster: its workers must reach the image's path."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("--scheduler needs dask.distributed: pip install 'biounet[dask]'") from None
    local = scheduler.workers is not None
    quiet = logging.getLogger("distributed")  # a local cluster's chatter; a remote one's warnings are the user's
    level = quiet.level
    if local:
        quiet.setLevel(logging.ERROR)
    try:
        try:
            client = Client(scheduler.address, timeout=10)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler.address}: cannot connect ({exc})") from None
        if scheduler.threads:
            plan = dataclasses.replace(plan, threads=scheduler.threads)
        with client:
            n = scheduler.workers or max(1, len(client.nthreads()))
            # without the cached fast copy of the network: the workers build their own
            seg_future = client.scatter(dataclasses.replace(seg), broadcast=True)
            todo, running = deque(corners), deque()
            while todo or running:
                while todo and len(running) < IN_FLIGHT * n:
                    y, x = todo.popleft()
                    running.append(client.submit(block_result, seg_future, plan, y, x, pure=False))
                yield running.popleft().result()
    finally:
        quiet.setLevel(level)


def run_blocks(seg: Any, plan: BlockPlan, raw: Any, out: Any, workers: int | str | Scheduler = 1, progress: bool = False) -> Any:
    """Fill ``out`` ((H, W) labels or mask, (K, H, W) probabilities; zero-filled) block by block; returns it."""
    from tqdm.auto import tqdm

    from .postprocess import paste_labels

    next_id = 1
    results = _results(seg, plan, raw, workers)
    for (y0, x0), arr in tqdm(results, total=len(plan.corners()), unit="block", disable=None if progress else True,
                              leave=False):
        if plan.mode == "instances":
            next_id = paste_labels(out, arr, (y0, x0), next_id)
        else:
            out[..., y0: y0 + arr.shape[-2], x0: x0 + arr.shape[-1]] = arr
    return out
