"""Validate a training set before hours are spent on it (``biounet check-data``).

Every image/label pair is loaded once, as training would load it. Errors
(unreadable files, size mismatches, duplicate names, label images that are
not integer labels, colour or negative labels, DSB masks that are empty or
not binary) make the check fail; warnings (overlapping DSB masks, images
without any object) are listed. The summary says, per imaging
modality, bit depth and channels, object counts and sizes, and the share of
foreground pixels (class balance).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..io import InputError, list_images
from .dataset import Item, items_from_config, modality


@dataclass
class CheckReport:
    """What :func:`check_items` found; ``ok`` is False when any error was found."""

    n_items: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    by_modality: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


class _Collect(logging.Handler):
    """Turns the data readers' warnings into report lines: errors where the reader marked them so
    (an empty DSB mask: training only warns, the check fails), warnings otherwise (overlaps)."""

    def __init__(self, report: "CheckReport") -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        sink = self.report.errors if getattr(record, "data_error", False) else self.report.warnings
        sink.append(record.getMessage())


def check_data(cfg: DataConfig) -> CheckReport:
    """:func:`check_items` on the data of ``cfg``, images without a mask listed among the errors (every
    one of them, with every other problem, rather than the first alone)."""
    missing: list[str] = []
    items = items_from_config(cfg, missing=missing)
    report = check_items(items)
    report.n_items += len(missing)
    report.errors[:0] = missing
    return report


def check_items(items: list[Item]) -> CheckReport:
    """Load every pair once and collect errors, warnings and per-modality statistics."""
    report = CheckReport(n_items=len(items))
    names = Counter(it.name for it in items)
    report.errors += [f"{name}: {n} images share this name" for name, n in names.items() if n > 1]
    report.warnings += unused_masks(items)
    stats: dict[str, dict] = {}
    handler = _Collect(report)
    logger = logging.getLogger("biounet.data")
    logger.addHandler(handler)
    try:
        for item in items:
            try:
                img, lab = item.load()
            except InputError as exc:
                report.errors.append(str(exc))
                continue
            s = stats.setdefault(modality(img), {"images": 0, "dtypes": Counter(), "channels": Counter(),
                                                 "objects": [], "areas": [], "foreground": []})
            s["images"] += 1
            s["dtypes"][str(img.dtype)] += 1
            s["channels"][1 if img.ndim == 2 else img.shape[2]] += 1
            ids, areas = np.unique(lab[lab != 0], return_counts=True)
            s["objects"].append(len(ids))
            s["areas"].extend(areas.tolist())
            s["foreground"].append(float((lab != 0).mean()))
            if not len(ids):
                report.warnings.append(f"{item.name}: no object in its labels")
    finally:
        logger.removeHandler(handler)
    for kind, s in stats.items():
        areas = np.asarray(s["areas"], float)
        report.by_modality[kind] = {
            "images": s["images"],
            "dtype": ", ".join(f"{k} x{v}" for k, v in s["dtypes"].items()),
            "channels": ", ".join(f"{k} x{v}" for k, v in s["channels"].items()),
            "objects": int(sum(s["objects"])),
            "objects per image (median)": float(np.median(s["objects"])),
            "object area px (5/50/95 %)": "/".join(f"{v:.0f}" for v in np.percentile(areas, (5, 50, 95)))
            if areas.size else "-",
            "foreground share": float(np.mean(s["foreground"])),
        }
    return report


def unused_masks(items: list[Item]) -> list[str]:
    """A warning per mask folder holding masks that no image was paired with (a misnamed image, most often)."""
    used = {Path(it.labels) for it in items if it.kind == "folders"}
    out = []
    for folder in sorted({p.parent for p in used}):
        extra = [p.name for p in list_images(folder) if p not in used]
        if extra:
            out.append(f"{folder}: {len(extra)} mask(s) match no image and are not used: "
                       f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}")
    return out


def format_report(report: CheckReport) -> str:
    lines = [f"{report.n_items} image(s) checked: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"]
    for kind, row in sorted(report.by_modality.items()):
        lines.append(f"  {kind}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in row.items()))
    lines += [f"error: {e}" for e in report.errors] + [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
