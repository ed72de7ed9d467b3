"""Evaluate stage: compare prediction files with truth files; needs no model.

Three pairings, chosen from what ``truth`` is:

* a TIFF stack (ISBI 2012 labels, 0 = membrane): ``pred`` is a mask stack
  (uint8, 255 = membrane) or a float membrane-probability stack -> pixel error,
  Dice/IoU and V-Rand/V-Info on cell regions (thinned, as the leaderboard); or a
  cell-label stack (uint16/32, ``predict --instances``) -> V-Rand/V-Info as they are;
* a DSB 2018 folder or zip: ``pred`` is a folder of ``<ImageId>.tif`` instance
  labels -> DSB score, AP@0.5, AP@0.75, counts;
* a folder of label images, or a folder holding ``images/`` and ``masks/`` (scored on
  ``masks/``, whose images the HTML report draws on): paired by file stem with ``pred`` -> as for DSB.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import InputError, atomic_path, image_stem, list_images, read_image, read_stack


def membrane_cells(pred: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Cell (non-membrane) pixels of a predicted mask (255 = membrane) or probability stack."""
    if np.issubdtype(pred.dtype, np.floating):
        return pred < threshold
    return pred == 0


def evaluate_stacks(truth_path: Path, pred_path: Path) -> dict:
    """Membrane masks / probabilities: the leaderboard's thinned scores; cell labels (uint16+): as they are."""
    from .metrics.em import evaluate_cells, evaluate_membranes

    truth, pred = read_stack(truth_path), read_stack(pred_path)
    if truth.shape[:3] != pred.shape[:3]:
        raise InputError(f"{pred_path}: shape {pred.shape[:3]} does not match truth {truth_path} {truth.shape[:3]}")
    if np.issubdtype(pred.dtype, np.integer) and pred.dtype.itemsize > 1:  # predict --instances
        return {"images": int(truth.shape[0]), **evaluate_cells(truth != 0, pred)}
    return {"images": int(truth.shape[0]), **evaluate_membranes(truth != 0, membrane_cells(pred))}


def _pred_path(pred_dir: Path, name: str, skip_missing: bool) -> Path | None:
    """The prediction for truth ``name``: ``name.tif`` (or .tiff/.png), or that of the image a truth file
    like ``a_mask`` is named after (``a.tif``, as ``predict`` names it)."""
    for stem in dict.fromkeys((name, image_stem(name))):
        for suffix in (".tif", ".tiff", ".png"):
            p = pred_dir / f"{stem}{suffix}"
            if p.is_file():
                return p
    if skip_missing:
        return None
    raise InputError(f"{pred_dir}: no prediction for '{name}' (expected {name}.tif; --skip-missing scores the rest)")


def is_dsb(truth: Path) -> bool:
    """Is ``truth`` Kaggle's DSB layout (a zip, or ``<id>/masks`` folders one or two levels down)?"""
    truth = Path(truth)
    return truth.suffix.lower() == ".zip" or (truth.is_dir() and (any(truth.glob("*/masks"))
                                                                 or any(truth.glob("*/*/masks"))))


def truth_folders(truth: Path) -> tuple[Path, Path | None]:
    """(label folder, image folder or None) of a non-DSB truth folder: one holding ``images/`` and
    ``masks/`` (the layout ``train --data`` takes) is scored on its masks."""
    from .data.dataset import image_mask_folders

    pair = image_mask_folders(truth)
    return (pair[1], pair[0]) if pair else (Path(truth), None)


