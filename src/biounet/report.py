"""A report a person reads: one self-contained HTML page (``biounet evaluate --report``).

The score table, the scores by modality (and by group, when given), the
per-image scores sorted worst first, the worst images beside a picture of
their errors (:func:`match_picture`: matched objects, misses and false
positives in three colours of the Okabe-Ito colour-blind-safe palette, with a
key), and a training run's curve when given. Every picture is embedded as a
base64 PNG, so the page is one file that opens anywhere, offline. Pure: arrays
and numbers in, an HTML string out.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np

from .overlay import PALETTE

# What the error pictures draw, each in its own Okabe-Ito colour (distinct with every common
# colour-vision deficiency, and by lightness: yellow light, sky blue middle, vermillion dark).
MATCHED = PALETTE["sky blue"]  # a predicted object matching a true one (IoU > 0.5): its outline
MISSED = PALETTE["vermillion"]  # a true object no prediction matches: outlined and tinted
FALSE_POSITIVE = PALETTE["yellow"]  # a predicted object matching no true one: outlined and tinted
KEY = (("matched", MATCHED, "prediction matching a true object (IoU > 0.5)"),
       ("missed", MISSED, "true object with no matching prediction"),
       ("false positive", FALSE_POSITIVE, "predicted object matching no true object"))

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;
white-space:nowrap}td.text{text-align:left}.scroll{overflow-x:auto}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.pair{display:flex;gap:12px;margin:1em 0}
.pair figure{margin:0;flex:1 1 0;min-width:0}.pair img{width:100%;image-rendering:pixelated}
figcaption{font-size:90%;color:#555;word-break:break-all}img.curve{max-width:100%}
.key{display:flex;flex-wrap:wrap;gap:.4em 1.6em;margin:.6em 0;padding:.5em .8em;background:#f6f6f6;
border:1px solid #ddd}.key span.swatch{display:inline-block;width:1em;height:1em;vertical-align:-.15em;
margin-right:.4em;border:1px solid #555}.tables{display:flex;flex-wrap:wrap;gap:0 2.5em}
h1{font-size:1.4em;word-break:break-all}"""


def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a ``data:image/png;base64,...`` URI."""
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, np.ascontiguousarray(rgb), extension=".png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='text'>{_cell(v)}</td>" if k and isinstance(v, str)
                                    else f"<td>{_cell(v)}</td>" for k, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def match_picture(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, zoom: int = 1) -> np.ndarray:
    """The errors of ``pred`` against ``truth`` drawn on ``image``: (H * zoom, W * zoom, 3) uint8.

    Objects are matched one-to-one at IoU > 0.5 (as ``tp50``/``fp50``/``fn50``). A matched
    prediction is outlined in :data:`MATCHED`; a missed true object is outlined and tinted in
    :data:`MISSED`; a false positive likewise in :data:`FALSE_POSITIVE`. The image is shown in
    dimmed gray, so the three colours are the only ones on the picture, and a key with the three
    counts sits where it hides the fewest objects. ``zoom`` enlarges small images first (nearest
    neighbour), so their outlines and key stay fine when the page shows them large.
    """
    from .metrics.instance import iou_matrix
    from .overlay import BITMAP_FONT_PX, _outlines, legend, outline_width, to_display_rgb

    truth, pred = np.asarray(truth), np.asarray(pred)
    iou = iou_matrix(truth, pred)
    t_ids, p_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    hit = iou > 0.5  # one-to-one by geometry above 0.5
    missed_ids, fp_ids = t_ids[~hit.any(axis=1)], p_ids[~hit.any(axis=0)]
    gray = to_display_rgb(image).astype(np.float32).mean(-1)
    if zoom > 1:
        gray, truth, pred = (np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) for a in (gray, truth, pred))
    out = np.repeat(0.2 * 255 + 0.6 * gray[..., None], 3, axis=-1)  # dimmed: no pixel rivals the outlines
    missed, false_pos = np.isin(truth, missed_ids), np.isin(pred, fp_ids)
    width = outline_width(truth.shape, truth)
    t_edges, p_edges = _outlines(truth, width), _outlines(pred, width)
    for where, colour in ((missed, MISSED), (false_pos, FALSE_POSITIVE)):
        out[where] = 0.65 * out[where] + 0.35 * np.float32(colour)
    out[p_edges & ~false_pos] = MATCHED
    out[t_edges & missed] = MISSED
    out[p_edges & false_pos] = FALSE_POSITIVE
    entries = [(f"{label} {n}", colour) for (label, colour, _), n in
               zip(KEY, (int(hit.any(axis=1).sum()), missed_ids.size, fp_ids.size))]
    key_px = max(BITMAP_FONT_PX, round(max(truth.shape) / 40))  # the page shows the picture ~650 px wide
    return legend(out.astype(np.uint8), entries, occupied=(truth > 0) | (pred > 0), size=key_px)


def html_key() -> str:
    """The colours of :func:`match_picture`, as a line of swatches for the page."""
    items = "".join(f"<span><span class='swatch' style='background:rgb{colour}'></span><b>{label}</b>: "
                    f"{html.escape(meaning)}</span>" for label, colour, meaning in KEY)
    return f"<div class='key'>{items}</div>"


def render_report(
    title: str,
    summary: dict,
    per_image: Sequence[dict] = (),
    worst: Sequence[tuple[str, np.ndarray, np.ndarray, float]] = (),
    curve_png: bytes | None = None,
    breakdowns: Sequence[tuple[str, Sequence[dict]]] = (),
) -> str:
    """The page: ``summary`` table, ``breakdowns``, ``per_image`` rows (worst first by their score), ``worst`` pictures.

    ``breakdowns`` holds (what, rows): scores summarised by e.g. ``modality`` or ``group``, one
    table each (:func:`biounet.evaluate.summarise_by`). ``worst`` holds (name, image RGB, error
    picture RGB (:func:`match_picture`), score); ``curve_png`` is a training run's curve.png,
    embedded as it is.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><div class='tables'>",
             "<section><h2>Scores</h2>", _table(["score", "value"], list(summary.items())), "</section>"]
    for what, rows in breakdowns:
        if rows:
            parts += [f"<section><h2>Scores by {html.escape(what)}</h2>",
                      _table(list(rows[0]), [list(r.values()) for r in rows]), "</section>"]
    parts.append("</div>")
    if per_image:
        key = "dsb_score" if "dsb_score" in per_image[0] else next(k for k, v in per_image[0].items()
                                                                    if isinstance(v, float))
        rows = sorted(per_image, key=lambda r: r[key])
        parts += [f"<h2>Per image, worst first (by {html.escape(key)})</h2>",
                  _table(list(rows[0]), [list(r.values()) for r in rows])]
    if worst:
        parts += ["<h2>Worst images: the image (left) and its errors (right)</h2>", html_key()]
        for name, image_rgb, errors_rgb, score in worst:
            parts.append(
                f"<div class='pair'><figure><img alt='image {html.escape(name)}' src='{png_data_uri(image_rgb)}'>"
                f"<figcaption>{html.escape(name)}: image</figcaption></figure>"
                f"<figure><img alt='errors {html.escape(name)}' src='{png_data_uri(errors_rgb)}'>"
                f"<figcaption>{html.escape(name)}: matched, missed and false positive objects, "
                f"score {score:.3f}</figcaption></figure></div>")
    if curve_png:
        uri = "data:image/png;base64," + base64.b64encode(curve_png).decode("ascii")
        parts += ["<h2>Training</h2>", f"<img class='curve' alt='training curve' src='{uri}'>"]
    parts.append("</body></html>")
    return "\n".join(parts)
