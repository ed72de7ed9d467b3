"""Could StarDist's object probability cut the shipped model's merges? (issue #13) Mixed into its interior map.

    .venv/bin/python benchmarks/tried/star_seeds.py --star runs/q-star [--weights 0,0.25,0.5,0.75] [--json out.json]

``star_rays.py`` trains a network whose object probability (each nucleus' distance to its own outline over its
largest) dips where two nuclei touch. Its peaks found the nuclei (AP@0.5 0.665) where its rays drew them badly.
Here the shipped model keeps everything, outlines included, and only its interior probability, from which
seeds are cut and along which the watershed runs, becomes (1 - w) x interior + w x the star network's
probability. Weight 0 is the shipped model exactly. The weight is chosen on the validation images; the
held-out images are scored once for every weight (only the chosen one is free of selection).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "tried"))


def mix_interior(probs: np.ndarray, star_prob: np.ndarray, weight: float) -> np.ndarray:
    """(K, H, W) class probabilities with the interior (channel 1) moved ``weight`` of the way to ``star_prob``."""
    out = probs.copy()
    out[1] = (1 - weight) * probs[1] + weight * star_prob
    return out


def main() -> None:
    from _report import split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--star", type=Path, required=True, help="a star_rays.py --out folder (star.pt)")
    ap.add_argument("--star-config", default=str(ROOT / "configs/dsb2018-quick.toml"),
                    help="the config star_rays.py trained it with")
    ap.add_argument("--set", action="append", default=[], help="the --set overrides it was trained with")
    ap.add_argument("--weights", default="0,0.25,0.5,0.75")
    args = ap.parse_args()

    import torch

    import star_rays
    from _report import MODALITY_NAMES, held_out_split, modality_means
    from biounet.data.dataset import items_named, modality
    from biounet.models.unet import build_model
    from biounet.normalize import network_input
    from biounet.tasks import apply_overrides, load_config

    sp = held_out_split(args.model, args.data)
    weights = [float(w) for w in args.weights.split(",")]
    cfg = apply_overrides(load_config(args.star_config), [f"data.images={args.data}", *args.set])
    state = torch.load(args.star / "star.pt", weights_only=True)
    net = build_model(replace(cfg.model, out_channels=state["head.weight"].shape[0]))
    net.load_state_dict(state)
    net.eval()

    def scores(names: list[str]) -> tuple[dict[float, list[dict]], dict[str, str]]:
        rows: dict[float, list[dict]] = {w: [] for w in weights}
        kinds = {}
        for item in items_named(sp.items, names):
            raw, lab = item.load()
            kinds[item.name] = MODALITY_NAMES[modality(raw)]
            probs = sp.seg.predict(raw, item.name)
            x = network_input(raw, cfg.data.normalize, cfg.model.in_channels, item.name).transpose(2, 0, 1)
            star_prob = star_rays.predict(net, x)[0]
            for w in weights:
                out = sp.task.segment(mix_interior(probs, star_prob, w), sp.seg.post)
                rows[w].append({"name": item.name, "dsb_score": sp.task.image_score(lab, out)})
        return rows, kinds

    val, _ = scores(sp.validation)
    held, kinds = scores(sp.held_out)
    mean = {part: {w: float(np.mean([r["dsb_score"] for r in rows[w]])) for w in weights}
            for part, rows in (("validation", val), ("holdout", held))}
    best = max(weights, key=mean["validation"].get)
    print(f"weight chosen on validation: {best}")
    print("| weight | validation DSB | held-out DSB | " + " | ".join(sorted(set(kinds.values()))) + " |")
    print("|---|---|---|" + "---|" * len(set(kinds.values())))
    by = {w: modality_means(held[w], kinds) for w in weights}
    for w in weights:
        cells = " | ".join(f"{v:.3f}" for v in by[w].values())
        print(f"| {w} | {mean['validation'][w]:.4f} | {mean['holdout'][w]:.4f} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "star": str(args.star), "chosen": best, **mean,
                                         "holdout_by_modality": {str(w): by[w] for w in weights}}, indent=1))


if __name__ == "__main__":
    main()
