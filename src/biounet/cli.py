"""Command line: parse, build a config, call one library function.

Heavy imports (torch, scikit-image) happen inside the commands so that
``biounet --help`` starts fast. User-input problems (:class:`InputError`, or an
``OSError`` naming a file) are printed as one line and exit with status 2: every
command is registered through :func:`command`, which does that for the whole
command, so commands call the library directly.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="U-Net segmentation for microscopy and EM images: predict, train, evaluate, submit.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"biounet {__version__}")
        raise typer.Exit()


_DEBUG = {"on": False}  # --debug: errors keep their traceback


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback behind an error message."),
) -> None:
    """U-Net segmentation for microscopy and EM images: predict, train, evaluate, submit."""
    _DEBUG["on"] = debug


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _user_error(exc: BaseException) -> Optional[str]:
    """The one line a user-input error prints, or None for anything else (a bug keeps its traceback)."""
    from .io import InputError

    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:  # missing, a folder, unwritable, disk full
        return f"{exc.filename}: {exc.strerror}"
    return None


def command(name: Optional[str] = None):
    """``@app.command()`` whose user-input errors, wherever in the command they arise, end it with one
    line and exit status 2 (``--debug``: the traceback instead)."""

    def register(fn):
        @functools.wraps(fn)  # typer reads the options from the wrapped function's signature
        def handled(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (re-raised unless it is a user-input error)
                message = _user_error(exc)
                if message is None or _DEBUG["on"]:
                    raise
                _fail(message)

        return app.command(name)(handled)

    return register


@command()
def models() -> None:
    """List the models shipped with biounet, with their validation scores."""
    from .checkpoint import load_config, read_metrics, shipped_models
    from .tasks import get_task

    found = shipped_models()
    if not found:
        typer.echo("no shipped models")
    for name, folder in found.items():
        task = get_task(load_config(folder))
        m = read_metrics(folder)
        tuned = "tuned_" if any(f"tuned_{k}" in m for k in task.headline) else ""  # older runs: plain scores
        parts = _score_parts(m, task, [(tuned, "validation, tuned thresholds" if tuned else "validation"),
                                       ("holdout_", "held-out (nothing picked on it)")])
        # tune.finish scores every image at its own size; predict's --diameter auto may resize some
        sized = " (scored at each image's own size, --diameter none)" if parts and m.get("object_diameter") else ""
        typer.echo(f"{name:24s} {task.name:9s} {'; '.join(parts) or 'validation: n/a'}{sized}")


# what a metrics.json key is, for a person: "dsb" -> "DSB"
_METRIC_NAMES = {"dsb": "DSB", "ap50": "AP50", "ap75": "AP75", "dice": "Dice", "iou": "IoU", "v_rand": "V-Rand",
                 "v_info": "V-Info", "pixel_error": "pixel error", "membrane_dice": "membrane Dice"}


def _scores(metrics: dict, headline: tuple[str, ...], prefix: str) -> str:
    """'DSB 0.581, AP50 0.781' from a metrics.json's ``prefix``-ed headline scores ('' if it has none)."""
    return ", ".join(f"{_METRIC_NAMES.get(k, k)} {metrics[prefix + k]:.3f}" for k in headline
                     if isinstance(metrics.get(prefix + k), float))


def _score_parts(metrics: dict, task, kinds: list[tuple[str, str]]) -> list[str]:
    """'validation, tuned thresholds: DSB 0.540, ...' per (key prefix, what those scores are) that ``metrics`` has:
    validation scores (picked the epoch, perhaps the thresholds) are never mixed up with held-out ones."""
    parts = [(label, _scores(metrics, task.headline, prefix)) for prefix, label in kinds]
    return [f"{label}: {scores}" for label, scores in parts if scores]


def _run_scores(metrics: dict, task) -> list[str]:
    """A finished training run's (or ensemble's) scores, each group named for what it is."""
    plain = ("validation, threshold tuned at each validation" if task.tune_each_validation
             else "validation at the config's thresholds")
    return _score_parts(metrics, task, [("", plain), ("tuned_", "validation, tuned thresholds"),
                                        ("holdout_", "held-out")])


