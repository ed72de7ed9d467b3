"""Speed, all in one run on this machine: the same network (one of the shipped `dsb2018-nuclei`'s two) and the same image.

    .venv/bin/python benchmarks/speed.py                         # 2048x2048, needs `pip install monai` for its row
    .venv/bin/python benchmarks/speed.py --size 1024 --repeats 1 # quicker

Inference rows, each the best of --repeats runs after a warm-up, the rows timed in turns (round 1 of
every row, then round 2, ...) so that the machine's drift within the run hits them alike: the plain path (eager NCHW,
batch norm separate, whole image: biounet's default before the fast path), the fast path (batch
norm folded, channels-last), which is biounet's default `predict` (whole image up to about 1448x1448,
tiles of 512 with the default overlap beyond: a third of the receptive field), the fast path the other
way (whole or tiled) for comparison, ONNX Runtime both ways (its own automatic tiling starts at a larger
size), and MONAI's `sliding_window_inference` (roi 256, overlap 0.25, gaussian, batch 8) on the plain module.
Every row reports its largest difference from the plain untiled probabilities. Training rows, for
the recipe before issue #12 (NCHW, base width 24), each change alone and `configs/dsb2018.toml` as it is:
images/s of one optimiser step (batch 4, 256x256), and of steps fed by the real patch loader (what an
epoch runs; needs the DSB zip).
GFLOP/s is counted from the network's convolutions; the peak is a large channels-last 3x3
convolution timed in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeats: int) -> tuple[float, object]:
    """(best seconds of ``repeats`` calls after one warm-up, the last result)."""
    return best_times_interleaved({"": fn}, repeats)[""]


def best_times_interleaved(fns: dict[str, object], repeats: int) -> dict[str, tuple[float, object]]:
    """``best_time`` for several rows, taken in turns: warm-up of every row, then ``repeats`` rounds
    that each time every row once. On a shared machine whose speed drifts within a run, a slow spell
    then hits every row of a round instead of the rows that happened to run during it."""
    outs = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (min(times[name]), outs[name]) for name in fns}


def first_network(seg):
    """One network of a model: the rows compare ways of running a network (the shipped nuclei model averages two)."""
    import dataclasses

    if seg.config.model.members == 1:
        return seg
    model = dataclasses.replace(seg.config.model, members=1)
    return dataclasses.replace(seg, module=seg.module.members[0], config=dataclasses.replace(seg.config, model=model))


def conv_flops_per_pixel(module: torch.nn.Module, in_channels: int, side: int = 64) -> float:
    """Multiply-adds x 2 of every convolution for a side x side input, per input pixel."""
    flops = []

    def hook(m, args, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.ConvTranspose2d):
            flops.append(2 * m.in_channels * m.out_channels * k * args[0].shape[-2] * args[0].shape[-1])
        else:
            flops.append(2 * m.in_channels * m.out_channels * k * out.shape[-2] * out.shape[-1] // m.groups)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, in_channels, side, side))
    for h in handles:
        h.remove()
    return sum(flops) / side**2


def peak_gflops(repeats: int) -> float:
    """GFLOP/s of a 64 -> 64 channel 3x3 convolution on 256x256, channels-last (oneDNN's best case here)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds, _ = best_time(lambda: conv(x), max(3, repeats))
    return 2 * 64 * 64 * 9 * 4 * 256 * 256 / seconds / 1e9


def test_image(size: int) -> np.ndarray:
    """A shipped DSB sample tiled to size x size (real nuclei, so post-processing has work too)."""
    from biounet.io import read_image

    sample = read_image(sorted((ROOT / "src/biounet/samples/dsb2018").iterdir())[0])
    reps = (-(-size // sample.shape[0]), -(-size // sample.shape[1])) + (1,) * (sample.ndim - 2)
    return np.ascontiguousarray(np.tile(sample, reps)[:size, :size])


def monai_fn(seg, image: np.ndarray):
    """MONAI's sliding window on the plain module, as a call that returns the probabilities (None: no MONAI)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    x = torch.from_numpy(seg.prepare(image))[None]
    module = seg.module.eval()

    def run():
        with torch.inference_mode():
            y = sliding_window_inference(x, (256, 256), 8, lambda t: torch.softmax(module(t), 1),
                                         overlap=0.25, mode="gaussian")
        return y[0].numpy()

    return run


def tile_sweep(seg, repeats: int, sizes=(1024, 1448, 2048)) -> dict[int, dict]:
    """Seconds of ``predict`` per image side: one whole pass, and tiles of 1024 and 512 (default overlap)."""
    rows = {}
    for size in sizes:
        image = test_image(size)
        segs = {"whole": seg.with_options(tile=size)}
        segs.update({tile: seg.with_options(tile=tile) for tile in (1024, 512) if tile < size})
        timed = best_times_interleaved({k: (lambda s=s: s.predict(image)) for k, s in segs.items()}, repeats)
        rows[size] = {k: seconds for k, (seconds, _) in timed.items()}
    return rows


# The training recipe when issue #12 was filed: NCHW activations, base width 24.
BEFORE = ["train.channels_last=false", "model.base_features=24"]


def training_variants(cfg) -> dict[str, object]:
    """Configs to time: the recipe before #12, each change alone, the shipped config, and it with(out) a loader worker."""
    from biounet.tasks import apply_overrides

    now = f"now: configs/dsb2018.toml (channels-last, base width {cfg.model.base_features})"
    variants = {"before: NCHW, base width 24": apply_overrides(cfg, BEFORE),
                "channels-last, base width 24": apply_overrides(cfg, ["model.base_features=24"]),
                now: cfg}
    if cfg.model.base_features == 24:
        del variants["channels-last, base width 24"]
    other = 1 - min(cfg.data.num_workers, 1)  # the patch loader in a worker process, or not
    variants[f"the same with data.num_workers={other}"] = apply_overrides(cfg, [f"data.num_workers={other}"])
    return variants


def training_rows(repeats: int, batches: int) -> dict[str, dict[str, float]]:
    """Training images/s of each variant: one optimiser step alone, and steps fed by the patch loader.

    The second is what an epoch runs (``train.train_step`` on ``DataLoader`` batches of augmented DSB
    patches, the config's ``num_workers``), timed over ``batches`` batches after two warm-up batches; it
    needs the DSB zip beside the repository and is left out without it.
    """
    from biounet.tasks import load_config

    cfg = load_config(ROOT / "configs/dsb2018.toml")
    rows = {}
    for name, c in training_variants(cfg).items():
        rows[name] = {"step": step_rate(c, repeats)}
        epoch = epoch_rate(c, batches)
        if epoch is not None:
            rows[name]["epoch"] = epoch
    return rows


def _run_for(cfg, dataset=None):
    """The training ``Run`` that ``biounet train`` builds for ``cfg`` (on the CPU), without reading the config's data."""
    from biounet.train import build_run

    torch.manual_seed(0)
    run = build_run(cfg, dataset, torch.device("cpu"))
    run.model.train()
    return run


def step_rate(cfg, repeats: int) -> float:
    """Images/s of ``train.train_step`` on one fixed batch (no data loading)."""
    from biounet.train import train_step

    run = _run_for(cfg)
    b, s = cfg.train.batch_size, cfg.data.patch_size
    batch = {"image": torch.randn(b, cfg.model.in_channels, s, s),
             "target": torch.randint(0, cfg.model.out_channels, (b, s, s))}
    seconds, _ = best_time(lambda: train_step(run, batch), max(3, repeats))
    return b / seconds


def epoch_rate(cfg, batches: int) -> float | None:
    """Images/s of ``train_step`` fed by the real loader (augmentation, targets) on decoded DSB images."""
    zip_path = ROOT.parent / "shared/data/dsb2018/stage1_train.zip"
    if not zip_path.is_file():
        return None
    from biounet.data.dataset import PatchDataset, items_from_config
    from biounet.tasks import apply_overrides, get_task
    from biounet.train import train_step

    cfg = apply_overrides(cfg, [f"data.images={zip_path}",
                                f"data.patches_per_epoch={(batches + 2) * cfg.train.batch_size}"])
    ds = PatchDataset(items_from_config(cfg.data)[:40], get_task(cfg))
    for i in range(len(ds.items)):
        ds.load(i)  # decoded once, as the training cache does before the first epoch
    run = _run_for(cfg, ds)
    t0 = None
    for k, batch in enumerate(run.loader):
        if k == 2:  # two warm-up batches (worker start, oneDNN kernels)
            t0 = time.perf_counter()
        train_step(run, batch)
    return batches * cfg.train.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = one per core available")
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--batches", type=int, default=12, help="loader-fed training batches timed per variant")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tile-sweep", action="store_true",
                    help="also time whole-image passes against tiles of 1024 and 512 at 1024, 1448 and 2048 px "
                         "(where predict's automatic tiling starts)")
    args = ap.parse_args()

    from _report import markdown_table
    from biounet.predict import load_model, onnxruntime_available

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    seg = first_network(load_model("dsb2018-nuclei"))
    image = test_image(args.size)
    mpx = args.size**2 / 1e6
    fpp = conv_flops_per_pixel(seg.module, seg.config.model.in_channels)
    peak = peak_gflops(args.repeats)

    tiled = seg.uses_tiles(image.shape[:2])
    where = "auto tiles" if tiled else "whole image"
    cases = {  # tile=size: one tile covering the image, which equals the whole-image pass
        "plain: eager NCHW, whole image (biounet's default before)": seg.with_options(fast=False, tile=args.size),
        f"biounet default: fast path, {where}": seg,
    }
    if tiled:  # the other way, for comparison
        cases["fast path, whole image (what images up to 1448x1448 get)"] = seg.with_options(tile=args.size)
    else:
        cases["fast path, tiles of 512 (what larger images get)"] = seg.with_options(tile=512)
    if onnxruntime_available():  # its automatic tiling (predict.AUTO_TILE_PIXELS_ONNX), and the other way
        ort = seg.with_options(backend="onnxruntime")
        if ort.uses_tiles(image.shape[:2]):
            cases["ONNX Runtime, auto tiles"] = ort
            cases["ONNX Runtime, whole image"] = ort.with_options(tile=args.size)
        else:
            cases["ONNX Runtime, auto: whole image"] = ort
            cases["ONNX Runtime, tiles of 512"] = ort.with_options(tile=512)
    fns = {name: (lambda s=s: s.predict(image)) for name, s in cases.items()}
    monai = monai_fn(seg, image)
    if monai is not None:
        fns["MONAI sliding_window_inference (roi 256, overlap 0.25, gaussian, batch 8)"] = monai
    results = best_times_interleaved(fns, args.repeats)
    plain = "plain: eager NCHW, whole image (biounet's default before)"
    ref = results[plain][1]
    base = results.get("MONAI sliding_window_inference (roi 256, overlap 0.25, gaussian, batch 8)", results[plain])[0]
    rows = []
    for name, (seconds, probs) in results.items():
        rows.append([name, seconds, mpx / seconds, fpp * args.size**2 / seconds / 1e9,
                     fpp * args.size**2 / seconds / 1e9 / peak, base / seconds, float(np.abs(probs - ref).max())])
    print(f"{args.size}x{args.size} image, shipped dsb2018-nuclei ({fpp / 1e3:.0f} kFLOP per pixel), {threads} threads; "
          f"measured peak (64->64 3x3 conv, channels-last): {peak:.0f} GFLOP/s\n")
    print(markdown_table(["inference", "seconds", "Mpx/s", "GFLOP/s", "of peak", "speed-up vs MONAI",
                          "max |p - plain|"], rows))
    report = {"size": args.size, "threads": threads, "kflop_per_pixel": fpp / 1e3, "peak_gflops": peak,
              "inference": {r[0]: dict(zip(["seconds", "mpx_s", "gflops", "of_peak", "speedup_vs_monai",
                                            "max_diff"], r[1:])) for r in rows}}
    if args.tile_sweep:
        sweep = tile_sweep(seg, args.repeats)
        print("\n" + markdown_table(["image side", "whole image (s)", "tiles of 1024 (s)", "tiles of 512 (s)"],
                                    [[k] + [v.get(t, "") for t in ("whole", 1024, 512)] for k, v in sweep.items()]))
        report["tile_sweep"] = {str(k): {str(t): v for t, v in row.items()} for k, row in sweep.items()}
    if not args.no_training:
        train = training_rows(args.repeats, args.batches)
        first = next(iter(train.values()))
        cols = [k for k in ("step", "epoch") if k in first]
        print("\n" + markdown_table(
            ["training (batch 4 of 256x256)"] + [f"{c} images/s" for c in cols] + [f"{c} vs before" for c in cols],
            [[k] + [v[c] for c in cols] + [v[c] / first[c] for c in cols] for k, v in train.items()]))
        report["training"] = train
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
