"""ISBI 2012 membranes: V-Rand, V-Info, pixel error on the 5 validation slices, and training time.

    .venv/bin/python benchmarks/isbi2012.py                      # the shipped model
    .venv/bin/python benchmarks/isbi2012.py --model runs/isbi    # a run folder
    .venv/bin/python benchmarks/isbi2012.py --train              # train from configs/isbi2012.toml first

Validation slices are the ones listed in the model's own config (20-24: the model never trained on them).
A threshold-only baseline (Otsu on the raw slice, dark = membrane) is scored on the same slices for scale.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="isbi2012-membrane", help="shipped model name or run folder")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/isbi2012"), help="folder with train-*.tif")
    ap.add_argument("--train", action="store_true", help="train configs/isbi2012.toml into runs/bench-isbi first")
    ap.add_argument("--tta", action="store_true", help="also score 8-fold test-time augmentation (flips/rotations)")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    args = ap.parse_args()

    import tifffile
    from skimage.filters import threshold_otsu

    from _report import markdown_table, training_minutes
    from biounet.checkpoint import read_history, resolve_model
    from biounet.metrics.em import evaluate_cells, evaluate_membranes
    from biounet.postprocess import cells_from_membrane
    from skimage.measure import label
    from biounet.predict import load_model

    data = Path(args.data)
    model = args.model
    if args.train:
        from biounet.tasks import apply_overrides, load_config
        from biounet.train import train

        cfg = load_config(ROOT / "configs/isbi2012.toml")
        cfg = apply_overrides(cfg, [f"data.images={data / 'train-volume.tif'}", f"data.labels={data / 'train-labels.tif'}"])
        model = str(ROOT / "runs/bench-isbi")
        train(cfg, model, progress=False)
    seg = load_model(model)
    val = list(seg.config.data.val_indices) or [20, 21, 22, 23, 24]
    vol = tifffile.imread(data / "train-volume.tif")
    lab = tifffile.imread(data / "train-labels.tif")
    truth = lab[val] != 0

    t0 = time.perf_counter()
    probs = np.stack([seg.predict(vol[i]) for i in val])
    seconds = time.perf_counter() - t0
    ours = evaluate_membranes(truth, probs < seg.post.threshold)
    sweep = {t: evaluate_membranes(truth, probs < t)["v_rand"] for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
    otsu = evaluate_membranes(truth, np.stack([vol[i] > threshold_otsu(vol[i]) for i in val]))
    epochs, train_min = training_minutes(resolve_model(model))
    hist = read_history(resolve_model(model))

    # Un-thinned: the mask's cells (4-connected) scored as they are, every membrane pixel an unassigned
    # singleton; and the instance output (predict --instances), whose cells cover every pixel.
    unthinned = evaluate_cells(truth, np.stack([label(p < seg.post.threshold, connectivity=1) for p in probs]))
    inst_post = dataclasses.replace(seg.post, mode="instances")
    instances = evaluate_cells(truth, np.stack([cells_from_membrane(p, inst_post) for p in probs]))
    inst_sweep = {t: evaluate_cells(truth, np.stack([cells_from_membrane(p, dataclasses.replace(inst_post, threshold=t))
                                                     for p in probs]))["v_rand"] for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
    rows = {"biounet " + seg.name: ours, "Otsu threshold (baseline)": otsu}
    print(f"ISBI 2012, validation slices {val} (threshold {seg.post.threshold})\n")
    print(markdown_table(["method", "V-Rand", "V-Info", "pixel error", "membrane Dice"],
                         [[n, r["v_rand"], r["v_info"], r["pixel_error"], r["membrane_dice"]] for n, r in rows.items()]))
    print("\nV-Rand by membrane threshold: " + ", ".join(f"{t}: {v:.4f}" for t, v in sweep.items()))
    best_t = max(sweep, key=sweep.get)
    print("\n" + markdown_table(
        ["V-Rand / V-Info of", "thinned (leaderboard)", "un-thinned"],
        [[f"membrane mask, threshold {seg.post.threshold}", f"{ours['v_rand']:.4f} / {ours['v_info']:.4f}",
          f"{unthinned['v_rand']:.4f} / {unthinned['v_info']:.4f}"],
         [f"membrane mask, best threshold ({best_t})", f"{sweep[best_t]:.4f}", ""],
         [f"cell instances (predict --instances), threshold {seg.post.threshold}, min size {inst_post.min_size}",
          "", f"{instances['v_rand']:.4f} / {instances['v_info']:.4f}"]]))
    print("instance V-Rand (un-thinned) by seed threshold: "
          + ", ".join(f"{t}: {v:.4f}" for t, v in inst_sweep.items()))
    tta_rows = {}
    if args.tta:
        seg_tta = seg.with_options(tta=True)
        probs_tta = np.stack([seg_tta.predict(vol[i]) for i in val])
        tta_sweep = {t: evaluate_membranes(truth, probs_tta < t)["v_rand"] for t in sweep}
        tta_inst = evaluate_cells(truth, np.stack([cells_from_membrane(p, inst_post) for p in probs_tta]))
        tta_rows = {"thinned_at_model_threshold": tta_sweep[seg.post.threshold], "thinned_by_threshold": tta_sweep,
                    "instances": tta_inst}
        print(f"with TTA: thinned V-Rand {tta_sweep[seg.post.threshold]:.4f} at threshold {seg.post.threshold}, "
              "by threshold " + ", ".join(f"{t}: {v:.4f}" for t, v in tta_sweep.items())
              + f"; cell instances un-thinned {tta_inst['v_rand']:.4f} / V-Info {tta_inst['v_info']:.4f}")
    noise = {}
    if hist:
        scored = [h["val_v_rand"] for h in hist if "val_v_rand" in h]
        last = [round(v, 3) for v in scored[-15:]]
        print(f"validation V-Rand of the last {len(last)} epochs (history.jsonl): {last}")
        # How far the epoch-picked score sits above what the last epochs score in turn: the picked
        # epoch is the best of a noisy series on 5 slices, so differences smaller than the spread
        # between neighbouring epochs are not a measured gain.
        tail = scored[-10:]
        if len(tail) > 1:
            noise = {"n_epochs": len(tail), "mean": float(np.mean(tail)), "sd": float(np.std(tail, ddof=1)),
                     "best_epoch_v_rand": float(max(scored))}
            print(f"validation V-Rand of the last {len(tail)} epochs: mean {noise['mean']:.4f}, "
                  f"sd {noise['sd']:.4f} (best epoch of the run: {noise['best_epoch_v_rand']:.4f})")
        print(f"fastest epoch: {min(h['seconds'] for h in hist):.1f} s")
    print(f"\ntraining: {epochs} epochs, {train_min:.1f} min (from the run's history.jsonl); "
          f"prediction: {seconds / len(val):.2f} s per 512x512 slice")
    if args.json:
        args.json.write_text(json.dumps({"val_slices": val, "results": rows, "train_minutes": train_min,
                                         "unthinned_mask": unthinned, "instances": instances,
                                         "instances_by_threshold": inst_sweep, "tta": tta_rows,
                                         "last_epochs_v_rand": noise,
                                         "predict_seconds_per_slice": seconds / len(val)}, indent=2))


if __name__ == "__main__":
    main()
