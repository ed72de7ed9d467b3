"""Shared bits of the accuracy benchmarks: a run's validation/held-out split, training time from its
history, markdown tables, modality names."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DSB_ZIP = Path(__file__).resolve().parents[2] / "shared/data/dsb2018/stage1_train.zip"


# biounet.data.dataset.modality's names, as the DSB tables print them
MODALITY_NAMES = {"dark": "fluorescence", "bright": "brightfield", "colour": "colour / H&E"}


@dataclass
class Split:
    """A model, its task on the benchmark's data, every image of that data, and the run's two unseen parts."""

    seg: Any  # biounet.predict.Segmenter
    task: Any  # biounet.tasks.Task
    items: list  # biounet.data.dataset.Item, all of them: pick parts with items_named
    validation: list[str]  # image names the run tuned on
    held_out: list[str]  # image names it never saw, scored once


def split_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every held-out benchmark takes (--model, --data, --json); a script adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dsb2018-nuclei", help="shipped model name or run folder")
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    return ap


def held_out_split(model: str, data: str) -> Split:
    """:class:`Split` of a shipped model or run folder on ``data``; exits if the run held no images out."""
    from biounet.checkpoint import resolve_model, unseen_images, validation_names
    from biounet.data.dataset import items_from_config
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides, get_task

    seg = load_model(model)
    task = get_task(apply_overrides(seg.config, [f"data.images={data}"]))
    run = resolve_model(model)
    split, held = unseen_images(run)
    if split != "holdout":
        raise SystemExit(f"{model}: the run recorded no held-out images (train with data.holdout_fraction)")
    return Split(seg, task, items_from_config(task.cfg.data), validation_names(run), held)


def training_minutes(model_dir: Path) -> tuple[int, float]:
    """(epochs, minutes of training + validation) recorded in the model's history.jsonl (an ensemble: its members', summed)."""
    from biounet import checkpoint

    epochs, minutes = checkpoint.training_minutes(model_dir)
    members = checkpoint.read_metrics(model_dir).get("members")
    if not epochs and members:
        return sum(m["epochs"] for m in members), sum(m["minutes"] for m in members)
    return (epochs, minutes) if epochs else (0, float("nan"))


def modality_means(per_image: list[dict], kinds: dict[str, str]) -> dict[str, float]:
    """Mean per-image DSB score of each modality (``kinds``: image name -> modality), sorted by modality."""
    import numpy as np

    by: dict[str, list[float]] = {}
    for r in per_image:
        by.setdefault(kinds[r["name"]], []).append(r["dsb_score"])
    return {k: float(np.mean(v)) for k, v in sorted(by.items())}


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(argv: list[str], config: dict) -> dict:
    """What every result JSON records about how it was made: commit (``+dirty`` when the tree had
    uncommitted changes), the command line, the script's arguments, the date, torch version."""
    import datetime
    import subprocess

    import torch

    root = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"commit": commit, "command": " ".join(["python", *argv]),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
            "date": datetime.date.today().isoformat(), "torch": torch.__version__}
