"""Overlap-tile inference speed and memory: biounet.tiling vs MONAI sliding_window_inference.

    .venv/bin/python benchmarks/inference.py --sizes 2048 8192 [20000] [--json out.json]

Both engines run the same randomly initialised ``same`` U-Net (eval mode, under
``torch.inference_mode``) with the same tile, overlap, batch size, Gaussian
blending and torch threads, so they do the same network work: the comparison
is of the tiling machinery and where the image lives. MONAI's design keeps the
whole image, the output and a count map as in-memory tensors; biounet reads
the input from and writes the output to ``.npy`` memmaps from
``--memmap-from`` pixels up (in-memory arrays below).

Every case runs in a fresh subprocess so its peak memory is its own:
``peak RSS`` is the kernel's high-water mark (``VmHWM``; ``ru_maxrss`` would
inherit the driver's across exec) and includes file pages of memmaps that the
kernel keeps resident (reclaimable page cache); ``peak anon`` samples the
process's private memory (``RssAnon``) every 20 ms, which is what cannot be
reclaimed. Both include torch itself and the model (see the untiled row and
the ``baseline_anon_mb`` field of the JSON). Times exclude process start, model
construction and a warm-up batch; MONAI's time excludes loading the image into
memory (biounet's includes reading its memmap). At the smallest size (when at
most ``--check-max``) both outputs are compared with one untiled forward pass.
Needs ``pip install monai`` for the MONAI rows (skipped otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MONAI_NOTE = "MONAI holds input, output and count map in memory (12 bytes/pixel) and is run only up to --monai-max-size"


# ---- worker (one case, fresh process) ------------------------------------------
def proc_status() -> dict[str, int]:
    """VmHWM (peak RSS of this process image: unlike ru_maxrss it is not inherited
    across exec from the driver) and RssAnon, in kB."""
    with open("/proc/self/status") as fh:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh) if k in ("VmHWM", "RssAnon")}


class PeakSampler(threading.Thread):
    """Samples RssAnon every ``interval`` s; the kernel tracks the RSS peak itself (VmHWM)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_anon_kb, self.stopped = interval, 0, threading.Event()

    def sample(self) -> None:
        self.peak_anon_kb = max(self.peak_anon_kb, proc_status()["RssAnon"])

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            time.sleep(self.interval)


