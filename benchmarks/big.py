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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def same_up_to_renumbering(a: Any, b: Any, strip: int = 2048) -> bool:
    """Whether two (H, W) label arrays (zarr, read a strip of rows at a time) hold the same objects: the
    pairs of ids that overlap anywhere form a one-to-one map, 0 onto 0 only."""
    keys = []
    for y in range(0, a.shape[0], strip):
        sa, sb = np.asarray(a[y:y + strip]).astype(np.int64), np.asarray(b[y:y + strip]).astype(np.int64)
        if not np.array_equal(sa > 0, sb > 0):
            return False
        fg = sa > 0
        keys.append(np.unique((sa[fg] << 32) | sb[fg]))  # each overlapping pair of ids as one number
    pairs = np.unique(np.concatenate(keys))
    return len(np.unique(pairs >> 32)) == len(np.unique(pairs & 0xFFFFFFFF)) == len(pairs)


def seam_contacts(labels: Any, lines: list[int], strip: int = 2048) -> float:
    """Mean number of distinct pairs of different objects that touch across each of ``lines`` (rows and the
    same columns): an object cut in two at a line adds a pair there."""
    counts = []
    h, w = labels.shape
    for y in lines:  # across the row boundary between y - 1 and y
        a, b = np.asarray(labels[y - 1]).astype(np.int64), np.asarray(labels[y]).astype(np.int64)
        m = (a > 0) & (b > 0) & (a != b)
        counts.append(len(set(zip(a[m].tolist(), b[m].tolist()))))
    for x in lines:
        pairs = set()
        for y in range(0, h, strip):
            col = np.asarray(labels[y:y + strip, x - 1:x + 1]).astype(np.int64)
            m = (col[:, 0] > 0) & (col[:, 1] > 0) & (col[:, 0] != col[:, 1])
            pairs.update(zip(col[m, 0].tolist(), col[m, 1].tolist()))
        counts.append(len(pairs))
    return round(float(np.mean(counts)), 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=16384)
    ap.add_argument("--model", default="dsb2018-nuclei")
    ap.add_argument("--rows", default="tiff-1,tiff-w1,tiff-w2,zarr-1")
    ap.add_argument("--work", type=Path, help="keep inputs and outputs here (default: a temporary folder); with "
                    "--json, rows that file already holds and whose output is here are not run again")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if sum(r.startswith("zarr-") for r in args.rows.split(",")) > 1:
        ap.error("one zarr row at most: each writes its labels into the input store, over the last one's")
    from biounet.ngff import open_labels
    from biounet.postprocess import blockwise_layout

    done = {}
    if args.work and args.json and args.json.exists():
        old = json.loads(args.json.read_text())
        if old.get("side") == args.side:
            done = {r["row"]: {**r, "commit": r.get("commit", old["commit"])} for r in old["rows"]}
    rows, labels = [], {}
    with tempfile.TemporaryDirectory(prefix="biounet-big-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        kept = {"tiff": work / "mosaic.ome.tif", "zarr": work / "mosaic.ome.zarr"}
        if args.work and kept["tiff"].exists() and (kept["zarr"] / "0").exists() and \
                open_labels_shape(kept["zarr"]) == (args.side, args.side):
            inputs = kept  # made by mosaic() at this side: the same image
        else:
            inputs = write_inputs(mosaic(args.side), work)
            print(f"inputs written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for row in args.rows.split(","):
            src, how = row.split("-")
            out = work / f"out-{row}"
            store = (out / "mosaic.ome.zarr") if src == "tiff" else inputs[src]
            if row in done and (store / "labels" if src == "zarr" else store).exists():
                rows.append(done[row])
                labels[row] = open_labels(store)
                print(f"  {row}: measured before, at {done[row]['commit'][:7]}", file=sys.stderr, flush=True)
                continue
            shutil.rmtree(out, ignore_errors=True)  # what a stopped run left
            if src == "zarr":
                shutil.rmtree(store / "labels", ignore_errors=True)
            extra = [] if how == "1" else ["--workers", how[1:]]
            cmd = ["predict", "--model", args.model, "--out", str(out), "--out-format", "ome-zarr", "--threads", "0",
                   *extra, str(inputs[src])]
            seconds, peak_mb, tail = run(cmd)
            labels[row] = open_labels(store)
            mpx = args.side * args.side / 1e6
            rows.append({"row": row, "input": src, "processes": how, "seconds": round(seconds, 1),
                         "peak_mb": round(peak_mb), "mpx_per_s": round(mpx / seconds, 3),
                         "objects": count_objects(labels[row]), "commit": provenance(sys.argv, {})["commit"]})
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            save(args, rows, {})  # after every row: a long run that is stopped keeps what it measured
        first = next(iter(labels))
        block = blockwise_layout(0)[0]  # the blocks the runs used (the shipped model's nuclei are under 32 px)
        seams = [y for y in range(block, args.side, block)]
        tile_lines = [y for y in range(256, args.side, 256) if y % block]  # mosaic tile borders inside blocks
        for r in rows:
            r["same_as_first"] = same_up_to_renumbering(labels[first], labels[r["row"]])
            r["contacts_per_block_seam"] = seam_contacts(labels[r["row"]], seams)
            r["contacts_per_tile_line"] = seam_contacts(labels[r["row"]], tile_lines)
            print(f"  {r['row']}: {r}", file=sys.stderr, flush=True)
    print(markdown_table(["row", "input", "processes", "seconds", "peak MB", "Mpx/s", "objects", "labels = first row",
                          "contacts per block seam", "per tile line"],
                         [[r["row"], r["input"], r["processes"], r["seconds"], r["peak_mb"], r["mpx_per_s"],
                           r["objects"], r["same_as_first"], r["contacts_per_block_seam"],
                           r["contacts_per_tile_line"]] for r in rows]))
    save(args, rows, {"block": block, "compared_with": first,
                      "seam_check": "contacts = pairs of different objects touching across a line; an object cut "
                                    "at block seams would raise the seam count above the tile-line count"})
    return 0


def open_labels_shape(store: Path) -> tuple[int, ...]:
    """The shape of an OME-Zarr image's full-resolution array (the mosaic kept in a --work folder)."""
    import zarr

    return tuple(zarr.open_array(str(store / "0"), mode="r").shape)


def count_objects(labels: Any, strip: int = 2048) -> int:
    """Distinct nonzero ids of a zarr label array, read a strip at a time."""
    ids: set[int] = set()
    for y in range(0, labels.shape[0], strip):
        ids.update(np.unique(np.asarray(labels[y:y + strip])).tolist())
    return len(ids - {0})


def save(args: argparse.Namespace, rows: list[dict], extra: dict) -> None:
    if args.json:
        args.json.write_text(json.dumps({**provenance(sys.argv, vars(args)), "side": args.side, "rows": rows,
                                         "cpus": len(os.sched_getaffinity(0)), **extra}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
