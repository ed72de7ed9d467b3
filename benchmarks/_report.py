"""Shared bits of the accuracy benchmarks: training time from a run's history, markdown tables, modality names."""
from __future__ import annotations

from pathlib import Path


# biounet.data.dataset.modality's names, as the DSB tables print them
MODALITY_NAMES = {"dark": "fluorescence", "bright": "brightfield", "colour": "colour / H&E"}


def training_minutes(model_dir: Path) -> tuple[int, float]:
    """(epochs, minutes of training + validation) recorded in the model's history.jsonl (an ensemble: its members', summed)."""
    from biounet import checkpoint

    epochs, minutes = checkpoint.training_minutes(model_dir)
    members = checkpoint.read_metrics(model_dir).get("members")
    if not epochs and members:
        return sum(m["epochs"] for m in members), sum(m["minutes"] for m in members)
    return (epochs, minutes) if epochs else (0, float("nan"))


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