def _nothing_found(metrics: dict, task) -> Optional[str]:
    """A warning when the run's final score is at its floor (Dice 0, DSB 0): the model finds nothing."""
    for prefix, label in (("tuned_", "validation"), ("", "validation"), ("holdout_", "held-out")):
        value = metrics.get(prefix + task.found)
        if isinstance(value, float):
            if value >= 0.01:
                return None
            return (f"warning: {label} {_METRIC_NAMES.get(task.found, task.found)} is {value:.3f}: the model predicts "
                    "nothing useful yet; train longer (more --epochs) or check the labels (biounet check-data)")
    return None


@command()
def predict(
    inputs: List[Path] = typer.Argument(..., help="Images, TIFF stacks, OME-Zarr stores (x.ome.zarr), CZI/ND2/LIF files "
                                                  "(pip install 'biounet\\[formats]'), or folders of them / DSB image folders."),
    model: str = typer.Option(..., "--model", "-m", help="Shipped model name or a model/run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <input stem>.tif per input (or a store x.ome.zarr "
                                                      "for one input: --out-format ome-zarr)."),
    out_format: str = typer.Option(
        "tif", "--out-format", help="tif, or ome-zarr: chunked OME-Zarr written block by block; an OME-Zarr input gets "
                                    "labels/<model> in its own store (napari, MoBIE show them over the image), other "
                                    "inputs (and probabilities) <stem>.ome.zarr in --out."),
    scene: Optional[int] = typer.Option(None, "--scene", min=0, help="Scene (series) of a multi-scene CZI/ND2/LIF, "
                                                                     "OME-Zarr (bioformats2raw) or OME-TIFF file."),
    time_point: Optional[int] = typer.Option(None, "--time", min=0, help="Time point of a time-lapse (0-based)."),
    z: Optional[int] = typer.Option(None, "--z", min=0, help="z-plane of a z-stack (0-based); OME-Zarr, CZI/ND2/LIF."),
    level: Optional[int] = typer.Option(None, "--level", min=0, help="Resolution level of a pyramid (0 = full "
                                                                     "resolution, the default); OME-Zarr, OME-TIFF."),
    workers: int = typer.Option(0, "--workers", min=0, help="Predict each image block by block in this many processes "
                                                            "(a local dask.distributed cluster; 1 = block by block here; "
                                                            "0 = as usual)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the blocks on a running dask.distributed "
                                            "cluster instead (its scheduler address, e.g. tcp://host:8786; a SLURM "
                                            "cluster through dask-jobqueue); its workers must reach the input files."),
    probabilities: bool = typer.Option(False, help="Write float32 probabilities instead of masks/labels."),
    overlays: bool = typer.Option(False, help="Also write <stem>_overlay.png (outlines over the image; "
                                  "for a stack, <stem>_overlay.tif, one page per page)."),
    measure: bool = typer.Option(
        False, help="Also write <stem>.csv: one row per object (position, area, shape, raw intensity); "
                    "instance labels only (a nuclei model, or --instances)."),
    outlines: Optional[str] = typer.Option(
        None, help="Also write each object's outline: imagej (<stem>_rois.zip for Fiji's ROI Manager) or "
                   "geojson (<stem>.geojson for QuPath); instance labels only."),
    pixel_size: Optional[float] = typer.Option(
        None, help="Micrometres per pixel (> 0): --measure's table also in um and um^2."),
    instances: bool = typer.Option(False, help="Instance labels even from a mask model (EM: one label per cell)."),
    channel: Optional[int] = typer.Option(
        None, "--channel", "-c", min=0,
        help="Segment this channel (0-based) of multi-channel TIFFs (ImageJ/OME C axis) or RGB images; "
             "required for TIFFs with several channels (default: the model's data.channel, if it was trained on one)."),
    tile: int = typer.Option(0, help="Overlap-tile size (0 = whole image up to about 1448x1448 (2.1 Mpx), tiles of 512 beyond)."),
    overlap: Optional[int] = typer.Option(None, help="Tile overlap in pixels (default: a third of the net's receptive field)."),
    tta: bool = typer.Option(False, help="Test-time augmentation: average the 8 flips/rotations."),
    diameter: str = typer.Option(
        "auto", help="Typical object diameter (px) in these images, rescaled to the model's training scale; "
                     "auto (default) estimates it per image (nuclei models), none keeps every image as it is."),
    batch_size: int = typer.Option(0, help="Tiles per forward pass (0 = 1 on CPU, 4 on GPU)."),
    device: str = typer.Option("auto", help="auto (a GPU when present, else cpu), cpu, cuda, cuda:1, ..."),
    overwrite: bool = typer.Option(False, help="Replace outputs that already exist (default: refuse)."),
    skip_existing: bool = typer.Option(False, help="Skip inputs whose output exists (resume a batch)."),
    fast: bool = typer.Option(True, help="Batch norm folded into the convolutions, channels-last layout."),
    backend: str = typer.Option("torch", help="torch, onnxruntime (pip install 'biounet\\[onnx]') or auto."),
    threads: int = typer.Option(0, help="CPU threads (0 = one per core available to this process)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network (slow first image)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Predict masks (semantic models) or instance labels (nuclei models) for images."""
    _setup_logging(verbose)
    import time

    started = time.perf_counter()
    from .big import check_out_format, check_zarr_outputs
    from .formats import PlanePick
    from .parallel import local_cluster
    from .predict import (OutputOptions, PredictOptions, check_device, check_outputs, expand_inputs, load_model,
                          parse_diameter)

    if outlines is not None and outlines not in ("imagej", "geojson"):
        _fail(f"--outlines must be imagej or geojson, got {outlines!r}")
    from . import ddp

    # under torchrun each rank predicts every world-th file and writes its own outputs atomically; gloo (CPU)
    # or NCCL (GPU) carries only the final counts
    rank, world, local_world = ddp.join()
    _set_threads(threads, share=local_world)
    files = expand_inputs([str(p) for p in inputs])
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and world > 1 and ":" not in device:
        device = f"cuda:{ddp.local_rank(rank)}"
    device = check_device(device)
    options = PredictOptions(tile=tile, overlap=overlap, tta=tta, batch_size=batch_size,
                             diameter=parse_diameter(diameter), progress=verbose or len(files) == 1, fast=fast,
                             backend=backend, compile=compile_)
    seg = load_model(model, device=device, options=options)
    if instances:
        seg = seg.with_post(mode="instances")
    if channel is None and seg.config.data.channel >= 0:  # the channel the model was trained on
        channel = seg.config.data.channel
    for flag, asked in (("--measure", measure), ("--outlines", outlines)):
        if asked and (probabilities or not seg.post.instances):
            _fail(f"{flag} needs instance labels: use a nuclei model or --instances, without --probabilities")
    if pixel_size is not None and not measure:
        _fail("--pixel-size calibrates --measure's table; add --measure")
    if pixel_size is not None and not pixel_size > 0:
        _fail(f"--pixel-size must be > 0 micrometres per pixel, got {pixel_size}")
    out_format = check_out_format(out_format, out)
    pick = PlanePick(scene=scene, time=time_point, z=z, level=level)
    made_out = not Path(out).exists()  # a folder this run creates is removed again if it stays empty
    if out_format == "ome-zarr":  # stores and labels groups, checked as check_outputs checks files
        todo = check_zarr_outputs(files, out, seg.name, probabilities, pick, overwrite, skip_existing)
    else:
        todo = check_outputs(files, out, overwrite, skip_existing)  # before any model runs
    if len(todo) < len(files):
        typer.echo(f"skipping {len(files) - len(todo)} image(s) whose output exists (--skip-existing)")
    mine = todo[rank::world]  # under torchrun each process takes every world-th file
    opts = OutputOptions(probabilities=probabilities, overlays=overlays, measure=measure, pixel_size=pixel_size,
                         outlines=outlines)
    failed: list[str] = []
    objects: list[int] = []  # per image, instance outputs only
    with contextlib.ExitStack() as run:
        # --workers N > 1: one local cluster for the whole run, every file's blocks go to it
        where = scheduler or (run.enter_context(local_cluster(workers)) if workers > 1 and mine else workers)
        _predict_files(seg, mine, out, opts, channel, pick, out_format, where, failed, objects, rank)
    done = len(mine) - len(failed)
    found = f", {sum(objects)} object(s)" if objects else ""
    took = f" in {time.perf_counter() - started:.1f} s"
    if world > 1:
        import torch.distributed as dist

        counts, failures = [0] * world, [None] * world
        dist.all_gather_object(counts, done)
        dist.all_gather_object(failures, failed)
        dist.destroy_process_group()
        failed = [f for part in failures for f in part]
        if rank == 0:
            typer.echo(f"{sum(counts)} image(s) -> {out}/{took} ({world} processes: {', '.join(map(str, counts))})")
    elif done or not failed:  # nothing written and something failed: the failure alone is the news
        typer.echo(f"{done} image(s) -> {out}/{took}{found}")
    if failed:
        if rank == 0:
            _echo_failures(failed, nothing_done=not done and world == 1)
        if made_out and rank == 0:
            _remove_if_empty(Path(out))
        raise typer.Exit(2)


def _echo_failures(failed: list[str], nothing_done: bool) -> None:
    """One line for a single file that failed when nothing else was written; else a count and a line each."""
    if nothing_done and len(failed) == 1:
        typer.echo(f"error: {failed[0]}", err=True)
        return
    typer.echo(f"error: {len(failed)} image(s) failed:", err=True)
    for line in failed:
        typer.echo(f"  {line}", err=True)


def _remove_if_empty(folder: Path) -> None:
    """Take back an output folder this run made when nothing was written into it."""
    with contextlib.suppress(OSError):
        folder.rmdir()  # only succeeds when empty


def _object_count(path: Path) -> Optional[int]:
    """Objects in a written instance-label TIFF, all pages together; None for masks and probabilities.

    Read back in bands of rows (a memory map where the file allows), so a whole-slide output is not
    loaded at once."""
    import numpy as np

    from .io import open_lazy, output_kind, read_stack

    if Path(path).is_dir():  # an OME-Zarr store or labels group (--out-format ome-zarr)
        from .big import count_objects

        return count_objects(path)
    if output_kind(path) != "labels":
        return None
    lazy = open_lazy(path)
    total = 0
    for page in [lazy] if lazy is not None else read_stack(path):
        ids: set[int] = set()
        for row in range(0, page.shape[0], 2048):
            ids.update(np.unique(page[row:row + 2048]).tolist())
        total += len(ids - {0})
    return total


def _set_threads(threads: int, share: int = 1) -> None:
    """torch's CPU threads: ``threads``, or the cores this process may use (cgroups, taskset) split ``share`` ways."""
    import torch

    if threads < 0:
        _fail(f"--threads must be >= 0, got {threads}")
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // share))


def _predict_files(seg, files: list[Path], out: Path, opts, channel: Optional[int], pick, out_format: str, workers,
                   failed: list[str], objects: list[int], rank: int) -> None:
    """predict's loop: each file in turn; a bad file is recorded in ``failed`` and the rest go on."""
    from tqdm.auto import tqdm

    from .io import InputError
    from .predict import predict_file

    # a bar on a terminal only (disable=None): redirected to a log, it would fill it
    for path in tqdm(files, desc="images", disable=True if len(files) < 2 or rank > 0 else None):
        try:
            written = predict_file(seg, path, out, opts, channel, pick=pick, out_format=out_format, workers=workers)
        except InputError as exc:  # one bad file does not stop the batch
            failed.append(str(exc))
            continue
        except OSError as exc:  # disk full, permissions: name the file, keep the rest going
            failed.append(f"{path}: {exc.strerror or exc}")
            continue
        for w in written:
            logging.getLogger("biounet").info("wrote %s", w)
        n = _object_count(written[0])
        if n is not None:
            objects.append(n)
            tqdm.write(f"{path.name}: {n} object(s) -> {written[0]}")


@command()
def export(
    model: str = typer.Option(..., "--model", "-m", help="Shipped model name or a model/run folder."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx, torchscript or bioimageio."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx / .pt); bioimageio: a folder or .zip."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Write the network as ONNX, TorchScript or a tested bioimage.io model package.

    ONNX and TorchScript: probabilities out, normalisation and head in the metadata (bioimageio: biounet\\[bioimageio])."""
    _setup_logging(False)
    from .export import export_model

    path = export_model(model, fmt, out, overwrite)
    typer.echo(f"{model} -> {path}")


@command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config (see configs/); not needed with --resume."),
    task: Optional[str] = typer.Option(None, help="Without --config: start from this task's defaults (binary, membrane, nuclei)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for weights, config, history."),
    data: Optional[str] = typer.Option(None, help="Override data.images (stack, folder, DSB folder or zip)."),
    labels: Optional[str] = typer.Option(None, help="Override data.labels."),
    epochs: Optional[int] = typer.Option(None, help="Override train.epochs."),
    seed: Optional[int] = typer.Option(None, help="Override train.seed."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last.pt."),
    overwrite: bool = typer.Option(False, help="Start again in an --out that already holds a run."),
    set_: List[str] = typer.Option([], "--set", help="Any override, e.g. --set train.lr=1e-4 (repeatable)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train a U-Net from a config file; the resolved config is saved in the run folder."""
    _setup_logging(True)
    from . import checkpoint
    from .tasks import apply_overrides, build_config, load_config

    if resume and not (out / checkpoint.CONFIG).exists():
        _fail(f"{out}: no run to resume here (no config.json); drop --resume to start one")
    if resume and not (out / checkpoint.STATE).is_file():
        _fail(f"{out}: no epoch of this run was saved, so there is nothing to resume; start it again without --resume")
    if resume:
        cfg = checkpoint.load_config(out)
    elif config is not None:
        cfg = load_config(config)
    elif task is not None:
        cfg = build_config({"task": task})
    else:
        _fail("give --config or --task (or --resume to continue the run in --out)")
    # a run stopped before its first epoch ended saved nothing (config.json alone): starting again is free
    saved = any((out / f).exists() for f in (checkpoint.STATE, checkpoint.WEIGHTS))
    if not resume and not overwrite and (out / checkpoint.CONFIG).exists() and saved:
        _fail(f"{out}: already holds a run; --resume continues it, --overwrite starts again")
    from .io import check_writable

    check_writable(out, folder=True)  # a read-only --out fails now, not after the data is read
    values: dict = {}  # what the flags set, typed as they are (a path "1e3" stays a path), applied after --set
    if data is not None:
        if not any(o.split("=", 1)[0].strip() == "data.kind" for o in set_):
            from .data.dataset import guess_kind

            kind = guess_kind(data, labels)
            if kind:
                values["data.kind"] = kind
        values["data.images"] = data
    if labels is not None:
        values["data.labels"] = labels
    if epochs is not None:
        values["train.epochs"] = epochs
    if seed is not None:
        values["train.seed"] = seed
    cfg = apply_overrides(cfg, list(set_), values)
    from .train import train as run_training

    try:
        result = run_training(cfg, out, resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        # last.pt is written atomically after every epoch, so the run resumes from the last whole one
        from .checkpoint import STATE, load_state

        state = out / STATE
        if not state.is_file():  # stopped before the first epoch was saved: nothing to resume
            typer.echo(f"\ninterrupted: no epoch was saved yet (no {out}/{STATE}), so there is nothing to resume; "
                       "run the same command again to start over (without --resume)", err=True)
            raise typer.Exit(130)
        done = load_state(state)["epoch"] + 1
        typer.echo(f"\ninterrupted: {out}/{STATE} holds epoch {done} of {cfg.train.epochs}; "
                   f"continue with: biounet train --out {out} --resume", err=True)
        raise typer.Exit(130)
    from .tasks import get_task

    task = get_task(cfg)
    scores = "; ".join(_run_scores(result or {}, task))
    typer.echo(f"done: {out}/" + (f"  {scores} (all scores: {out}/{checkpoint.METRICS})" if scores else ""))
    warning = _nothing_found(result or {}, task)
    if warning:
        typer.echo(warning, err=True)


@command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="Two or more finished run folders of one task, model shape and split, "
                                      "or of the folds of one cross-validation (data.folds; tuned out-of-fold); "
                                      "an ensemble folder or shipped model's name adds its networks."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder for the ensemble."),
    data: Optional[str] = typer.Option(None, help="Override data.images if the training data has moved."),
    overwrite: bool = typer.Option(False, help="Replace an ensemble already in --out."),
) -> None:
    """Average the probabilities of runs trained on the same split (or folds) into one model.

    Each network one vote; thresholds tuned on validation (a fold's images by its own runs); held-out scored once."""
    _setup_logging(True)
    if any(Path(r).resolve() == out.resolve() for r in runs):  # --overwrite must not destroy a member
        _fail(f"{out}: is one of the runs being averaged; write the ensemble to another --out")
    from . import checkpoint

    if not overwrite and (out / checkpoint.CONFIG).exists():
        _fail(f"{out}: already holds a model; --overwrite replaces it")
    from .tune import ensemble as make_ensemble

    result = make_ensemble(runs, out, data)
    typer.echo(f"done: {out}/  " + " ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float)))


@command()
def retune(
    model: str = typer.Argument(..., help="A finished run or model folder (or a shipped model's name)."),
    data: Optional[str] = typer.Option(None, help="Override data.images if the training data has moved."),
) -> None:
    """Tune post-processing again on the model's validation images and score its held-out ones.

    The task's current grid; both are stored beside the weights (thresholds.json, metrics.json)."""
    _setup_logging(True)
    from .tune import retune as run_retune

    result = run_retune(model, data)
    typer.echo(f"done: {model}  " + " ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float)))


@command()
def finetune(
    model: str = typer.Option("dsb2018-nuclei", "--model", "-m", help="Nuclei model to start from: a shipped "
                              "model's name or a model/run folder."),
    data: str = typer.Option(..., help="Labelled images: a folder holding images/ and masks/, an image folder "
                             "(with --labels), a DSB folder or zip, or a TIFF stack (with --labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (for predict --model, export)."),
    labels: Optional[str] = typer.Option(None, help="Mask folder or label stack for --data."),
    minutes: float = typer.Option(10.0, help="Wall time for the whole fine-tuning, scoring included."),
    overwrite: bool = typer.Option(False, help="Replace a model already in --out."),
    device: str = typer.Option("auto", help="auto (a GPU when present, else cpu), cpu, cuda, ..."),
    threads: int = typer.Option(0, help="CPU threads (0 = one per core available to this process)."),
    seed: int = typer.Option(0, help="Seeds the held-out draw and the patches."),
) -> None:
    """Fine-tune a nuclei model on a few labelled images (1-20); prints its scores before and after.

    From 3 images on, a fifth (at least one) is held out and scored; below, the training images are."""
    _setup_logging(True)
    from .finetune import finetune as run_finetune
    from .predict import check_device

    _set_threads(threads)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    result = run_finetune(model, data, out, labels=labels, minutes=minutes, overwrite=overwrite, seed=seed,
                          device=device)
    for line in result.lines():
        typer.echo(line)
    typer.echo(f"done: {out}/  (biounet predict --model {out} ...)")


def _check_suffix(path: Optional[Path], suffix: str, option: str) -> None:
    """Refuse a report path of another kind: a mistyped ``--json labels/a.tif`` would replace that image."""
    if path is not None and path.suffix.lower() != suffix:
        _fail(f"{path}: {option} writes a {suffix[1:].upper()} file; give a path ending in {suffix}")


@command()
def evaluate(
    truth: Path = typer.Option(..., help="Truth: label TIFF stack (ISBI), DSB folder/zip, folder of label "
                               "images, or one holding images/ + masks/."),
    pred: Path = typer.Option(..., help="Prediction: mask TIFF stack or folder of label images (<name>.tif)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores as JSON."),
    per_image: Optional[Path] = typer.Option(None, help="Per-image scores as CSV (instance evaluation)."),
    skip_missing: bool = typer.Option(False, help="Score only the truth images that have a prediction."),
    report: Optional[Path] = typer.Option(None, help="Also write one self-contained HTML page (scores, worst images)."),
    run: Optional[Path] = typer.Option(None, help="With --report: a training run folder whose curve to include."),
    groups: Optional[Path] = typer.Option(None, help="With --report: a CSV with columns image,group (e.g. "
                                          "configs/dsb2018-groups.csv); the report also scores each group."),
) -> None:
    """Score predictions against truth; needs no model (files in, numbers out)."""
    _setup_logging(False)
    for path, suffix, option in ((json_out, ".json", "--json"), (per_image, ".csv", "--per-image"),
                                 (report, ".html", "--report")):
        _check_suffix(path, suffix, option)
    from .io import check_writable

    for path in (json_out, per_image, report):  # before scoring: a read-only folder is one line, not a traceback
        if path is not None:
            check_writable(path)
    group_of = None
    if groups is not None:  # before scoring too: a mistyped groups file is one line
        from .data.dataset import read_groups

        group_of = read_groups(groups)
        if not report:
            typer.echo("warning: --groups only adds a table to the --report page; no --report given", err=True)
    from .evaluate import evaluate_paths, format_table

    summary, rows = evaluate_paths(truth, pred, skip_missing)
    typer.echo(format_table(summary))
    if summary.get("skipped_missing"):
        typer.echo(f"warning: {summary['skipped_missing']} truth image(s) had no prediction and were skipped",
                   err=True)
    if summary.get("unmatched_predictions"):
        typer.echo(f"warning: {summary['unmatched_predictions']} prediction(s) in {pred} have no truth image "
                   "and were not scored", err=True)
    from .checkpoint import CURVE, write_json

    if json_out:
        write_json(json_out, summary)
    if per_image and rows:
        from .evaluate import write_rows_csv

        write_rows_csv(per_image, rows)
    if report:
        from .evaluate import report_breakdowns, worst_pictures
        from .io import atomic_path
        from .report import render_report

        curve = run / CURVE if run else None
        shown, breakdowns = report_breakdowns(truth, rows, group_of) if rows else (rows, [])
        page = render_report(f"biounet evaluate: {pred} against {truth}", summary, shown,
                             worst_pictures(truth, pred, rows) if rows else [],
                             curve.read_bytes() if curve and curve.is_file() else None, breakdowns)
        with atomic_path(report) as tmp:
            tmp.write_text(page)
        typer.echo(f"report -> {report}")


@command("check-data")
def check_data(
    data: str = typer.Argument(..., help="Training data: DSB zip/folder, image folder, TIFF stack, COCO JSON."),
    labels: Optional[str] = typer.Option(None, help="Mask folder or label stack (for folders and stacks)."),
    kind: Optional[str] = typer.Option(None, help="data.kind, if it cannot be guessed (stack, folders, dsb, coco)."),
    channel: int = typer.Option(-1, help="data.channel: check channel k of multi-channel images (-1: as they are)."),
) -> None:
    """Check a training set: unreadable files, size mismatches, duplicates, empty masks; a summary per modality."""
    _setup_logging(False)
    from .config import DataConfig, from_dict
    from .data.check import check_data as check_all, format_report
    from .data.dataset import guess_kind

    kind = kind or guess_kind(data, labels)
    if kind is None:
        _fail(f"{data}: cannot tell what kind of data this is (a DSB zip or folder, a folder holding images/ and "
              "masks/, a COCO .json, or a TIFF stack with --labels); give --kind (and --labels)")
    cfg = from_dict(DataConfig, {"kind": kind, "images": data, "labels": labels or "", "channel": channel}, "data.")
    report = check_all(cfg)  # every problem listed, then a non-zero exit
    typer.echo(format_report(report))
    if not report.ok:
        raise typer.Exit(2)


@command()
def submit(
    labels: Path = typer.Argument(..., help="Folder of instance label images (<ImageId>.tif)."),
    out: Path = typer.Option(..., "--out", "-o", help="Submission CSV (ImageId,EncodedPixels)."),
) -> None:
    """Write a Kaggle DSB 2018 run-length-encoded submission from label images."""
    from .data.dsb import write_submission
    from .io import list_images, read_image

    _check_suffix(out, ".csv", "--out")
    files = [p for p in list_images(labels) if not p.stem.endswith("_overlay")]  # predict --overlays pictures
    if not files:
        _fail(f"{labels}: no label images (only *_overlay pictures)")
    rows = ((p.stem, read_image(p)) for p in files)
    write_submission(out, rows)
    typer.echo(f"{len(files)} images -> {out}")


@command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder."),
) -> None:
    """Run the shipped models on the sample images shipped with biounet; write masks + overlays (+ nucleus tables)."""
    _setup_logging(False)
    from .checkpoint import shipped_models
    from .predict import OutputOptions, load_model, predict_file

    samples = Path(__file__).parent / "samples"
    jobs = {"isbi2012-membrane": samples / "isbi2012", "dsb2018-nuclei": samples / "dsb2018"}
    shipped = shipped_models()
    from .io import check_writable

    check_writable(out, folder=True)
    pictures: list[Path] = []
    for name, folder in jobs.items():
        if name not in shipped or not folder.is_dir():
            typer.echo(f"skip {name}: not shipped in this build")
            continue
        seg = load_model(name)
        for path in sorted(folder.iterdir()):
            opts = OutputOptions(overlays=True, measure=seg.post.instances)  # nuclei: + a table
            written = predict_file(seg, path, out / name, opts)
            n = _object_count(written[0])
            found = f" ({n} object(s))" if n is not None else ""
            typer.echo(f"{name}: {path.name}{found} -> " + ", ".join(str(w) for w in written))
            pictures += [w for w in written if w.stem.endswith("_overlay")]
    if pictures:  # what a first-time user should look at
        typer.echo("open these to see the results (outlines drawn over the images):")
        for p in pictures:
            typer.echo(f"  {p}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
