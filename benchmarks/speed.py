"""Speed, all in one run on this machine: the same network (shipped `dsb2018-nuclei`) and the same image.

    .venv/bin/python benchmarks/speed.py                         # 2048x2048, needs `pip install monai` for its row
    .venv/bin/python benchmarks/speed.py --size 1024 --repeats 1 # quicker

Inference rows, each the best of --repeats runs after a warm-up: the plain path (eager NCHW,
batch norm separate, whole image: biounet's default before the fast path), the fast path (batch
norm folded, channels-last), which is biounet's default `predict` (whole image up to 2048x2048),
the fast path in tiles of 512 with its default overlap (a third of the receptive field; what larger
images get), ONNX Runtime, and MONAI's `sliding_window_inference` (roi 256, overlap 0.25, gaussian, batch 8) on the plain module.
Every row reports its largest difference from the plain untiled probabilities. Training rows:
images/s of one optimiser step (batch 4, 256x256) NCHW and channels-last, and of the patch loader.
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
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


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


def monai_row(seg, image: np.ndarray, repeats: int):
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

    return best_time(run, repeats)


def training_rows(repeats: int) -> dict[str, float]:
    """Images/s of one training step (batch 4 of 256x256) NCHW vs channels-last, and of the patch loader."""
    from biounet.losses import get_loss
    from biounet.models.unet import build_model
    from biounet.tasks import load_config

    cfg = load_config(ROOT / "configs/dsb2018.toml")
    loss_fn = get_loss(cfg.train.loss, cfg.model.out_channels)
    rows = {}
    for name, cl in (("training step, NCHW (before)", False), ("training step, channels-last (now)", True)):
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        x = torch.randn(4, 1, 256, 256)
        y = torch.randint(0, 3, (4, 256, 256))
        if cl:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            loss = loss_fn(model(x).float(), y, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds, _ = best_time(step, max(3, repeats))
        rows[name] = 4 / seconds
    rows.update(loader_rows(cfg))
    return rows


def loader_rows(cfg) -> dict[str, float]:
    """Augmented patches/s from DSB images already decoded (the loader's steady state), if the data is here."""
    zip_path = ROOT.parent / "shared/data/dsb2018/stage1_train.zip"
    if not zip_path.is_file():
        return {}
    from biounet.data.dataset import PatchDataset, items_from_config
    from biounet.tasks import apply_overrides, get_task

    cfg = apply_overrides(cfg, [f"data.images={zip_path}"])
    ds = PatchDataset(items_from_config(cfg.data)[:20], get_task(cfg))
    for i in range(20):
        ds.load(i)  # decode once, as the cache does in training
    t0 = time.perf_counter()
    for i in range(40):
        ds[i]
    return {"patch loader (augmentation + target, decoded images)": 40 / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = one per core available")
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from _report import markdown_table
    from biounet.predict import load_model, onnxruntime_available

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    seg = load_model("dsb2018-nuclei")
    image = test_image(args.size)
    mpx = args.size**2 / 1e6
    fpp = conv_flops_per_pixel(seg.module, seg.config.model.in_channels)
    peak = peak_gflops(args.repeats)

    tiled = seg.uses_tiles(image.shape[:2])
    where = "auto tiles" if tiled else "whole image"
    cases = {  # tile=size: one tile covering the image, which equals the whole-image pass
        "plain: eager NCHW, whole image (biounet's default before)": seg.with_options(fast=False, tile=args.size),
        f"biounet default: fast path, {where}": seg,
        "fast path, tiles of 512 (as images above 2048x2048 get)": seg.with_options(tile=512),
    }
    if onnxruntime_available():
        cases[f"ONNX Runtime, {where}"] = seg.with_options(backend="onnxruntime")
    results = {name: best_time(lambda s=s: s.predict(image), args.repeats) for name, s in cases.items()}
    monai = monai_row(seg, image, args.repeats)
    if monai is not None:
        results["MONAI sliding_window_inference (roi 256, overlap 0.25, gaussian, batch 8)"] = monai
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
    if not args.no_training:
        train = training_rows(args.repeats)
        before = train["training step, NCHW (before)"]
        print("\n" + markdown_table(["training", "images/s", "vs NCHW"],
                                    [[k, v, v / before] for k, v in train.items()]))
        report["training"] = train
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