def instance_pairs(
    truth: Path, pred_dir: Path, skip_missing: bool = False, skipped: list[str] | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, truth labels, predicted labels), read lazily one image at a time.

    With ``skip_missing``, truth images without a prediction are left out and
    their names appended to ``skipped`` (when given).
    """
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder not found")
    if is_dsb(truth):
        from .data.dsb import list_dsb_items, load_dsb_labels

        truths = [(item.image_id, lambda item=item: load_dsb_labels(item))
                  for item in list_dsb_items(truth) if item.has_masks]
    else:
        truths = [(p.stem, lambda p=p: read_image(p)) for p in list_images(truth_folders(truth)[0])]
    for name, load in truths:
        pred = _pred_path(pred_dir, name, skip_missing)
        if pred is None:
            if skipped is not None:
                skipped.append(name)
            continue
        yield name, load(), read_image(pred)


def evaluate_paths(truth: Path, pred: Path, skip_missing: bool = False) -> tuple[dict, list[dict]]:
    """Scores for a truth/prediction pair of paths; see the module docstring."""
    truth, pred = Path(truth), Path(pred)
    if not truth.exists():
        raise InputError(f"{truth}: no such file or folder")
    if truth.is_file() and truth.suffix.lower() in (".tif", ".tiff"):
        return evaluate_stacks(truth, pred), []
    from .metrics.instance import evaluate_instances

    skipped: list[str] = []

    def checked():
        for name, t, p in instance_pairs(truth, pred, skip_missing, skipped):
            if t.shape != p.shape:
                raise InputError(f"{pred}/{name}.tif: size {p.shape} != truth size {t.shape}")
            yield name, t, p

    scored: list[str] = []

    def counted():
        for name, t, p in checked():
            scored.append(name)
            yield name, t, p

    try:
        summary, rows = evaluate_instances(counted())
    except InputError:
        raise  # already names its file
    except ValueError as exc:  # no pairs, float or negative labels: the user's files, so name them
        if not scored and skipped:
            raise InputError(f"{pred}: no prediction named after any of the {len(skipped)} truth image(s) in "
                             f"{truth} (e.g. {skipped[0]}.tif)") from None
        raise InputError(f"{pred}: {exc}") from None
    predicted = {p.stem for p in pred.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")
                 and not p.stem.endswith("_overlay")}
    summary["skipped_missing"] = len(skipped)
    summary["unmatched_predictions"] = len(predicted - set(scored) - {image_stem(n) for n in scored})
    return summary, rows


def format_table(summary: dict) -> str:
    width = max(len(k) for k in summary) if summary else 0
    lines = []
    for k, v in summary.items():
        lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


MODALITY_NAMES = {"dark": "fluorescence", "bright": "brightfield", "colour": "colour"}  # data.dataset.modality's
SUMMARY_SCORES = ("dsb_score", "ap50", "ap75")  # averaged over a group's images
SUMMARY_COUNTS = ("n_true", "n_pred", "tp50", "fp50", "fn50")  # summed


def _truth_images(truth: Path):
    """(labels loader, image loader) by truth name; the image loader returns None for a folder of
    label images alone (no images to draw on or to tell the modality of) and, given the labels'
    shape, refuses an image of another size."""
    from .data.dsb import list_dsb_items, load_dsb_image, load_dsb_labels

    truth = Path(truth)
    if is_dsb(truth):
        dsb = {item.image_id: item for item in list_dsb_items(truth)}
        return (lambda name: load_dsb_labels(dsb[name])), (lambda name, shape=None: load_dsb_image(dsb[name]))
    labels_dir, images_dir = truth_folders(truth)
    files = {p.stem: p for p in list_images(labels_dir)}
    images = {p.stem: p for p in list_images(images_dir)} if images_dir is not None else {}

    def image(name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        source = images.get(name) or images.get(image_stem(name))
        if source is None:
            return None
        img = read_image(source)
        if shape is not None and img.shape[:2] != shape[:2]:
            raise InputError(f"{source}: size {img.shape[:2]} != its mask {files[name]} {shape[:2]}")
        return img

    return (lambda name: read_image(files[name])), image


def worst_pictures(truth: Path, pred_dir: Path, rows: list[dict], n: int = 6) -> list[tuple]:
    """(name, image RGB, error picture RGB, DSB score) for the ``n`` lowest-scoring images.

    The error picture (:func:`biounet.report.match_picture`) marks matched objects, misses and
    false positives. DSB truth brings its own images, as does a folder holding ``images/`` and
    ``masks/``; a folder of label images alone has none, so its errors are drawn on black.
    Images under 512 px are drawn enlarged, so the page shows crisp outlines.
    """
    from .overlay import to_display_rgb
    from .report import match_picture

    load_labels, load_image = _truth_images(truth)
    pictures = []
    for row in sorted(rows, key=lambda r: r["dsb_score"])[:n]:
        name = str(row["name"])
        pred = read_image(_pred_path(Path(pred_dir), name, False))
        labels = load_labels(name)
        image = load_image(name, labels.shape)
        if image is None:
            image = np.zeros(labels.shape, np.uint8)
        zoom = max(1, 512 // max(labels.shape[:2]))
        pictures.append((name, to_display_rgb(image), match_picture(image, labels, pred, zoom),
                         float(row["dsb_score"])))
    return pictures


def image_modalities(truth: Path, names: list[str]) -> dict[str, str] | None:
    """Name -> ``fluorescence``, ``brightfield`` or ``colour`` (:func:`biounet.data.dataset.modality`)
    of each truth image; None when the truth has no images (a folder of label images alone)."""
    from .data.dataset import modality

    load_image = _truth_images(truth)[1]
    kinds = {}
    for name in names:
        image = load_image(name)
        if image is None:
            return None
        kinds[name] = MODALITY_NAMES[modality(image)]
    return kinds


def label_rows(rows: list[dict], column: str, values: dict[str, str], missing: str = "(none)") -> list[dict]:
    """Copies of the per-image ``rows`` with ``column`` (placed after the name) set from ``values``
    (by image name, or by the name of the image a mask is named after), ``missing`` where neither is."""
    def value(name: str) -> str:
        return values.get(name, values.get(image_stem(name), missing))

    return [{"name": r["name"], column: value(str(r["name"])), **{k: v for k, v in r.items() if k != "name"}}
            for r in rows]


def summarise_by(rows: list[dict], column: str) -> list[dict]:
    """One row per value of ``column``: its image count, mean scores (each image weighs the same,
    as in the summary) and summed counts; worst DSB score first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[column]), []).append(r)
    out = []
    for value, members in groups.items():
        row: dict = {column: value, "images": len(members)}
        row.update({k: float(np.mean([m[k] for m in members])) for k in SUMMARY_SCORES if k in members[0]})
        row.update({k: int(sum(int(m[k]) for m in members)) for k in SUMMARY_COUNTS if k in members[0]})
        out.append(row)
    return sorted(out, key=lambda r: (r.get("dsb_score", 0.0), r[column]))


def report_breakdowns(truth: Path, rows: list[dict], groups: dict[str, str] | None = None
                      ) -> tuple[list[dict], list[tuple[str, list[dict]]]]:
    """The per-image rows with their ``modality`` (and ``group``, from a groups table) added, and
    the scores summarised by each, for :func:`biounet.report.render_report`. Reads every truth image
    once; truth without images gets no modality."""
    if groups is not None:
        rows = label_rows(rows, "group", groups, missing="(not in the groups file)")
    kinds = image_modalities(truth, [str(r["name"]) for r in rows])
    if kinds is not None:
        rows = label_rows(rows, "modality", kinds)  # first: name, modality, group, scores
    columns = [c for c in ("modality", "group") if rows and c in rows[0]]
    return rows, [(column, summarise_by(rows, column)) for column in columns]
