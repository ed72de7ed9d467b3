"""One huge image end to end (issue #50): wall time, peak memory per process, Mpx/s.

A nuclei mosaic (the shipped DSB samples tiled, each tile flipped/rotated differently) of ``--side`` px is
written as a compressed tiled OME-TIFF and as OME-Zarr, then segmented into OME-Zarr labels by
``biounet predict`` in a subprocess: 1 process (streaming), ``--workers 2`` (a local Dask cluster) and,
for the TIFF, the same through ``--workers 1`` (the block path in one process). Peak memory is the
largest resident set of any process of the run (the CLI, or a Dask worker: ``RUSAGE_CHILDREN`` after the
run is reaped), so "per worker" for the Dask rows. Labels of every row are compared (up to renumbering)
with the first row's.

    python benchmarks/big.py --side 16384 --model dsb2018-nuclei --json benchmarks/results-big.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mosaic(side: int) -> np.ndarray:
    """A (side, side) uint8 nuclei mosaic from the shipped fluorescence samples' gray values."""
    from biounet.io import read_image

    tiles = []
    for p in sorted((ROOT / "src/biounet/samples/dsb2018").glob("*.png")):
        img = read_image(p)
        gray = img if img.ndim == 2 else img[..., :3].mean(-1)
        if gray.mean() < 100:  # fluorescence: bright nuclei on dark
            tiles.append(gray.astype(np.uint8))
    out = np.zeros((side, side), np.uint8)
    k = 0
    for y in range(0, side, 256):
        for x in range(0, side, 256):
            t = np.rot90(tiles[k % len(tiles)], k % 4)[:256, :256]
            out[y:y + t.shape[0], x:x + t.shape[1]][: min(256, side - y), : min(256, side - x)] = \
                t[: min(256, side - y), : min(256, side - x)]
            k += 1
    return out


def write_inputs(img: np.ndarray, folder: Path) -> dict[str, Path]:
    import tifffile

    tif = folder / "mosaic.ome.tif"
    tifffile.imwrite(tif, img, tile=(512, 512), compression="zlib", metadata={"axes": "YX"}, ome=True)
    from biounet.formats import _zarr  # noqa: F401  (zarr present)
    import zarr

    store = folder / "mosaic.ome.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=img.shape, chunks=(1024, 1024), dtype=img.dtype)
    for y in range(0, img.shape[0], 4096):
        arr[y:y + 4096] = img[y:y + 4096]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}]
    return {"tiff": tif, "zarr": store}


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak resident MB of any process of the run, output tail)."""
    # a fresh wrapper per run, so its RUSAGE_CHILDREN (the largest resident set of any reaped descendant:
    # the CLI or a Dask worker) is this run's alone
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "biounet.cli", *args],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"biounet {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    peak_kb = int(res.stdout.rsplit("PEAK_KB", 1)[1].split()[0])
    return seconds, peak_kb / 1024, (res.stdout + res.stderr)[-400:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=16384)
    ap.add_argument("--model", default="dsb2018-nuclei")
    ap.add_argument("--rows", default="tiff-1,tiff-w1,tiff-w2,zarr-1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows, labels = [], {}
    with tempfile.TemporaryDirectory(prefix="biounet-big-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        inputs = write_inputs(mosaic(args.side), tmp)
        print(f"inputs written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for row in args.rows.split(","):
            src, how = row.split("-")
            out = tmp / f"out-{row}"
            extra = [] if how == "1" else ["--workers", how[1:]]
            cmd = ["predict", "--model", args.model, "--out", str(out), "--out-format", "ome-zarr", "--threads", "0",
                   *extra, str(inputs[src])]
            seconds, peak_mb, tail = run(cmd)
            from biounet.ngff import read_labels

            store = next(out.glob("*.zarr")) if src == "tiff" else inputs[src]
            lab = read_labels(store)
            labels[row] = lab
            mpx = args.side * args.side / 1e6
            rows.append({"row": row, "input": src, "processes": how, "seconds": round(seconds, 1),
                         "peak_mb": round(peak_mb), "mpx_per_s": round(mpx / seconds, 3),
                         "objects": int(len(np.unique(lab)) - 1)})
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            if args.json:  # after every row: a long run that is stopped keeps what it measured
                args.json.write_text(json.dumps({**provenance(sys.argv, vars(args)), "side": args.side, "rows": rows,
                                                 "cpus": len(os.sched_getaffinity(0))}, indent=1) + "\n")
    first = next(iter(labels))
    c = slice(max(0, args.side // 2 - 2048), args.side // 2 + 2048)  # a central 4096^2 window, across block seams
    for r in rows:  # same up to renumbering: the pairs of ids that overlap form a one-to-one map
        a, b = np.asarray(labels[first][c, c]), np.asarray(labels[r["row"]][c, c])
        pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
        r["same_as_first"] = bool((pairs[0] > 0).sum() == len(np.unique(pairs[0][pairs[0] > 0]))
                                  == len(np.unique(pairs[1][pairs[1] > 0])) and ((pairs[0] > 0) == (pairs[1] > 0)).all())
    print(markdown_table(["row", "input", "processes", "seconds", "peak MB", "Mpx/s", "objects", "labels = first row"],
                         [[r["row"], r["input"], r["processes"], r["seconds"], r["peak_mb"], r["mpx_per_s"],
                           r["objects"], r["same_as_first"]] for r in rows]))
    if args.json:
        args.json.write_text(json.dumps({**provenance(sys.argv, vars(args)), "side": args.side, "rows": rows,
                                         "cpus": len(os.sched_getaffinity(0))}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