def build_net(spec: dict):
    import torch

    from biounet.config import ModelConfig
    from biounet.models.unet import UNet

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, out_channels=1, depth=spec["depth"], base_features=spec["base_features"])
    net = UNet(cfg).eval()
    if spec["channels_last"]:
        net = net.to(memory_format=torch.channels_last)

    def predict(x: torch.Tensor) -> torch.Tensor:
        if spec.get("identity"):
            return x
        if spec["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return net(x)

    return net, predict


def run_ours(spec: dict, predict) -> tuple[float, object]:
    from biounet.io import open_array
    from biounet.tiling import NetGeometry, TileConfig, predict_tiled

    size = spec["size"]
    cfg = TileConfig(tile=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch_size"], blend="gaussian")
    geo = NetGeometry(margin=0, align=2 ** spec["depth"])
    if spec["memmap"]:
        image = np.load(spec["input"], mmap_mode="r")
        out = open_array((1, size, size), np.float32, Path(spec["workdir"]) / "out_ours.npy")
    else:
        image, out = np.load(spec["input"]), None
    t0 = time.perf_counter()
    out = predict_tiled(predict, image, cfg, geo, out=out)
    if spec["memmap"]:
        out.flush()
    return time.perf_counter() - t0, out


def run_monai(spec: dict, predict) -> tuple[float, object]:
    import torch
    from monai.inferers import sliding_window_inference

    image = torch.from_numpy(np.load(spec["input"]))[None]  # (1, 1, H, W): MONAI wants it all in memory
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(
            image, (spec["tile"], spec["tile"]), spec["batch_size"], predict,
            overlap=spec["overlap"] / spec["tile"], mode="gaussian", sigma_scale=0.125,
        )
    return time.perf_counter() - t0, out[0].numpy()


def run_whole(spec: dict, predict) -> tuple[float, object]:
    """The untiled reference: one forward pass over the whole image."""
    import torch

    image = torch.from_numpy(np.load(spec["input"]))[None]
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = predict(image)
    return time.perf_counter() - t0, out[0].numpy()


ENGINES = {"ours": run_ours, "monai": run_monai, "whole": run_whole}


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    net, predict = build_net(spec)
    with torch.inference_mode():  # oneDNN builds kernels per shape on first call: warm up, untimed
        predict(torch.zeros(spec["batch_size"], 1, spec["tile"], spec["tile"]))
    sampler = PeakSampler()
    sampler.sample()
    base_mb = sampler.peak_anon_kb / 1024
    sampler.start()
    seconds, out = ENGINES[spec["engine"]](spec, predict)
    sampler.stopped.set()
    sampler.join()
    sampler.sample()
    if spec["save"]:
        np.save(Path(spec["workdir"]) / f"check_{spec['engine']}.npy", np.asarray(out))
    return {
        "seconds": seconds,
        "mpix_per_s": spec["size"] ** 2 / 1e6 / seconds,
        "peak_rss_mb": proc_status()["VmHWM"] / 1024,
        "peak_anon_mb": sampler.peak_anon_kb / 1024,
        "baseline_anon_mb": base_mb,
    }


# ---- driver ------------------------------------------------------------------------
def make_input(path: Path, size: int) -> None:
    """A float32 (1, size, size) .npy written in row bands, so the driver never holds it."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, size, size))
    rng = np.random.default_rng(size)
    for r in range(0, size, 1024):
        arr[0, r : r + 1024] = rng.random((min(1024, size - r), size), dtype=np.float32)
    arr.flush()
    del arr


def n_tiles(size: int, tile: int, overlap: int, align: int) -> int:
    from biounet.tiling import tile_starts

    step = (tile - overlap) // align * align
    return len(tile_starts(max(size, tile), tile, step)) ** 2


def run_case(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['engine']} at {spec['size']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    head = "| image | engine | storage | tiles | time (s) | MP/s | peak RSS (MB) | peak anon (MB) |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['size']}² | {r['engine']} | {r['storage']} | {r['tiles']} | {r['seconds']:.2f} | "
            f"{r['mpix_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} |"
        )
    return "\n".join(lines)


def run_size(args: argparse.Namespace, size: int, engines: list[str], tmp: Path) -> list[dict]:
    """All engines on one image size; at the smallest size also the untiled reference."""
    path = tmp / f"in_{size}.npy"
    make_input(path, size)
    check = size == min(args.sizes) and size <= args.check_max
    rows = []
    for engine in engines + (["whole"] if check else []):
        if engine == "monai" and size > args.monai_max_size:
            sys.stderr.write(f"skip MONAI at {size}²: {MONAI_NOTE}\n")
            continue
        memmap = engine == "ours" and size >= args.memmap_from
        spec = {
            "engine": engine, "size": size, "input": str(path), "workdir": str(tmp), "memmap": memmap,
            "save": check, "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
            "threads": args.threads, "base_features": args.base_features, "depth": args.depth,
            "channels_last": args.channels_last, "identity": args.identity,
        }
        res = run_case(spec)
        res.update(size=size, engine={"ours": "biounet", "monai": "MONAI", "whole": "untiled"}[engine],
                   storage="memmap" if memmap else "in memory",
                   tiles=1 if engine == "whole" else n_tiles(size, args.tile, args.overlap, 2**args.depth))
        rows.append(res)
        sys.stderr.write(f"{res['engine']} {size}²: {res['seconds']:.1f} s\n")
    path.unlink()
    return rows


def untiled_errors(tmp: Path) -> dict[str, float]:
    """max |tiled - untiled| / range(untiled) per engine, where the check ran."""
    if not (tmp / "check_whole.npy").exists():
        return {}
    ref = np.load(tmp / "check_whole.npy")
    found = {name: tmp / f"check_{key}.npy" for name, key in (("biounet", "ours"), ("MONAI", "monai"))}
    span = ref.max() - ref.min()
    return {name: float(np.abs(np.load(f) - ref).max() / span) for name, f in found.items() if f.exists()}


def receptive_field_of(args: argparse.Namespace) -> int:
    import torch

    from biounet.models.unet import receptive_field

    torch.set_num_threads(args.threads)
    net, _ = build_net(vars(args) | {"channels_last": False})
    return receptive_field(net, 1, size=128)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128, help="pixels; MONAI gets overlap/tile (0.25 = its default)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both engines; 1 because on a 2-core machine shared with training "
                        "runs, 2 OpenMP threads ran 4x slower (oversubscription)")
    p.add_argument("--base-features", type=int, default=8,
                   help="U-Net width; 8 keeps the default run ~3 min on one core (16 is ~3.7x slower per tile)")
    p.add_argument("--identity", action="store_true",
                   help="identity predictor instead of the U-Net: times the tiling machinery alone")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--engines", nargs="+", default=["ours", "monai"], choices=["ours", "monai"])
    p.add_argument("--monai-max-size", type=int, default=8192)
    p.add_argument("--memmap-from", type=int, default=4096, help="ours uses memmap input/output from this size")
    p.add_argument("--check-max", type=int, default=4096,
                   help="compare with an untiled forward pass at the smallest size if it is at most this")
    p.add_argument("--workdir", type=Path, default=None, help="for inputs/outputs (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(json.loads(args.worker))) + "\n")
        return
    engines = list(args.engines)
    if "monai" in engines:
        try:
            import monai  # noqa: F401
        except ImportError:
            sys.stderr.write("monai not installed: running biounet only (pip install monai)\n")
            engines.remove("monai")
    rf = None if args.identity else receptive_field_of(args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = [row for size in args.sizes for row in run_size(args, size, engines, Path(tmp))]
        errors = untiled_errors(Path(tmp))

    import torch

    env = {
        "model": "identity (tiling machinery only)" if args.identity else (
            f"same U-Net, base_features {args.base_features}, depth {args.depth}, in 1 out 1, random weights, "
            f"eval, {'channels_last' if args.channels_last else 'NCHW'}"
        ),
        "tiling": f"tile {args.tile}, overlap {args.overlap} px, batch {args.batch_size}, gaussian blend, "
                  f"torch threads {args.threads}",
        "receptive field (measured, px)": rf,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "versions": f"torch {torch.__version__}"
                    + (f", monai {__import__('monai').__version__}" if "monai" in engines else ""),
        f"max |tiled - untiled| / range at {min(args.sizes)}²": errors or "not checked",
    }
    print("\n".join(f"- {k}: {v}" for k, v in env.items()))
    print()
    print(markdown(rows))
    if any(s > args.monai_max_size for s in args.sizes) and "monai" in engines:
        print(f"\n{MONAI_NOTE}.")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
